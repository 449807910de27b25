"""Shared pytest fixtures: tiny real models built once per session (see tests/tiny_models.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per worker: `-n 2` already fills both cores.
    torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import build_tiny


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: `tiny_model("llava", num_layers=6)` -> a saved tiny model dir, built once.

    `tokenizer="bpe"` gives a byte-level BPE tokenizer (what onnxruntime-genai reads).
    """
    cache: dict[tuple[str, int, int, str], Path] = {}

    def make(
        model_type: str, num_layers: int = 6, seed: int = 0, tokenizer: str = "wordlevel"
    ) -> Path:
        key = (model_type, num_layers, seed, tokenizer)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"tiny-{model_type}-{num_layers}")
            cache[key] = build_tiny(
                model_type, out, num_layers=num_layers, seed=seed, tokenizer=tokenizer
            )
        return cache[key]

    return make


#: A testbed trained just enough that removing layers measurably hurts the answers'
#: likelihood (a few seconds of training); shared by the build and search tests.
QUICK_TESTBED = dict(
    steps=40, batch_size=8, num_layers=6, hidden_size=32, calib_samples=8, eval_samples=8
)


@pytest.fixture(scope="session")
def quick_testbed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny trained two-domain VLM testbed (`prunec.testbed`), trained once per session."""
    from prunec.testbed import TrainConfig, ensure_testbed

    root = tmp_path_factory.getbasetemp() / "quick-testbed"
    return ensure_testbed(root, config=TrainConfig(**QUICK_TESTBED))
