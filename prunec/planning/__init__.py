"""Planning: choose which decoder layers to remove, exactly, from scores and constraints.

`Constraints`, `Selection` and the constraint rules import without numpy (so `prunec check`
stays light); the solver and strategies load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from prunec.planning.problem import (
    AUTO_SPACING,
    LOW_MAX,
    MODERATE_MAX,
    Constraints,
    Regime,
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
}

__all__ = [
    "AUTO_SPACING",
    "LOW_MAX",
    "MODERATE_MAX",
    "STRATEGY_REGISTRY",
    "Constraints",
    "Regime",
    "Selection",
    "objective",
    "regime_for",
    "satisfies",
    "solve",
    "solve_exact",
    "spacing_penalty",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'prunec.planning' has no attribute {name!r}")
