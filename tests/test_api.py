"""The public facade: every pipeline stage is reachable as `prunec.<name>`."""

from __future__ import annotations

import importlib

import prunec


def test_stage_functions_stay_callable_after_their_modules_load() -> None:
    # A submodule named like a facade function would replace it on `import prunec.<name>`.
    for name in ("parse", "load_spec", "load_model", "score", "solve", "emit", "build"):
        module = importlib.import_module(prunec._LAZY[name])
        assert getattr(module, name) is getattr(prunec, name)
        assert callable(getattr(prunec, name)), name


def test_every_exported_name_resolves() -> None:
    for name in prunec.__all__:
        assert getattr(prunec, name) is not None
