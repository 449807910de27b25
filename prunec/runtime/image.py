"""Image preprocessing in numpy + Pillow, driven by the saved image-processor config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def load_image_config(directory: Path) -> dict[str, Any]:
    """The image processor's settings: preprocessor_config.json, or nested in processor_config."""
    direct = Path(directory) / "preprocessor_config.json"
    if direct.is_file():
        return json.loads(direct.read_text())  # type: ignore[no-any-return]
    nested = Path(directory) / "processor_config.json"
    if nested.is_file():
        data = json.loads(nested.read_text()).get("image_processor")
        if isinstance(data, dict):
            return data
    raise ValueError(f"no image processor config in {directory}")


def _resize_size(size: dict[str, int], width: int, height: int) -> tuple[int, int]:
    """Target (width, height): fixed, longest edge or shortest edge, keeping the aspect ratio.

    `longest_edge` follows the Idefics3 image processor (the only covered one using it): the
    short side is truncated, then rounded up to an even number.
    """
    if "height" in size and "width" in size:
        return size["width"], size["height"]
    if "longest_edge" in size:
        longest = size["longest_edge"]
        if width >= height:
            short = int(longest / (width / height))
            return longest, max(1, short + short % 2)
        short = int(longest * (width / height))
        return max(1, short + short % 2), longest
    short = size["shortest_edge"]
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def _center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    top = max((image.shape[0] - height) // 2, 0)
    left = max((image.shape[1] - width) // 2, 0)
    return image[top : top + height, left : left + width]


def preprocess(
    image: Image.Image, config: dict[str, Any], pad_to: tuple[int, int] | None = None
) -> np.ndarray:
    """pixel_values [1, 3, H, W] float32, as the CLIP/SigLIP-style processors compute them.

    pad_to: (height, width) to zero-pad to at the bottom and right after normalising
    (Idefics3-style processors pad to their maximum size).
    """
    if config.get("do_convert_rgb", True):
        image = image.convert("RGB")
    if config.get("do_image_splitting"):
        raise ValueError("image splitting (do_image_splitting) is not supported by the runner")
    if config.get("do_resize", True):
        target = _resize_size(config["size"], image.width, image.height)
        resample = Image.Resampling(config.get("resample", Image.Resampling.BICUBIC))
        image = image.resize(target, resample=resample)
        if "max_image_size" in config:
            # Idefics3 without image splitting: the resized image is then squared to the
            # vision encoder's size (a second resize, as the processor does)
            side = int(config["max_image_size"]["longest_edge"])
            image = image.resize((side, side), resample=resample)
    array = np.asarray(image, dtype=np.float32)
    if config.get("do_center_crop", False):
        crop = config["crop_size"]
        array = _center_crop(array, crop["height"], crop["width"])
    if config.get("do_rescale", True):
        array = array * np.float32(config.get("rescale_factor", 1 / 255))
    if config.get("do_normalize", True):
        mean = np.asarray(config["image_mean"], np.float32)
        std = np.asarray(config["image_std"], np.float32)
        array = (array - mean) / std
    if pad_to is not None and array.shape[:2] != tuple(pad_to):
        padded = np.zeros((pad_to[0], pad_to[1], 3), np.float32)
        padded[: array.shape[0], : array.shape[1]] = array[: pad_to[0], : pad_to[1]]
        array = padded
    return np.ascontiguousarray(array.transpose(2, 0, 1)[None], dtype=np.float32)


def patchify(chw: np.ndarray, patch: int, temporal: int, merge: int) -> np.ndarray:
    """Qwen2-VL's flattened patches [grid_h * grid_w, 3 * temporal * patch * patch].

    A still image is repeated `temporal` times; patches are ordered merge-window by
    merge-window, as the Qwen2-VL image processor orders them.
    """
    channels, height, width = chw.shape
    frames = np.repeat(chw[None], temporal, axis=0)
    gh, gw = height // patch, width // patch
    x = frames.reshape(1, temporal, channels, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gh * gw, channels * temporal * patch * patch))


def preprocess_for(manifest: Any, image: Image.Image, config: dict[str, Any]) -> np.ndarray:
    """The vision graph's pixel input for one image of an artifact (see its manifest)."""
    shape = manifest.pixel_values_shape
    if shape is not None and len(shape) == 2:
        # fixed-grid towers: resize straight to the exported grid, then cut patches
        height, width = manifest.image_size
        fixed = {**config, "size": {"height": height, "width": width}, "do_center_crop": False}
        extra = manifest.extra
        return patchify(
            preprocess(image, fixed)[0],
            int(extra["patch_size"]),
            int(extra["temporal_patch_size"]),
            int(extra["merge_size"]),
        )
    return preprocess(image, config, manifest.image_size)
