"""Planning: choose which decoder layers to remove, exactly, from scores and constraints."""

from __future__ import annotations

from prunec.planning.exact import objective, satisfies, solve_exact, spacing_penalty
from prunec.planning.problem import (
    AUTO_SPACING,
    LOW_MAX,
    MODERATE_MAX,
    Constraints,
    Regime,
    Selection,
    regime_for,
)
from prunec.planning.strategies import STRATEGY_REGISTRY, solve

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
