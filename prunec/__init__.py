"""prunec: a declarative compiler that depth-prunes vision-language models.

The pipeline, each stage a public function (heavy imports happen inside the stages):

    parse(text) / load_spec(path) -> Plan          front end (no torch)
    load_model(plan.model) -> LoadedModel          transformers from_pretrained
    score(plan, loaded) -> LayerScores             calibration forward passes
    solve(plan_or_constraints, scores) -> Selection exact layer selection
    emit(plan, loaded, selection) -> targets       HF checkpoint / ONNX graphs, self-checked
    build(path) -> BuildResult                      all of the above + verify + lockfile
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first use so `import prunec` stays light.
_LAZY = {
    "parse": "prunec.syntax",
    "load_spec": "prunec.syntax",
    "load_model": "prunec.arch.loading",
    "score": "prunec.scoring",
    "solve": "prunec.planning",
    "emit": "prunec.pipeline",
    "build": "prunec.pipeline",
    "Plan": "prunec.plan.model",
    "PrunecError": "prunec.errors",
    "SpecError": "prunec.errors",
    "BuildError": "prunec.errors",
    "VerifyError": "prunec.errors",
    "LockError": "prunec.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunec' has no attribute {name!r}")
