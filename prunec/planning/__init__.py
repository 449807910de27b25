"""Planning: choose which decoder layers to remove, from scores, constraints and measurement.

The fixed strategies solve an additive proxy exactly from the scores (`solve`); `auto` measures
candidates on the model (`MeasuredObjective`) and searches locally (`SearchContext`,
`run_search`). Which strategies exist is declared in `prunec.plan.strategies`; the problem
(`Constraints`, regimes, the constraint rules) lives in `prunec.plan.constraints` and is
re-exported here. `Selection` imports without numpy; the solver, strategies and the measured
search load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from prunec.plan.constraints import LOW_MAX, MODERATE_MAX, Constraints, Regime, regime_for
from prunec.planning.problem import SPACING_PROPOSALS, Candidate, SearchSummary, Selection

_LAZY = {
    "objective": "prunec.planning.exact",
    "satisfies": "prunec.planning.exact",
    "solve_exact": "prunec.planning.exact",
    "spacing_penalty": "prunec.planning.exact",
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
