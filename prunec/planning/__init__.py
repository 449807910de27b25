"""Planning: choose which decoder layers to remove, from scores, constraints and measurement.

The fixed strategies solve an additive proxy exactly from the scores (`solve`); `auto` measures
candidates on the model (`MeasuredObjective`) and searches locally (`SearchContext`,
`run_search`). `Constraints`, `Selection` and the constraint rules import without numpy (so
`prunec check` stays light); the solver, strategies and the measured search load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from prunec.planning.problem import (
    LOW_MAX,
    MODERATE_MAX,
    SPACING_PROPOSALS,
    Candidate,
    Constraints,
    Regime,
    SearchSummary,
    Selection,
    regime_for,
)

_LAZY = {
    "objective": "prunec.planning.exact",
    "satisfies": "prunec.planning.exact",
    "solve_exact": "prunec.planning.exact",
    "spacing_penalty": "prunec.planning.exact",
    "STRATEGY_REGISTRY": "prunec.planning.strategies",
    "solve": "prunec.planning.strategies",
    "SearchContext": "prunec.planning.search",
    "run_search": "prunec.planning.search",
    "MeasuredObjective": "prunec.planning.measure",
    "Measurement": "prunec.planning.measure",
    "Transform": "prunec.planning.measure",
}

__all__ = [
    "LOW_MAX",
    "MODERATE_MAX",
    "SPACING_PROPOSALS",
    "STRATEGY_REGISTRY",
    "Candidate",
    "Constraints",
    "MeasuredObjective",
    "Measurement",
    "Regime",
    "SearchContext",
    "SearchSummary",
    "Selection",
    "Transform",
    "objective",
    "regime_for",
    "run_search",
    "satisfies",
    "solve",
    "solve_exact",
    "spacing_penalty",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunec.planning' has no attribute {name!r}")
