"""What planning answers: `Selection` (which layers go), and for `auto` every measured
`Candidate` and the `SearchSummary` of how the winner was picked. The problem itself
(`Constraints`, regimes, feasibility) lives in `prunec.plan.constraints`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prunec.plan.constraints import Regime

if TYPE_CHECKING:
    from prunec.planning.heal import HealRecord

#: Spacing weights (in units of the mean layer importance) of the domain ranking that `auto`
#: proposes besides the plain rankings. They compete on measurement like every other
#: candidate: the paper's high-budget spacing claim is tested on the model, not assumed.
SPACING_PROPOSALS: tuple[float, ...] = (0.5, 2.0)


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
    held_out_domains: per-domain values on the held-out part (finalists only, else empty).
    regresses: for finalists judged by the per-domain guard, the domains on which the set is
        worse than the best fixed strategy's held-out value by more than the tolerance
        (empty: none); None when not judged.
    """

    removed: tuple[int, ...]
    origin: tuple[str, ...]
    proxy: float
    search: float
    complete: bool = True
    held_out: float | None = None
    domains: Mapping[str, float] = field(default_factory=dict)
    held_out_domains: Mapping[str, float] = field(default_factory=dict)
    regresses: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "origin": list(self.origin),
            "proxy": self.proxy,
            "search": self.search,
            "complete": self.complete,
            "held_out": self.held_out,
            "domains": dict(self.domains),
            "held_out_domains": dict(self.held_out_domains),
            "regresses": list(self.regresses) if self.regresses is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        held = data.get("held_out")
        regresses = data.get("regresses")
        return cls(
            removed=tuple(int(i) for i in data["removed"]),
            origin=tuple(str(o) for o in data["origin"]),
            proxy=float(data["proxy"]),
            search=float(data["search"]),
            complete=bool(data.get("complete", True)),
            held_out=float(held) if held is not None else None,
            domains={str(k): float(v) for k, v in dict(data.get("domains", {})).items()},
            held_out_domains={
                str(k): float(v) for k, v in dict(data.get("held_out_domains", {})).items()
            },
            regresses=tuple(str(d) for d in regresses) if regresses is not None else None,
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
    guard: the per-domain no-regression guard's decision in words (empty without a held-out
        part); see `prunec.planning.search.guarded_pick`.
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
    guard: str = ""

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
            "guard": self.guard,
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
            guard=str(data.get("guard", "")),
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
