"""Which architectures the ONNX backend exports, and how each one is laid out (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunec.errors import BuildError

#: How the decoder's position ids are shaped. "1d": [batch, seq] (RoPE on token positions).
#: "mrope": [3, batch, seq] temporal/height/width positions (Qwen2-VL family), computed by the
#: runner because they depend on each image's grid.
PositionScheme = Literal["1d", "mrope"]


@dataclass(frozen=True)
class OnnxArch:
    """How one model type is split into graphs.

    vision: True when the model has a vision tower exported as `vision_encoder.onnx`
        (pixel values -> image features projected into the text embedding space).
    image_token_attr: config attribute holding the placeholder token id (VLMs only).
    positions: the position-id scheme the decoder graph takes (see PositionScheme).
    token_type_ids: the decoder also takes `token_type_ids` [batch, seq] (1 = image token):
        Gemma 3 lets the tokens of one image attend to each other bidirectionally.
    pixel_ndim: 4 = [images, 3, H, W]; 5 = [batch, images, 3, H, W] (Idefics3);
        2 = [patches, patch_dim] with an `image_grid_thw` (Qwen2-VL family).
    fixed_grid: export the vision tower with TorchScript tracing at the sample's image grid.
        torch.export cannot trace Qwen2-VL towers (data-dependent splits by grid); tracing
        bakes the grid in, which is exact because the runner resizes every image to it.
    unsupported_image_options: (image-processor attribute, what it does) pairs that must be
        off: they turn one image into several inputs, which the one-image vision graph and
        the runner do not reproduce.
    """

    vision: bool = False
    image_token_attr: str = "image_token_id"
    positions: PositionScheme = "1d"
    token_type_ids: bool = False
    pixel_ndim: int = 4
    fixed_grid: bool = False
    unsupported_image_options: tuple[tuple[str, str], ...] = ()


#: model_type -> layout. A new family is a new entry once its parity tests pass.
ARCHITECTURES: dict[str, OnnxArch] = {
    "llama": OnnxArch(),
    "mistral": OnnxArch(),
    "qwen2": OnnxArch(),
    "qwen3": OnnxArch(),
    "llava": OnnxArch(vision=True, image_token_attr="image_token_id"),
    "idefics3": OnnxArch(
        vision=True,
        image_token_attr="image_token_id",
        pixel_ndim=5,
        unsupported_image_options=(
            ("do_image_splitting", "image splitting: several tiles plus a global image"),
        ),
    ),
    "gemma3": OnnxArch(
        vision=True,
        image_token_attr="image_token_id",
        token_type_ids=True,
        unsupported_image_options=(("do_pan_and_scan", "pan-and-scan: several crops per image"),),
    ),
    "qwen2_vl": OnnxArch(vision=True, positions="mrope", pixel_ndim=2, fixed_grid=True),
    "qwen2_5_vl": OnnxArch(vision=True, positions="mrope", pixel_ndim=2, fixed_grid=True),
    # deepstack: the vision graph's per-layer features go to the decoder as a dense input
    "qwen3_vl": OnnxArch(vision=True, positions="mrope", pixel_ndim=2, fixed_grid=True),
}

#: Known VLM families that are not exported yet, with the reason users see.
NOT_YET: dict[str, str] = {}


def unsupported_reason(model_type: str) -> str | None:
    """Why the ONNX backend cannot export `model_type` (None when it can)."""
    if model_type in ARCHITECTURES:
        return None
    supported = ", ".join(sorted(ARCHITECTURES))
    reason = NOT_YET.get(model_type, "no ONNX layout is defined for it")
    return f"model type `{model_type}` is not supported ({reason}); supported: {supported}"


def check_onnx_supported(model_type: str) -> None:
    """Raise BuildError naming `model_type` when the ONNX backend cannot export it.

    Called before any work is done, so an unsupported architecture fails fast.
    """
    reason = unsupported_reason(model_type)
    if reason is not None:
        raise BuildError(f"target onnx: {reason}")


def arch_for(model_type: str) -> OnnxArch:
    """The layout of a supported `model_type` (raises BuildError otherwise)."""
    check_onnx_supported(model_type)
    return ARCHITECTURES[model_type]
