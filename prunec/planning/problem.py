"""The selection problem (`Constraints`), its answer (`Selection`), regimes and feasibility."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prunec.errors import Diagnostic, Span, SpecError
from prunec.plan.model import DEFAULT_SEARCH, Budget, Plan

if TYPE_CHECKING:
    from prunec.planning.heal import HealRecord

Regime = Literal["low", "moderate", "high"]

#: Regime thresholds on k / L (fraction of decoder layers removed). The paper's low-budget
#: example is ~10% of the layers, where *which* layers go dominates; by a third of the stack
#: structural damage dominates and methods converge or spacing wins. So: low <= 15% (one or two
#: layers of a 12-28 layer decoder), moderate <= 35%, high above.
LOW_MAX = 0.15
MODERATE_MAX = 0.35

#: Spacing weights (in units of the mean layer importance) of the domain ranking that `auto`
#: proposes besides the plain rankings. They compete on measurement like every other
#: candidate: the paper's high-budget spacing claim is tested on the model, not assumed.
SPACING_PROPOSALS: tuple[float, ...] = (0.5, 2.0)

#: `auto`'s proposals that are a fixed strategy's own answer (the published baselines).
FIXED_ORIGINS: tuple[str, ...] = ("domain", "bi", "angular", "uniform", "last", "iterative")


def regime_for(budget: int, num_layers: int) -> Regime:
    """low / moderate / high from the fraction of layers removed (see LOW_MAX, MODERATE_MAX)."""
    ratio = budget / num_layers if num_layers else 0.0
    if ratio <= LOW_MAX:
        return "low"
    if ratio <= MODERATE_MAX:
        return "moderate"
    return "high"


def _budget_written(budget: Budget | None, layers: int) -> str:
    if budget is not None and budget.percent is not None:
        return f"{budget.percent:g}%"
    return f"{layers} layer" + ("" if layers == 1 else "s")


@dataclass(frozen=True)
class Constraints:
    """Everything the planner needs, with the model's layer count resolved.

    budget: exactly how many layers to remove (for `manual`: len(remove)).
    max_run / min_gap: None = unconstrained.
    protect: layers never removed, besides the first `keep_first` and last `keep_last`.
    spacing_weight: the spacing term's weight for scored strategies (None = 0); `auto` adds
        the domain ranking with this weight to its proposals.
    search: `auto`'s compute budget: the most candidate evaluations on the search part.
    weights: domain weights (None = equal); normalised by the planner.
    budget_written: the budget as the spec wrote it ("25%"), for error messages.
    spans: where the spec wrote each setting (`Plan.spans`), for error messages.
    """

    num_layers: int
    budget: int
    max_run: int | None = None
    min_gap: int | None = None
    keep_first: int = 0
    keep_last: int = 0
    protect: tuple[int, ...] = ()
    strategy: str = "auto"
    spacing_weight: float | None = None
    search: int = DEFAULT_SEARCH
    tokens: Literal["all", "last"] = "all"
    remove: tuple[int, ...] | None = None
    weights: Mapping[str, float] | None = None
    budget_written: str | None = None
    spans: Mapping[str, Span] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_plan(cls, plan: Plan, num_layers: int) -> Constraints:
        prune = plan.prune
        remove = prune.remove
        if remove is not None:
            budget = len(remove)
        elif prune.budget is not None:
            budget = prune.budget.resolve(num_layers)
        else:
            raise SpecError([Diagnostic("E223", "`prune` needs a `budget` or a `remove` list")])
        strategy = "manual" if remove is not None else prune.strategy
        return cls(
            num_layers=num_layers,
            budget=budget,
            max_run=prune.max_run,
            min_gap=prune.min_gap,
            keep_first=prune.keep_first,
            keep_last=prune.keep_last,
            protect=tuple(prune.protect),
            strategy=strategy,
            spacing_weight=prune.spacing_weight,
            search=prune.search,
            tokens=prune.tokens,
            remove=tuple(remove) if remove is not None else None,
            weights=plan.normalized_weights() if plan.domains else None,
            budget_written=_budget_written(prune.budget, budget),
            spans=dict(plan.spans),
        )

    @property
    def forbidden(self) -> frozenset[int]:
        """Layers that may never be removed: keep first/last plus protected."""
        first = range(min(self.keep_first, self.num_layers))
        last = range(max(self.num_layers - self.keep_last, 0), self.num_layers)
        return frozenset([*first, *last, *(p for p in self.protect if 0 <= p < self.num_layers)])

    @property
    def regime(self) -> Regime:
        return regime_for(self.budget, self.num_layers)

    def span(self, *keys: str) -> Span | None:
        """The first of `keys` the spec has a span for."""
        for key in keys:
            if key in self.spans:
                return self.spans[key]
        return None


@dataclass(frozen=True)
class Candidate:
    """One removal set `auto` measured.

    removed: the set (sorted, 0-based).
    origin: where it came from. Proposals name their ranking ("domain", "domain:math" for one
        domain alone, "bi", "angular", "uniform", "last", "iterative", "domain+spacing 0.5");
        local-search steps name their move ("swap 4->7": remove 7 instead of 4, "shift 6-8 +1":
        move that run of removed layers). Several when rankings proposed the same set.
    proxy: the additive proxy every fixed strategy minimises: the sum of the combined domain
        importance over the removed layers.
    search: the measured objective on the search part; a lower bound when not `complete`.
    complete: False when the evaluation stopped early, already worse than the best so far.
    held_out: the measured objective on the held-out part (finalists only), else None.
    domains: per-domain measured values on the search part (partial when not complete).
    """

    removed: tuple[int, ...]
    origin: tuple[str, ...]
    proxy: float
    search: float
    complete: bool = True
    held_out: float | None = None
    domains: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "origin": list(self.origin),
            "proxy": self.proxy,
            "search": self.search,
            "complete": self.complete,
            "held_out": self.held_out,
            "domains": dict(self.domains),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        held = data.get("held_out")
        return cls(
            removed=tuple(int(i) for i in data["removed"]),
            origin=tuple(str(o) for o in data["origin"]),
            proxy=float(data["proxy"]),
            search=float(data["search"]),
            complete=bool(data.get("complete", True)),
            held_out=float(held) if held is not None else None,
            domains={str(k): float(v) for k, v in dict(data.get("domains", {})).items()},
        )


@dataclass(frozen=True)
class SearchSummary:
    """How `auto` chose its set: every candidate it measured, and the winner.

    candidates: in the order measured (proposals from the rankings first, then local-search
        moves from the best one).
    chosen: index into `candidates` of the selected set.
    finalists: indices measured on the held-out part; the lowest held-out value won. Empty
        when the calibration data has no held-out part (the search part decided).
    budget: the spec's `search` setting; evaluations: search-part evaluations used.
    stopped: "local optimum" (no move improved) or "budget" (the budget ran out first).
    kinds: domain -> "nll" (teacher-forced answer NLL) or "kl" (label-free KL to the original).
    samples: domain -> (search-part records, held-out records).
    unpruned: part ("search", "held_out") -> the unpruned model's objective.
    direct: True when candidates ran the direct layer loop with cached states; note: why not.
    seconds: the search's wall time when it ran (cache hits keep the original's).
    """

    candidates: tuple[Candidate, ...]
    chosen: int
    finalists: tuple[int, ...]
    budget: int
    evaluations: int
    stopped: str
    kinds: Mapping[str, str]
    samples: Mapping[str, tuple[int, int]]
    unpruned: Mapping[str, float]
    direct: bool = True
    note: str = ""
    seconds: float = 0.0

    @property
    def selected(self) -> Candidate:
        return self.candidates[self.chosen]

    def to_json(self) -> dict[str, Any]:
        return {
            "candidates": [c.to_json() for c in self.candidates],
            "chosen": self.chosen,
            "finalists": list(self.finalists),
            "budget": self.budget,
            "evaluations": self.evaluations,
            "stopped": self.stopped,
            "kinds": dict(self.kinds),
            "samples": {k: list(v) for k, v in self.samples.items()},
            "unpruned": dict(self.unpruned),
            "direct": self.direct,
            "note": self.note,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchSummary:
        return cls(
            candidates=tuple(Candidate.from_json(c) for c in data["candidates"]),
            chosen=int(data["chosen"]),
            finalists=tuple(int(i) for i in data["finalists"]),
            budget=int(data["budget"]),
            evaluations=int(data["evaluations"]),
            stopped=str(data["stopped"]),
            kinds={str(k): str(v) for k, v in dict(data["kinds"]).items()},
            samples={str(k): (int(v[0]), int(v[1])) for k, v in dict(data["samples"]).items()},
            unpruned={str(k): float(v) for k, v in dict(data["unpruned"]).items()},
            direct=bool(data.get("direct", True)),
            note=str(data.get("note", "")),
            seconds=float(data.get("seconds", 0.0)),
        )


@dataclass(frozen=True)
class Selection:
    """Which decoder layers go.

    removed / kept: sorted 0-based layer indices; together they are 0..num_layers-1.
    strategy: the strategy the spec asked for ("auto", "domain", ..., "manual").
    ranking: what the choice came from ("measured" for `auto`; "domain", "bi", "angular",
        "position", "uniform", "iterative", "manual" for the fixed strategies).
    regime: "low" / "moderate" / "high" (see `regime_for`); reported, never a rule.
    objective: fixed strategies: sum of `importance` over removed layers + spacing_weight *
        scale * spacing term (see `prunec.planning.exact`), 0 for strategies without a score.
        `auto`: the measured objective of the chosen set on the held-out part (the search
        part when there is none).
    importance: the per-layer values the planner minimised (layer 0 first); for `auto`, the
        combined domain importance its proxy sums.
    spacing_weight: the spacing term's weight in units of the mean |importance|.
    search: for `auto`, every measured candidate and how the winner was picked; else None.
    healing: what `heal` fitted, kept and dropped (`prunec.planning.heal`); None without
        `heal` (or before the build healed).
    """

    removed: tuple[int, ...]
    kept: tuple[int, ...]
    strategy: str
    ranking: str
    regime: Regime
    objective: float
    importance: tuple[float, ...]
    spacing_weight: float
    num_layers: int
    search: SearchSummary | None = None
    healing: HealRecord | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "removed": list(self.removed),
            "kept": list(self.kept),
            "strategy": self.strategy,
            "ranking": self.ranking,
            "regime": self.regime,
            "objective": self.objective,
            "importance": list(self.importance),
            "spacing_weight": self.spacing_weight,
            "num_layers": self.num_layers,
        }
        if self.search is not None:
            out["search"] = self.search.to_json()
        if self.healing is not None:
            out["healing"] = self.healing.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Selection:
        from prunec.planning.heal import HealRecord

        search = data.get("search")
        healing = data.get("healing")
        return cls(
            removed=tuple(int(i) for i in data["removed"]),
            kept=tuple(int(i) for i in data["kept"]),
            strategy=str(data["strategy"]),
            ranking=str(data["ranking"]),
            regime=data["regime"],
            objective=float(data["objective"]),
            importance=tuple(float(v) for v in data["importance"]),
            spacing_weight=float(data["spacing_weight"]),
            num_layers=int(data["num_layers"]),
            search=SearchSummary.from_json(search) if search is not None else None,
            healing=HealRecord.from_json(healing) if healing is not None else None,
        )


def constraint_problems(c: Constraints) -> list[Diagnostic]:
    """Every reason the constraints cannot be met that has a closed form, each with a span.

    This is the one home of the rules that need the model's layer count: `prunec check`
    (through `validate_against_model`, when the config is readable), `build` and `solve`
    all report through it.
    """
    n, k = c.num_layers, c.budget
    budget_span = c.span("prune.budget", "prune.remove", "prune")
    problems = _index_problems(c)
    if k < 1:
        problems.append(Diagnostic("E205", f"budget {k} removes no layer", budget_span))
        return problems
    if k >= n:
        written = c.budget_written or f"{k} layers"
        problems.append(
            Diagnostic(
                "E301",
                f"budget {written} removes {k} of the model's {n} layers",
                budget_span,
                help=f"the budget must leave at least one layer; at most {n - 1}",
            )
        )
        return problems
    if c.max_run is not None and c.max_run < 1:
        problems.append(Diagnostic("E205", "max_run must be at least 1", c.span("prune.max_run")))
        return problems
    if c.remove is not None:
        return problems  # manual: the listed layers were checked above
    removable = n - len(c.forbidden)
    if k > removable:
        problems.append(
            Diagnostic(
                "E303",
                f"budget {k} but only {removable} of {n} layers may be removed",
                budget_span,
                notes=(_forbidden_note(c),),
            )
        )
    spacing = _spacing_problem(c)
    if spacing is not None:
        problems.append(spacing)
    return problems


def _index_problems(c: Constraints) -> list[Diagnostic]:
    """Out-of-range `protect`/`remove` indices, and removed layers the spec also keeps."""
    n = c.num_layers
    problems: list[Diagnostic] = []
    for key, layers in (("protect", c.protect), ("remove", c.remove or ())):
        for i, layer in enumerate(layers):
            span = c.span(f"prune.{key}.{i}", f"prune.{key}")
            if not 0 <= layer < n:
                problems.append(
                    Diagnostic(
                        "E302",
                        f"layer {layer} does not exist; the model has {n} layers "
                        f"(0 to {n - 1}; indices are 0-based)",
                        span,
                    )
                )
            elif key == "remove" and (keeper := _keeper(c, layer)) is not None:
                problems.append(
                    Diagnostic("E305", f"layer {layer} is removed but `{keeper}` keeps it", span)
                )
    return problems


def _keeper(c: Constraints, layer: int) -> str | None:
    """The setting that keeps `layer`, or None when it may be removed."""
    if layer < c.keep_first:
        return f"keep first {c.keep_first}"
    if layer >= c.num_layers - c.keep_last:
        return f"keep last {c.keep_last}"
    if layer in c.protect:
        return "protect"
    return None


def _spacing_problem(c: Constraints) -> Diagnostic | None:
    """The closed-form spacing bound: removed layers form runs of at most `run` layers,
    separated by at least `gap` kept ones, all between the kept ends. Sound, not complete:
    `protect` inside the window can still make it infeasible; the exact solver reports that.
    """
    if c.max_run is None and not c.min_gap:
        return None
    k, n = c.budget, c.num_layers
    window = max(n - min(c.keep_first, n) - min(c.keep_last, n), 0)
    run = 1 if c.min_gap else (c.max_run or k)
    gap = max(c.min_gap or 0, 1)
    needed = k + (math.ceil(k / run) - 1) * gap
    if needed <= window:
        return None
    limits = " ".join(
        f"{name} {value}"
        for name, value in (("max_run", c.max_run), ("min_gap", c.min_gap))
        if value
    )
    where = "" if window == n else f" between the kept ends ({window} there)"
    return Diagnostic(
        "E304",
        f"budget {k} with {limits} needs at least {needed} layers{where}; the model has {n}",
        c.span("prune.spacing", "prune.max_run", "prune.min_gap", "prune.budget"),
    )


def _forbidden_note(c: Constraints) -> str:
    parts = []
    if c.keep_first:
        parts.append(f"keep first {c.keep_first}")
    if c.keep_last:
        parts.append(f"keep last {c.keep_last}")
    if c.protect:
        parts.append(f"protect {sorted(c.protect)}")
    return "never removed: " + (", ".join(parts) if parts else "nothing")


def infeasible(c: Constraints, why: str | None = None) -> SpecError:
    """The error for constraints no selection satisfies, pointing at the budget."""
    message = why or (
        f"no set of {c.budget} layers out of {c.num_layers} satisfies the keep, protect, "
        "max_run and min_gap constraints together"
    )
    notes = [_forbidden_note(c)]
    if c.max_run is not None:
        notes.append(f"max_run {c.max_run}")
    if c.min_gap:
        notes.append(f"min_gap {c.min_gap}")
    return SpecError(
        [Diagnostic("E304", message, c.span("prune.budget", "prune"), notes=tuple(notes))]
    )
