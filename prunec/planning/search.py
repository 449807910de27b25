"""`auto`: propose candidates from every ranking, measure them, search locally, pick on held-out.

1. Propose: every fixed strategy's answer under the spec's constraints (the combined domain
   ranking, each domain alone, Block Influence, the angular block, uniform, last, the SLEB
   order when computed) and the domain ranking with each of `SPACING_PROPOSALS` (plus the
   spec's own `spacing_weight`). Identical sets are measured once, with all their origins.
2. Measure each on the search part of the calibration data (`MeasuredObjective`).
3. Local search from the best (first improvement): moves swap one removed layer for a kept
   one, or shift a run of removed layers by one or two; only moves that keep every constraint
   (budget, keep, protect, max_run, min_gap) are tried, the ones whose additive proxy changes
   least first. A move is measured with the best value as its bound, so a worse one stops
   early. It ends when no move improves (a local optimum) or after `search` evaluations.
4. Pick: the best `FINALISTS` sets and every fixed strategy's proposal are measured on the
   held-out part; the lowest held-out value wins (ties: lower search value). So, on data the
   search did not optimise on, the choice is never worse than any fixed strategy's set.
   A per-domain no-regression guard comes first (`guarded_pick`): only finalists whose
   held-out value on every domain with positive weight is within `GUARD_RELATIVE` /
   `GUARD_ABSOLUTE` of the best fixed strategy's value on that domain (and whose combined
   value is no worse than the best fixed strategy's) compete; when none does, the combined
   value alone decides. Its decision is reported (`SearchSummary.guard`).

The result (every candidate, the finalists, the winner) is cached with the scores, keyed by
everything it depends on, so re-planning with the same inputs runs no forward pass.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.distributed import agreed, is_worker
from prunec.errors import SpecError
from prunec.plan.constraints import Constraints
from prunec.plan.registry import strategies
from prunec.plan.strategies import strategies_where
from prunec.planning.exact import satisfies
from prunec.planning.problem import SPACING_PROPOSALS, Candidate, SearchSummary, Selection
from prunec.scoring.cache import ScoreCache, cache_key
from prunec.scoring.scores import LayerScores

if TYPE_CHECKING:
    from prunec.arch.loading import LazyModel, LoadedModel
    from prunec.plan.model import Plan
    from prunec.planning.measure import MeasuredObjective, Measurement, Transform

#: How many of the best search-part candidates are measured on the held-out part (besides
#: every fixed strategy's proposal, the registry's baselines: so `auto` never picks a set that
#: is worse on the held-out part than any published baseline's).
FINALISTS = 3
#: The per-domain no-regression guard's tolerance. A finalist keeps a domain when its held-out
#: value there (mean answer NLL or KL, lower is better) is at most the best fixed strategy's
#: value b on that domain plus max(GUARD_RELATIVE x b, GUARD_ABSOLUTE): 5% of the baseline's
#: loss, and at least 0.01 nats so that near-zero losses (a saturated domain) do not turn
#: float noise into a regression. A combined gain may not be bought with one domain's loss.
GUARD_RELATIVE = 0.05
GUARD_ABSOLUTE = 0.01
#: Run shifts tried by the local search (a shift by one of a single layer is also a swap).
SHIFTS = (-2, -1, 1, 2)
#: Bump when the search procedure changes what it picks (part of the cache key).
SEARCH_VERSION = "2"

Report = Callable[[str, int, int, "Candidate | None"], None]


class SearchContext:
    """What `auto` needs besides constraints and scores: the model and calibration data to
    measure on, the cache, an optional transform (healing) and whether to show progress.

    The objective (one pass of the unpruned model over the calibration data) is prepared on
    first need and reused by every later `solve` with this context (a sweep over budgets).
    """

    def __init__(
        self,
        plan: Plan,
        model: LoadedModel | LazyModel,
        *,
        cache_dir: Path | None = None,
        transform: Transform | None = None,
        progress: bool = True,
        state_memory: int | None = None,
    ):
        self.plan = plan
        self.model = model
        self.cache = ScoreCache(cache_dir)
        self.transform = transform
        self.progress = progress
        self.state_memory = state_memory
        self._objective: MeasuredObjective | None = None

    def loaded(self) -> LoadedModel:
        from prunec.arch.loading import LazyModel

        return self.model.get() if isinstance(self.model, LazyModel) else self.model

    def objective(self, report: Report | None = None) -> MeasuredObjective:
        """The measured objective on the spec's calibration data (prepared once)."""
        if self._objective is None:
            from prunec.planning.measure import MeasuredObjective

            options: dict[str, Any] = {}
            if self.state_memory is not None:
                options["state_memory"] = self.state_memory
            if report is not None:
                options["on_batch"] = lambda done, total: report("prepare", done, total, None)
            self._objective = MeasuredObjective.from_plan(self.plan, self.loaded(), **options)
        return self._objective

    def close(self) -> None:
        """Drop the objective and its cached hidden states (frees their memory)."""
        self._objective = None

    def key(self, c: Constraints, scores: LayerScores) -> str | None:
        """The cache key of a search: everything its result depends on. None when the scores
        do not say which model and data they came from (then nothing is cached)."""
        from prunec.planning.measure import (
            HELD_OUT_EVERY,
            KL_POSITIONS,
            KL_TOP_K,
            MEASURE_VERSION,
        )

        fingerprints = dict(scores.fingerprints)
        if not fingerprints.get("model") or not any(k.startswith("data.") for k in fingerprints):
            return None
        return cache_key(
            {
                "scores": fingerprints,
                "constraints": {
                    "num_layers": c.num_layers,
                    "budget": c.budget,
                    "max_run": c.max_run,
                    "min_gap": c.min_gap,
                    "forbidden": sorted(c.forbidden),
                    "tokens": c.tokens,
                    "weights": dict(c.weights) if c.weights is not None else None,
                    "spacing_weight": c.spacing_weight,
                    "search": c.search,
                },
                "batch_size": self.plan.prune.batch_size,
                "max_length": {d.name: d.max_length for d in self.plan.domains},
                "measure": [MEASURE_VERSION, HELD_OUT_EVERY, KL_TOP_K, KL_POSITIONS],
                "transform": self.transform.key if self.transform is not None else "",
                "search": SEARCH_VERSION,
            }
        )


def auto_select(c: Constraints, scores: LayerScores, context: SearchContext) -> Selection:
    """`auto`'s selection: the cached search for these inputs, or a new one (then cached)."""
    importance = _combined_importance(c, scores)
    key = context.key(c, scores)
    cached = context.cache.get_json("search", key) if key is not None else None
    cached = agreed(cached, "the search cache")  # every process searches, or none
    summary = None
    if cached is not None:
        try:
            summary = SearchSummary.from_json(cached)
        except (KeyError, TypeError, ValueError, IndexError):
            summary = None  # corrupt entry: search again
    if summary is None:
        with SearchProgress(context.progress) as progress:
            objective = context.objective(progress.report)
            summary = run_search(
                c, scores, objective, transform=context.transform, report=progress.report
            )
        if key is not None and not is_worker():
            context.cache.put_json("search", key, summary.to_json())
    chosen = summary.selected
    removed = chosen.removed
    return Selection(
        removed=removed,
        kept=tuple(i for i in range(c.num_layers) if i not in set(removed)),
        strategy=c.strategy,
        ranking="measured",
        regime=c.regime,
        objective=chosen.held_out if chosen.held_out is not None else chosen.search,
        importance=importance,
        spacing_weight=0.0,
        num_layers=c.num_layers,
        search=summary,
    )


# ---------------------------------------------------------------------- proposals and moves


def _combined_importance(c: Constraints, scores: LayerScores) -> tuple[float, ...]:
    from prunec.planning.strategies import solve

    base = replace(c, strategy="domain", spacing_weight=None, remove=None)
    return solve(base, scores).importance


def proposals(c: Constraints, scores: LayerScores) -> list[tuple[tuple[int, ...], list[str]]]:
    """Every ranking's set under `c`, in a fixed order, identical sets merged (their origins
    listed together). A ranking the constraints make infeasible (a contiguous angular block
    under max_run) or whose statistics the scores lack is left out."""
    from prunec.planning.strategies import solve

    base = replace(c, spacing_weight=None, remove=None)
    options: list[tuple[str, Constraints]] = [("domain", replace(base, strategy="domain"))]
    names = list(c.weights) if c.weights is not None else list(scores.domains)
    if len(names) > 1:
        for name in names:
            alone = replace(base, strategy="domain", weights={name: 1.0})
            options.append((f"domain:{name}", alone))
    for strategy in strategies_where(baseline=True):
        if strategy == "domain" or (strategies()[strategy].ablation and not scores.iterative_order):
            continue  # the domain ranking leads (above); ablation orders only when computed
        options.append((strategy, replace(base, strategy=strategy)))
    weights = {*SPACING_PROPOSALS, *([c.spacing_weight] if c.spacing_weight else [])}
    for weight in sorted(weights):
        spaced = replace(base, strategy="domain", spacing_weight=weight)
        options.append((f"domain+spacing {weight:g}", spaced))
    found: dict[tuple[int, ...], list[str]] = {}
    for origin, constraints in options:
        try:
            removed = solve(constraints, scores).removed
        except SpecError as err:
            # The combined ranking must work; the others may not apply to these constraints.
            if origin == "domain" or {d.code for d in err.diagnostics} - {"E304", "E225"}:
                raise
            continue
        found.setdefault(removed, []).append(origin)
    return list(found.items())


def _runs(removed: tuple[int, ...]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive layers as (first, last)."""
    runs: list[tuple[int, int]] = []
    for layer in removed:
        if runs and layer == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], layer)
        else:
            runs.append((layer, layer))
    return runs


def valid(removed: tuple[int, ...], c: Constraints) -> bool:
    """Does `removed` satisfy budget, keep, protect, max_run and min_gap?"""
    return len(set(removed)) == c.budget and satisfies(
        removed, c.num_layers, c.forbidden, c.max_run, c.min_gap
    )


def neighbours(
    removed: tuple[int, ...], c: Constraints, importance: tuple[float, ...]
) -> list[tuple[str, tuple[int, ...]]]:
    """The moves from `removed` that keep every constraint: (name, new set), ordered by how
    little they change the additive proxy (then by the set, for determinism)."""
    gone = set(removed)
    allowed = [i for i in range(c.num_layers) if i not in c.forbidden and i not in gone]
    moves: dict[tuple[int, ...], str] = {}
    for out in removed:
        for into in allowed:
            new = tuple(sorted((gone - {out}) | {into}))
            if new not in moves and valid(new, c):
                moves[new] = f"swap {out}->{into}"
    for first, last in _runs(removed):
        run = set(range(first, last + 1))
        for shift in SHIFTS:
            new = tuple(sorted((gone - run) | {i + shift for i in run}))
            if new not in moves and new != removed and valid(new, c):
                moves[new] = f"shift {first}-{last} {shift:+d}"
    before = sum(importance[i] for i in removed)
    order = sorted(moves, key=lambda new: (sum(importance[i] for i in new) - before, new))
    return [(moves[new], new) for new in order]


# ---------------------------------------------------------------------- the search


class _Log:
    """Every measured candidate, in order, and the best complete one so far."""

    def __init__(self, importance: tuple[float, ...]):
        self.importance = importance
        self.candidates: list[Candidate] = []
        self.index: dict[tuple[int, ...], int] = {}
        self.best: int | None = None

    def add(self, origin: list[str], m: Measurement) -> Candidate:
        candidate = Candidate(
            removed=m.removed,
            origin=tuple(origin),
            proxy=float(sum(self.importance[i] for i in m.removed)),
            search=m.value,
            complete=m.complete,
            domains=dict(m.domains),
        )
        self.index[m.removed] = len(self.candidates)
        self.candidates.append(candidate)
        if m.complete and (self.best is None or _rank(candidate) < _rank(self.best_candidate)):
            self.best = len(self.candidates) - 1
        return candidate

    @property
    def best_candidate(self) -> Candidate:
        assert self.best is not None
        return self.candidates[self.best]


def _rank(candidate: Candidate) -> tuple[float, tuple[int, ...]]:
    return (candidate.search, candidate.removed)


def _improves(value: float, best: float) -> bool:
    # A margin keeps float noise between two nearly equal sets from steering the search.
    return value < best - 1e-9 * max(1.0, abs(best))


def run_search(
    c: Constraints,
    scores: LayerScores,
    objective: MeasuredObjective,
    *,
    transform: Transform | None = None,
    report: Report | None = None,
) -> SearchSummary:
    """Propose, measure, search locally and pick on the held-out part (see the module doc).

    Uses at most `c.search` evaluations on the search part, plus one held-out evaluation per
    finalist. report(stage, done, total, best) is called as evaluations finish.
    """
    started = time.perf_counter()
    budget = max(1, c.search)
    importance = _combined_importance(c, scores)
    log = _Log(importance)
    used = 0

    def measure(removed: tuple[int, ...], origin: list[str], bound: float | None) -> Candidate:
        nonlocal used
        m = objective.evaluate(removed, "search", transform=transform, bound=bound)
        used += 1
        candidate = log.add(origin, m)
        if report is not None:
            best = log.best_candidate if log.best is not None else None
            report("search", used, budget, best)
        return candidate

    for removed, origins in proposals(c, scores):
        if used >= budget:
            break
        measure(removed, origins, None)
    stopped = "budget"
    while used < budget:
        current = log.best_candidate
        improved = False
        for move, new in neighbours(current.removed, c, importance):
            if new in log.index:
                continue
            if used >= budget:
                break
            candidate = measure(new, [move], current.search)
            if candidate.complete and _improves(candidate.search, current.search):
                improved = True
                break
        else:
            stopped = "local optimum"
        if not improved:
            break
    finalists, chosen, guard = _pick(c, log, objective, transform, report)
    splits = objective.splits
    return SearchSummary(
        candidates=tuple(log.candidates),
        chosen=chosen,
        finalists=finalists,
        budget=budget,
        evaluations=used,
        stopped=stopped,
        kinds={d: s.kind for d, s in splits.items()},
        samples={d: (s.search, s.held_out) for d, s in splits.items()},
        unpruned={
            part: objective.unpruned(part).value
            for part in ("search", "held_out")
            if objective.has_part(part)  # type: ignore[arg-type]
        },
        direct=objective.fast,
        note=objective.note,
        seconds=round(time.perf_counter() - started, 3),
        guard=guard,
    )


def _pick(
    c: Constraints,
    log: _Log,
    objective: MeasuredObjective,
    transform: Transform | None,
    report: Report | None,
) -> tuple[tuple[int, ...], int, str]:
    """(finalist indices, winner index, the guard's decision): the held-out part decides among
    the best few and every fixed strategy's proposal, under the per-domain guard; without a
    held-out part the search part decides."""
    complete = sorted(
        (i for i, cand in enumerate(log.candidates) if cand.complete),
        key=lambda i: _rank(log.candidates[i]),
    )
    if not objective.has_part("held_out"):
        return (), complete[0], ""
    baselines = set(strategies_where(baseline=True))
    fixed = [i for i in complete if baselines & set(log.candidates[i].origin)]
    finalists = tuple(dict.fromkeys([*complete[:FINALISTS], *fixed]))
    for done, index in enumerate(finalists, start=1):
        candidate = log.candidates[index]
        held = objective.evaluate(candidate.removed, "held_out", transform=transform)
        log.candidates[index] = replace(
            candidate, held_out=held.value, held_out_domains=dict(held.domains)
        )
        if report is not None:
            report("held-out", done, len(finalists), log.candidates[index])
    chosen, regressions, guard = guarded_pick(log.candidates, finalists, fixed, c.weights)
    for index, domains in regressions.items():
        log.candidates[index] = replace(log.candidates[index], regresses=domains)
    return finalists, chosen, guard


def guarded_pick(
    candidates: Sequence[Candidate],
    finalists: Sequence[int],
    fixed: Sequence[int],
    weights: Mapping[str, float] | None,
) -> tuple[int, dict[int, tuple[str, ...]], str]:
    """The per-domain no-regression guard over held-out finalists.

    candidates: every measured candidate (finalists carry `held_out` and `held_out_domains`).
    finalists: indices measured on the held-out part; fixed: those a fixed strategy proposed.
    weights: domain weights (None = equal); only domains with positive weight are guarded.
    Returns (winner, finalist -> domains where it is worse than the best fixed strategy's
    held-out value by more than the tolerance (see GUARD_RELATIVE), the decision in words).
    The winner is the lowest combined held-out value among finalists that regress no domain
    and whose combined value is at most the best fixed strategy's (so the guard never trades
    the combined guarantee away); when none qualifies, the lowest among all finalists.
    """

    def rank(i: int) -> tuple[float, float, tuple[int, ...]]:
        cand = candidates[i]
        assert cand.held_out is not None
        return (cand.held_out, cand.search, cand.removed)

    best = min(finalists, key=rank)
    baseline: dict[str, float] = {}
    for i in fixed:
        for domain, value in candidates[i].held_out_domains.items():
            if weights is None or weights.get(domain, 0.0) > 0:
                baseline[domain] = min(value, baseline.get(domain, math.inf))
    if not baseline:
        return best, {}, "no fixed strategy measured per domain; the combined objective decided"
    limit = {d: v + max(GUARD_RELATIVE * abs(v), GUARD_ABSOLUTE) for d, v in baseline.items()}
    regressions = {
        i: tuple(d for d in limit if candidates[i].held_out_domains.get(d, math.inf) > limit[d])
        for i in finalists
    }
    best_fixed = min(
        (held for i in fixed if (held := candidates[i].held_out) is not None), default=math.inf
    )
    keeps = [i for i in finalists if not regressions[i] and rank(i)[0] <= best_fixed]
    tolerance = f"{GUARD_RELATIVE:.0%} (at least {GUARD_ABSOLUTE:g})"
    if not keeps:
        decision = (
            f"no finalist is within {tolerance} of the best fixed strategy on every domain; "
            "the combined held-out objective decided"
        )
        return best, regressions, decision
    chosen = min(keeps, key=rank)
    if chosen == best:
        decision = (
            f"the best finalist is within {tolerance} of the best fixed strategy on every domain"
        )
        return chosen, regressions, decision
    decision = (
        f"the best finalist on the combined objective ({', '.join(candidates[best].origin)}) "
        f"is worse than the best fixed strategy on {', '.join(regressions[best])} by more "
        f"than {tolerance}; chose the best finalist that is not"
    )
    return chosen, regressions, decision


# ---------------------------------------------------------------------- progress


class SearchProgress:
    """The search's progress on stderr: on a terminal a rich bar with the best set so far;
    otherwise plain lines (each phase, each new best, the end) and, for a long phase, a
    timestamped status line at `prunec.progress`'s interval. Silent when disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and not is_worker()  # rank 0 speaks for a distributed launch
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._console: Any = None
        self._best: tuple[int, ...] | None = None
        self._stage = ""
        self._ticking: Any = None
        self._status: Any = None

    def __enter__(self) -> SearchProgress:
        if not self.enabled:
            return self
        from rich.console import Console

        self._console = Console(file=sys.stderr, highlight=False)
        if self._console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[best]}"),
                TimeElapsedColumn(),
                console=self._console,
            )
            self._progress.start()
        else:
            from prunec.progress import progress

            self._ticking = progress("search")
            self._status = self._ticking.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ticking is not None:
            self._ticking.__exit__(None, None, None)
            self._ticking = self._status = None
        if self._progress is not None:
            self._progress.stop()

    def report(self, stage: str, done: int, total: int, best: Candidate | None) -> None:
        if not self.enabled:
            return
        text = f"best {best.search:.4f} (remove {' '.join(map(str, best.removed))})" if best else ""
        if stage == "held-out" and best is not None:
            text = f"{' '.join(map(str, best.removed))}: held-out {best.held_out:.4f}"
        description = {
            "prepare": "measuring: unpruned model",
            "search": "measuring: candidates",
            "held-out": "measuring: finalists (held-out)",
        }[stage]
        if self._status is not None:
            self._status.description, self._status.total = f"search, {description}", total
            self._status.update(completed=done, note=text)
        if self._progress is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._progress.add_task(description, total=total, best="")
            self._progress.update(self._tasks[stage], completed=done, total=total, best=text)
            return
        self._plain(stage, done, total, best, text)

    def _plain(self, stage: str, done: int, total: int, best: Candidate | None, text: str) -> None:
        new_stage = stage != self._stage
        self._stage = stage
        if stage == "prepare":
            if new_stage:
                self._console.print(f"search: running the unpruned model ({total} batches)")
            return
        if stage == "search":
            if best is not None and best.removed != self._best:
                self._best = best.removed
                self._console.print(f"search: {done}/{total} evaluations, {text}")
            return
        self._console.print(f"search: finalist {done}/{total}, {text}")
