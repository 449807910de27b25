"""Compute dtype vs storage dtype: the resolution rule, and a bf16 checkpoint computing in
float32 just in time gives a float32 copy's results while its weights stay bf16."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import VLM_TYPES, load_processor, sample_inputs, to_bfloat16

import prunec.arch.precision as precision
from prunec.arch.loading import load_model
from prunec.arch.precision import compute_dtype, materialize, resolve_dtypes
from prunec.plan.model import ModelSpec
from prunec.scoring.engine import model_inputs


@pytest.fixture(scope="session")
def tiny_bf16(tiny_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory):
    """Factory: a tiny model's checkpoint stored in bfloat16, built once per type."""
    cache: dict[str, Path] = {}

    def make(model_type: str) -> Path:
        if model_type not in cache:
            out = tmp_path_factory.mktemp(f"bf16-{model_type}")
            cache[model_type] = to_bfloat16(tiny_model(model_type), out)
        return cache[model_type]

    return make


@pytest.mark.parametrize(
    ("spec", "storage", "flags", "expected"),
    [
        ("auto", "bfloat16", set(), ("bfloat16", "float32")),  # no bf16 units: float32 math
        ("auto", "bfloat16", {"avx512_bf16"}, ("bfloat16", "bfloat16")),
        ("auto", "bfloat16", {"amx_bf16"}, ("bfloat16", "bfloat16")),
        ("auto", "float16", {"avx512_bf16"}, ("float16", "float32")),  # bf16 units only
        ("auto", "float32", set(), ("float32", "float32")),
        ("float32", "bfloat16", {"amx_bf16"}, ("bfloat16", "float32")),  # held, upcast
        ("bfloat16", "float32", set(), ("bfloat16", "bfloat16")),  # narrower: cast at load
        ("float16", "bfloat16", set(), ("float16", "float16")),
    ],
)
def test_dtype_resolution_rule(
    monkeypatch: pytest.MonkeyPatch,
    spec: str,
    storage: str,
    flags: set[str],
    expected: tuple[str, str],
) -> None:
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    assert resolve_dtypes(spec, storage, "cpu") == expected


def test_half_precision_counts_as_fast_on_gpus() -> None:
    assert resolve_dtypes("auto", "float16", "cuda:0") == ("float16", "float16")
    assert resolve_dtypes("auto", "bfloat16", "mps") == ("bfloat16", "bfloat16")


def _big_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """The decoder layers' parameters that are not small (the upcast keeps them in bf16)."""
    layers: Any = model.get_decoder().layers
    return [p for p in layers.parameters() if p.numel() > precision.SMALL_ELEMENTS]


@pytest.mark.parametrize(
    ("model_type", "block"),
    # Tiny models have no large tensors: lower thresholds make every path run. 2048 elements:
    # row lookups for embeddings, row blocks for the vocabulary projection, one module at a
    # time. 20000: decoder layers are converted module by module, as in real models, and the
    # vision towers' small blocks as units.
    [
        ("llama", 2048),
        ("gemma3_text", 2048),
        ("qwen2_vl", 20000),
        ("idefics3", 20000),
        ("paligemma", 20000),
    ],
)
def test_bf16_checkpoint_computes_like_a_float32_copy(
    tiny_bf16: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, model_type: str, block: int
) -> None:
    monkeypatch.setattr(precision, "SMALL_ELEMENTS", 64)
    monkeypatch.setattr(precision, "BLOCK_ELEMENTS", block)
    source = tiny_bf16(model_type)
    for spec_dtype in ("auto", "float32"):  # this CPU-only test machine: auto = float32 math
        monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset())
        held = load_model(ModelSpec(source=str(source), local=True, dtype=spec_dtype))
        assert (held.storage_dtype, held.compute_dtype) == ("bfloat16", "float32")
        assert compute_dtype(held.model) == torch.float32
        big = _big_parameters(held.model)
        assert big and all(p.dtype == torch.bfloat16 for p in big)  # held in the checkpoint's

    copy = load_model(ModelSpec(source=str(source), local=True, dtype="bfloat16")).model.float()
    processor = load_processor(model_type, source)
    for with_image in (True, False) if model_type in VLM_TYPES else (False,):
        inputs = sample_inputs(model_type, processor, with_image=with_image)
        with torch.no_grad():
            got = held.model(**model_inputs(held.model, inputs)).logits
            want = copy(**inputs).logits
        assert got.dtype == torch.float32
        assert torch.equal(got, want)  # every conversion widens: exactly a float32 copy
        generated = held.model.generate(
            **model_inputs(held.model, inputs), max_new_tokens=3, do_sample=False
        )
        assert torch.equal(generated, copy.generate(**inputs, max_new_tokens=3, do_sample=False))
    assert all(p.dtype == torch.bfloat16 for p in _big_parameters(held.model))

    materialize(held.model)  # exporters get a plain float32 model
    assert all(p.dtype == torch.float32 for p in held.model.parameters())
    assert "forward" not in vars(held.model.get_decoder().layers[0].mlp.down_proj)
