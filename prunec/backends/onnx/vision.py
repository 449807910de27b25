"""The image side of an ONNX artifact: what the vision graph is exported for, and its checks.

The vision graph takes one image at one fixed shape: the shape the model's own image
processor produces (or, for the Qwen-VL family, one fixed patch grid). Everything that
depends on the configuration (image size, patch size, pixel-shuffle / pooling / merge
factor) is therefore whatever the processor and the model config say, and three checks
keep the artifact honest:

- `check_image_processor`: processor options whose output the one-image graph and the
  runner cannot reproduce (Idefics3 image splitting, Gemma 3 pan-and-scan) fail the build
  before any work.
- `check_geometry`: an image the model's own shapes cannot divide (a patch grid that pixel
  shuffle or average pooling cannot split) fails with what is wrong, not an exporter trace.
- `runner_preprocess_diff`: the runner's numpy/Pillow preprocessing is compared with the
  processor on a non-square image, so a processor setting the runner does not follow
  fails the build instead of giving a silently different artifact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prunec.backends.onnx.arch import OnnxArch
from prunec.backends.onnx.parity import Sample
from prunec.errors import BuildError
from prunec.runtime.manifest import Manifest

#: Bound on |runner - processor| in normalised pixel units, on a smooth image: what separates
#: resampling noise between backends (Pillow vs torchvision, ~1e-2) from a preprocessing
#: mistake (a crop instead of a resize, padding, a wrong size or normalisation: ~1).
PREPROCESS_TOLERANCE = 0.05


def check_image_processor(arch: OnnxArch, processor: Any | None, model_type: str) -> None:
    """Raise BuildError when the image processor is set up in a way the artifact cannot follow."""
    image_processor = getattr(processor, "image_processor", None)
    for option, what in arch.unsupported_image_options:
        if getattr(image_processor, option, False):
            raise BuildError(
                f"target onnx cannot export this {model_type} model: its image processor has "
                f"`{option}` on ({what}); the ONNX vision graph takes one image per call. "
                f"Set `{option}` to false in the processor config to export it"
            )


def image_size(model: nn.Module, samples: Sequence[Sample]) -> tuple[int, int]:
    """(height, width) of the first sample image (Qwen-VL: its grid in pixels).

    Without one, the vision config's image_size.
    """
    for sample in samples:
        if "image_grid_thw" in sample.extra:  # flattened patches: the grid gives the size
            _, h, w = (int(v) for v in sample.extra["image_grid_thw"][0])
            patch = int(model.config.vision_config.patch_size)  # type: ignore[union-attr,arg-type]
            return h * patch, w * patch
        if sample.pixel_values is not None:
            return int(sample.pixel_values.shape[-2]), int(sample.pixel_values.shape[-1])
    size = model.config.vision_config.image_size  # type: ignore[union-attr]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))  # type: ignore[index]


def check_geometry(model: nn.Module, sample: Sample) -> None:
    """Raise BuildError when the model's shapes cannot divide this sample's image."""
    config: Any = model.config
    vision = config.vision_config
    height, width = image_size(model, [sample])
    kind = config.model_type
    if kind == "idefics3":
        patch, scale = int(vision.patch_size), int(config.scale_factor)
        rows, cols = height // patch, width // patch
        if rows != cols or rows % scale:
            raise BuildError(
                f"idefics3: a {height}x{width} image gives {rows}x{cols} patches of {patch} "
                f"pixels, which pixel shuffle (scale_factor {scale}) cannot split: it needs a "
                f"square grid whose side is a multiple of {scale}"
            )
    elif kind == "gemma3":
        per_side = int(vision.image_size) // int(vision.patch_size)
        tokens = int(config.mm_tokens_per_image)
        side = math.isqrt(tokens)
        if side * side != tokens or per_side % side:
            raise BuildError(
                f"gemma3: mm_tokens_per_image {tokens} does not pool from {per_side}x{per_side} "
                f"patches (it must be a square whose side divides {per_side})"
            )
    elif "image_grid_thw" in sample.extra:
        merge = int(vision.spatial_merge_size)
        grid = [int(v) for v in sample.extra["image_grid_thw"][0][1:]]
        if grid[0] % merge or grid[1] % merge:
            raise BuildError(
                f"{kind}: an image grid of {grid[0]}x{grid[1]} patches cannot be merged by "
                f"spatial_merge_size {merge}"
            )


def _smooth_image(height: int, width: int) -> Any:
    """A deterministic RGB image without sharp edges (resampling backends agree on it)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        255 * x / max(width - 1, 1),
        255 * y / max(height - 1, 1),
        127.5 + 120 * np.sin(x / 7.0) * np.cos(y / 5.0),
    ]
    pixels = np.stack(channels, axis=-1).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def processor_pixels(
    processor: Any | None, size: tuple[int, int]
) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The image processor's pixel values (and grid) for one image of `size` (height, width).

    None without an image processor. Used for the synthetic parity sample, so the graph is
    exported at the shape the processor really produces.
    """
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    out = image_processor(images=_smooth_image(*size), return_tensors="np")
    pixels = np.asarray(out["pixel_values"], dtype=np.float32)
    extra = {}
    if "image_grid_thw" in out:
        extra["image_grid_thw"] = np.asarray(out["image_grid_thw"], dtype=np.int64)
    return pixels, extra


def matches_export(sample: Sample, manifest: Manifest) -> bool:
    """Whether the vision graph can take this sample's images as they are."""
    if sample.pixel_values is None:
        return True
    if "image_grid_thw" in sample.extra:
        grid = manifest.extra.get("image_grid_thw")
        return all([int(v) for v in row] == grid for row in sample.extra["image_grid_thw"])
    expected = manifest.pixel_values_shape
    return expected is not None and sample.pixel_values.shape[1:] == tuple(expected[1:])


def runner_preprocess_diff(processor: Any | None, out_dir: Path, manifest: Manifest) -> float:
    """Max |runner - processor| pixel value on one smooth image; 0.0 without an image processor.

    The image is non-square and not the exported size, so resizing, cropping, padding and
    normalisation are all exercised. Qwen-VL artifacts take one fixed grid, so they are
    checked on an image of the exported size (other sizes are resized to it by design).
    """
    from prunec.runtime.image import load_image_config, preprocess_for

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or manifest.image_size is None:
        return 0.0
    height, width = manifest.image_size
    fixed_grid = manifest.pixel_values_shape is not None and len(manifest.pixel_values_shape) == 2
    size = (height, width) if fixed_grid else (height + 13, width * 3 // 2 + 5)
    pixels = processor_pixels(processor, size)
    assert pixels is not None
    expected = pixels[0]
    try:
        got = preprocess_for(manifest, _smooth_image(*size), load_image_config(out_dir))
    except ValueError as err:
        raise BuildError(f"the ONNX runner cannot preprocess images for this model: {err}") from err
    if expected.size != got.size:
        raise BuildError(
            f"the ONNX runner's image preprocessing gives pixel values of shape {got.shape}, "
            f"the {type(image_processor).__name__} gives {expected.shape}; "
            "nothing was published"
        )
    diff = float(np.abs(expected.reshape(got.shape) - got).max())
    if diff > PREPROCESS_TOLERANCE:
        raise BuildError(
            f"the ONNX runner's image preprocessing differs from the "
            f"{type(image_processor).__name__} by {diff:.3g} "
            f"(tolerance {PREPROCESS_TOLERANCE}); nothing was published"
        )
    return diff
