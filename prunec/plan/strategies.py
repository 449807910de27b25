"""Layer-selection strategies as declarations: what each one is called, what it needs, which
`prune` settings only it reads, and where its implementation lives.

This module is the one place strategies are registered (`STRATEGIES`, read by
`prunec.plan.registry.strategies()`, which adds `prunec.strategies` entry points from other
distributions). The front end validates a spec against these declarations; the planner
(`prunec.planning.strategies.solve`) dispatches on them. Implementations live in
`prunec.planning` and load on first use (`StrategyInfo.load`), so reading the declarations
imports neither numpy nor torch and `prunec check` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from prunec.plan.model import DEFAULT_SEARCH

if TYPE_CHECKING:
    from prunec.plan.constraints import Constraints


class StrategyOptions(BaseModel):
    """Base of every strategy's options: the `prune` settings only that strategy reads.

    Each field's `description` completes "`NAME` sets ..." and its `without` extra completes
    "strategy `X` ..." in the error for a spec that writes the setting with a strategy whose
    options lack it (E232). Settings every strategy shares (budget, spacing, keep, protect,
    tokens, spacing_weight, batch_size) are not options.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


class SearchOptions(StrategyOptions):
    """`auto`'s compute budget."""

    search: int = Field(
        DEFAULT_SEARCH,
        ge=1,
        description="how many candidates `auto` measures",
        json_schema_extra={"without": "measures none"},
    )


@dataclass(frozen=True)
class StrategyInfo:
    """One strategy's declaration.

    name: the word after `strategy` in a spec.
    summary: one line for listings and error hints.
    select: "module:function" of the implementation, called as `function(constraints,
        scores)` (scores None when none exist) and returning a `Selection`.
    scores: it ranks layers with calibration statistics, so the spec needs a `domain` and
        the planner needs scores (E225 otherwise).
    measured: it measures candidate sets on the model, so `solve` needs a `SearchContext`
        (`prunec.planning.search`); without one `select` explains how to get one (E342).
    baseline: a published fixed method: `auto` proposes its answer, measures it on the
        held-out part, and never picks a set that loses to it there; sweeps compare against it.
    explicit: it takes the spec's `remove` list instead of choosing (`manual`).
    ablation: scoring must also compute an ablation order for it (a forward pass per layer
        per step: sweeps include it only when asked).
    Options: the `prune` settings only this strategy reads (`StrategyOptions`).
    """

    name: str
    summary: str
    select: str
    scores: bool = False
    measured: bool = False
    baseline: bool = False
    explicit: bool = False
    ablation: bool = False
    Options: type[StrategyOptions] = StrategyOptions

    def load(self) -> Callable[[Constraints, Any], Any]:
        """The implementation `select` names (imported now, on first use)."""
        module, _, attribute = self.select.partition(":")
        function: Callable[[Constraints, Any], Any] = getattr(
            importlib.import_module(module), attribute
        )
        return function


_IMPL = "prunec.planning.strategies"

#: Every built-in strategy, in the order the docs and error messages list them.
STRATEGIES: tuple[StrategyInfo, ...] = (
    StrategyInfo(
        "auto",
        "measured search: every ranking's set and local moves, measured on the model, "
        "picked on held-out calibration data",
        f"{_IMPL}:auto_strategy",
        scores=True,
        measured=True,
        Options=SearchOptions,
    ),
    StrategyInfo(
        "domain",
        "domain-weighted activation similarity (sum over domains of weight x (1 - cos))",
        f"{_IMPL}:domain_strategy",
        scores=True,
        baseline=True,
    ),
    StrategyInfo(
        "bi",
        "ShortGPT Block Influence: 1 - cos with all calibration tokens pooled",
        f"{_IMPL}:block_influence_strategy",
        scores=True,
        baseline=True,
    ),
    StrategyInfo(
        "angular",
        "Gromov et al.: the contiguous block with the smallest angular distance across it",
        f"{_IMPL}:angular_strategy",
        scores=True,
        baseline=True,
    ),
    StrategyInfo(
        "last",
        "the deepest removable layers",
        f"{_IMPL}:last_strategy",
        baseline=True,
    ),
    StrategyInfo(
        "uniform",
        "evenly spaced removals over the removable layers",
        f"{_IMPL}:uniform_strategy",
        baseline=True,
    ),
    StrategyInfo(
        "iterative",
        "SLEB-style: layers in the order greedy ablation removed them",
        f"{_IMPL}:iterative_strategy",
        scores=True,
        baseline=True,
        ablation=True,
    ),
    StrategyInfo(
        "manual",
        "the spec's explicit `remove` list",
        f"{_IMPL}:manual_strategy",
        explicit=True,
    ),
)


def strategy_names() -> tuple[str, ...]:
    """Every registered strategy's name, in registry order."""
    from prunec.plan.registry import strategies

    return strategies().names()


def strategies_where(**flags: bool) -> tuple[str, ...]:
    """Names of the registered strategies whose declaration has every given flag value, e.g.
    `strategies_where(baseline=True)`, in registry order."""
    from prunec.plan.registry import strategies

    return tuple(
        name
        for name, info in strategies().all().items()
        if all(getattr(info, flag) == value for flag, value in flags.items())
    )


def sweep_strategies() -> tuple[str, ...]:
    """What `prunec sweep` runs by default: every strategy that chooses layers itself and
    needs no extra scoring pass, the fixed baselines first and the measured ones last."""
    from prunec.plan.registry import strategies

    chosen = [
        info for info in strategies().all().values() if not info.explicit and not info.ablation
    ]
    return tuple(info.name for info in sorted(chosen, key=lambda info: info.measured))
