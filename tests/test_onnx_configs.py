"""The ONNX vision graph across configurations: image size, patch size, pixel shuffle,
pooling and merge factors other than the tiny models' defaults.

Every VLM family's vision graph is exported for non-default geometries (2-layer towers,
hidden 32) and run in onnxruntime against PyTorch on the model's own processor output.
The end-to-end checks (decoder parity, greedy, `prunec run` on an image) run on one more
non-default geometry per family in tests/test_onnx.py (VLM_GEOMETRY). A broader matrix
runs with `-m slow`. Configurations that cannot be exported fail the build, before any
export, saying what is unsupported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from tiny_models import TinySpec, build_tiny, load_processor, sample_inputs
from tiny_models import vision_variant as variant_spec

from prunec.backends.onnx import OnnxOptions, emit_onnx
from prunec.backends.onnx.arch import arch_for
from prunec.backends.onnx.emit import export_vision
from prunec.backends.onnx.parity import to_sample, vision_reference
from prunec.errors import BuildError
from prunec.runtime.session import make_session, run_graph

Knobs = dict[str, Any]

#: (model type, knobs, image tokens per image) exported as vision graphs in the default run.
#: With tests/test_onnx.py's VLM_GEOMETRY (end to end, vision graph included) every family
#: is checked at two or more non-default geometries by default.
VISION_CASES: list[tuple[str, Knobs, int]] = [
    ("llava", dict(image_size=42, patch_size=14, vision_feature_layer=[-2, -1]), 10),
    ("idefics3", dict(image_size=48, patch_size=8, scale_factor=3), 4),
    ("idefics3", dict(image_size=64, patch_size=8, scale_factor=2, processor_image_size=48), 9),
    ("gemma3", dict(image_size=56, patch_size=8, mm_tokens_per_image=49), 49),
    ("qwen2_vl", dict(image_size=(36, 54), patch_size=6, spatial_merge_size=3), 6),
    ("qwen2_5_vl", dict(image_size=(48, 64), window_size=32), 12),
    (
        "qwen3_vl",
        dict(image_size=(36, 54), patch_size=6, spatial_merge_size=3, num_position_embeddings=64),
        6,
    ),
]

#: More geometries, with `-m slow`: the tiny defaults, odd patch counts per side (3, 7, 9),
#: factor 1, a factor equal to the whole side, merge 1 / temporal 1, tall and wide grids.
SLOW_VISION_CASES: list[tuple[str, Knobs, int]] = [
    ("llava", {}, 17),
    ("idefics3", {}, 4),
    ("gemma3", {}, 4),
    ("qwen2_vl", {}, 4),
    ("qwen2_5_vl", {}, 4),
    ("qwen3_vl", {}, 4),
    ("llava", dict(image_size=36, patch_size=6), 37),
    ("llava", dict(image_size=56, patch_size=8, vision_feature_select_strategy="default"), 49),
    ("llava", dict(image_size=30, patch_size=10, vision_feature_layer=-2), 10),
    ("idefics3", dict(image_size=56, patch_size=8, scale_factor=1), 49),
    ("idefics3", dict(image_size=42, patch_size=6, scale_factor=7), 1),
    ("idefics3", dict(image_size=72, patch_size=8, scale_factor=3), 9),
    ("idefics3", dict(image_size=96, patch_size=16, scale_factor=3, processor_image_size=48), 1),
    ("gemma3", dict(image_size=48, patch_size=8, mm_tokens_per_image=4), 4),
    ("gemma3", dict(image_size=42, patch_size=14, mm_tokens_per_image=1), 1),
    ("gemma3", dict(image_size=72, patch_size=8, mm_tokens_per_image=81), 81),
    (
        "qwen2_vl",
        dict(image_size=(32, 32), spatial_merge_size=1, temporal_patch_size=1),
        16,
    ),
    ("qwen2_vl", dict(image_size=(64, 16)), 4),
    ("qwen2_5_vl", dict(image_size=(16, 80), window_size=16), 5),
    ("qwen2_5_vl", dict(image_size=(64, 64), window_size=64), 16),
    ("qwen3_vl", dict(image_size=(48, 32), num_position_embeddings=16), 6),
    (
        "qwen3_vl",
        dict(image_size=(32, 32), spatial_merge_size=1, num_position_embeddings=100),
        16,
    ),
]


def _case_id(model_type: str, knobs: Knobs) -> str:
    short = {"image_size": "img", "patch_size": "p", "processor_image_size": "proc"}
    parts = [f"{short.get(k, k)}={v}" for k, v in knobs.items()]
    return f"{model_type}[{','.join(parts)}]".replace(" ", "")


def _cases(cases: list[tuple[Any, ...]], marks: Any = ()) -> list[Any]:
    return [pytest.param(*case, id=_case_id(case[0], case[1]), marks=marks) for case in cases]


@dataclass(frozen=True)
class Variant:
    model_type: str
    spec: TinySpec
    directory: Path
    model: Any
    processor: Any

    def sample(self) -> dict[str, Any]:
        return sample_inputs(self.model_type, self.processor, spec=self.spec)


@pytest.fixture(scope="session")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Variant]:
    """Factory: a tiny model of `model_type` with the vision geometry `knobs`, built once."""
    import transformers

    cache: dict[str, Variant] = {}

    def make(model_type: str, knobs: Knobs, num_layers: int = 2) -> Variant:
        key = f"{_case_id(model_type, knobs)}-{num_layers}"
        if key not in cache:
            spec = variant_spec(model_type, **knobs)
            out = tmp_path_factory.mktemp(f"variant-{model_type}")
            build_tiny(model_type, out, num_layers=num_layers, spec=spec)
            model = getattr(transformers, spec.model_class).from_pretrained(out).eval()
            cache[key] = Variant(model_type, spec, out, model, load_processor(model_type, out))
        return cache[key]

    return make


# --- vision graphs -----------------------------------------------------------------------


def _check_vision(variant: Variant, out: Path, tokens: int) -> None:
    sample = to_sample(variant.sample())
    assert sample.pixel_values is not None
    expected = vision_reference(variant.model, sample)
    # the processor expanded the prompt for exactly the tokens the tower gives
    image_id = int(variant.model.config.image_token_id)
    assert int((sample.input_ids == image_id).sum()) == expected[0].shape[1] == tokens
    assert float(expected[0].std()) > 0.1  # features that a wrong graph cannot match by luck
    path = out / "vision_encoder.onnx"
    export_vision(variant.model, arch_for(variant.model_type), sample, path, opset=18)
    onnx.checker.check_model(str(path))
    pixels = sample.pixel_values if sample.pixel_values.ndim == 2 else sample.pixel_values[:1]
    got = run_graph(make_session(path, threads=1), path, {"pixel_values": pixels})
    assert [g.shape for g in got] == [e.shape for e in expected]
    for ours, theirs in zip(got, expected, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(1.0, np.abs(theirs).max()))


@pytest.mark.parametrize(("model_type", "knobs", "tokens"), _cases(VISION_CASES))
def test_vision_graph_matches_pytorch(
    variant: Callable[..., Variant], tmp_path: Path, model_type: str, knobs: Knobs, tokens: int
) -> None:
    _check_vision(variant(model_type, knobs), tmp_path, tokens)


@pytest.mark.parametrize(
    ("model_type", "knobs", "tokens"), _cases(SLOW_VISION_CASES, pytest.mark.slow)
)
def test_vision_graph_matches_pytorch_more(
    variant: Callable[..., Variant], tmp_path: Path, model_type: str, knobs: Knobs, tokens: int
) -> None:
    _check_vision(variant(model_type, knobs), tmp_path, tokens)


# --- the exporter fix behind the reported Idefics3 failure ------------------------------


class _Buckets(torch.nn.Module):
    """Idefics3's position buckets, `bucketize(x, arange(1/n, 1, 1/n))`, for several n."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(
            torch.bucketize(x, torch.arange(1 / n, 1.0, 1 / n), right=True) for n in (3, 6, 7, 12)
        )


class _Steps(torch.nn.Module):
    """A float arange whose end is symbolic (the input's length)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(0.5, x.shape[0], 0.1)


def test_float_arange_exports_with_torch_length_and_values(tmp_path: Path) -> None:
    """torch sizes float aranges in float64; the stock translation in float32 gave n = 3,
    6, 7 one element less (the GatherND failure) and drifting values for symbolic ends."""
    from torch.export import Dim

    from prunec.backends.onnx.export import _export

    x = torch.linspace(0.0, 1.0 - 1e-6, 50)
    path = tmp_path / "buckets.onnx"
    _export(_Buckets(), (x,), None, ["x"], ["n3", "n6", "n7", "n12"], path, 18)
    got = run_graph(make_session(path, threads=1), path, {"x": x.numpy()})
    for ours, theirs in zip(got, _Buckets()(x), strict=True):
        np.testing.assert_array_equal(ours, theirs.numpy())
    path = tmp_path / "steps.onnx"
    _export(_Steps(), (torch.zeros(5),), {"x": {0: Dim("n", min=2)}}, ["x"], ["y"], path, 18)
    session = make_session(path, threads=1)
    for n in (3, 12, 30):
        (ours,) = run_graph(session, path, {"x": np.zeros(n, np.float32)})
        np.testing.assert_allclose(ours, _Steps()(torch.zeros(n)).numpy(), rtol=0, atol=1e-5)


# --- what cannot be exported fails the build, with what is wrong -------------------------


def _in_memory(model_type: str, spec: TinySpec) -> Any:
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, spec.model_class)(spec.config(1)).eval()


@pytest.mark.parametrize(
    ("model_type", "knobs", "message"),
    [
        pytest.param(
            "idefics3",
            dict(image_size=48, patch_size=8, scale_factor=4),
            r"idefics3: a 48x48 image gives 6x6 patches .* \(scale_factor 4\) cannot split",
            id="idefics3-shuffle",
        ),
        pytest.param(
            "gemma3",
            dict(image_size=32, patch_size=8, mm_tokens_per_image=9),
            r"gemma3: mm_tokens_per_image 9 does not pool from 4x4 patches",
            id="gemma3-pool",
        ),
    ],
)
def test_geometry_the_model_cannot_divide_fails_before_export(
    tmp_path: Path, model_type: str, knobs: Knobs, message: str
) -> None:
    model = _in_memory(model_type, variant_spec(model_type, **knobs))
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=message):
        emit_onnx(model, None, out, target=OnnxOptions())
    assert not (out / "embed_tokens.onnx").exists()


@pytest.mark.parametrize(
    ("model_type", "option"),
    [("idefics3", "do_image_splitting"), ("gemma3", "do_pan_and_scan")],
)
def test_processor_options_the_runner_cannot_follow_fail_before_any_work(
    tiny_model: Callable[..., Path], tmp_path: Path, model_type: str, option: str
) -> None:
    path = tiny_model(model_type, num_layers=1)
    processor = load_processor(model_type, path)
    setattr(processor.image_processor, option, True)
    model = _in_memory(model_type, variant_spec(model_type))
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=rf"image processor has `{option}` on"):
        emit_onnx(model, processor, out, target=OnnxOptions())
    assert not out.exists()
