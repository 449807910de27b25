"""Layer-selection strategies' implementations and the `solve` entry point.

Which strategies exist, and what each needs, is declared in `prunec.plan.strategies` (the
registry); each declaration names its function here, and `solve` dispatches through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from prunec.errors import Diagnostic, SourceMap, SpecError
from prunec.plan.constraints import Constraints, constraint_problems, infeasible
from prunec.plan.model import Plan
from prunec.plan.registry import strategies
from prunec.planning.exact import objective, satisfies, solve_exact
from prunec.planning.problem import Selection
from prunec.scoring.scores import LayerScores

if TYPE_CHECKING:
    from prunec.planning.search import SearchContext

#: What every declaration's `select` names: constraints and scores (None when none exist)
#: in, the selection out. Measured strategies run through `prunec.planning.search` instead
#: when `solve` has a SearchContext.
Strategy = Callable[[Constraints, LayerScores | None], Selection]


def solve(
    problem: Plan | Constraints,
    scores: LayerScores | Mapping[str, Sequence[float]],
    num_layers: int | None = None,
    *,
    context: SearchContext | None = None,
) -> Selection:
    """Choose the layers to remove under the plan's constraints.

    problem: a Plan (its `prune` section) or ready Constraints.
    scores: LayerScores, or per-domain importance lists (`{"math": [I(0), I(1), ...]}`); may be
        empty for strategies that need no scores (manual, last, uniform).
    num_layers: the decoder's layer count; defaults to the scores' (required without scores).
    context: the model and calibration data `auto` measures candidates on
        (`prunec.planning.search.SearchContext`); the fixed strategies ignore it.
    Raises SpecError (pointing at the spec) for unknown strategies, infeasible constraints,
    and `auto` without a context.
    """
    layer_scores = _as_scores(scores)
    if num_layers is None:
        if isinstance(problem, Constraints):
            num_layers = problem.num_layers
        elif layer_scores is not None:
            num_layers = layer_scores.num_layers
        else:
            raise ValueError("num_layers is required when there are no scores")
    if isinstance(problem, Plan):
        try:
            return _solve(Constraints.from_plan(problem, num_layers), layer_scores, context)
        except SpecError as err:
            raise with_spec_source(err, problem) from None
    return _solve(problem, layer_scores, context)


def with_spec_source(err: SpecError, plan: Plan) -> SpecError:
    """The same error, able to quote the spec's lines (spans name the spec file)."""
    if not plan.spec_text:
        return err
    sources = SourceMap(dict(err.sources.texts))
    for diag in err.diagnostics:
        if diag.span is not None and diag.span.file not in sources.texts:
            sources.add(diag.span.file, plan.spec_text)
    return SpecError(err.diagnostics, sources)


def _solve(
    c: Constraints, layer_scores: LayerScores | None, context: SearchContext | None = None
) -> Selection:
    info = strategies().get(c.strategy)
    if info is None:
        valid = ", ".join(sorted(strategies().names()))
        raise SpecError(
            [
                Diagnostic(
                    "E210",
                    f"unknown strategy `{c.strategy}`",
                    c.span("prune.strategy"),
                    expected=f"one of: {valid}",
                )
            ]
        )
    problems = constraint_problems(c)
    if problems:
        raise SpecError(problems)
    if layer_scores is not None and layer_scores.num_layers != c.num_layers:
        raise SpecError(
            [
                Diagnostic(
                    "E308",
                    f"the scores cover {layer_scores.num_layers} layers; "
                    f"the model has {c.num_layers}",
                    c.span("prune.budget", "prune"),
                )
            ]
        )
    if info.measured and context is not None:
        from prunec.planning.search import auto_select

        return auto_select(c, _needs_scores(c, layer_scores, "calibration scores"), context)
    strategy: Strategy = info.load()
    return strategy(c, layer_scores)


def _as_scores(scores: LayerScores | Mapping[str, Sequence[float]] | None) -> LayerScores | None:
    if scores is None or isinstance(scores, LayerScores):
        return scores
    if not scores:
        return None
    return LayerScores.from_importance(scores)


def _missing_scores(c: Constraints, what: str) -> SpecError:
    return SpecError(
        [
            Diagnostic(
                "E225",
                f"strategy `{c.strategy}` needs {what}, and there are none",
                c.span("prune.strategy"),
                help="run calibration (`prunec score`) or pass a scores file",
            )
        ]
    )


def _needs_scores(c: Constraints, scores: LayerScores | None, what: str) -> LayerScores:
    if scores is None:
        raise _missing_scores(c, what)
    return scores


def _weights(c: Constraints, scores: LayerScores) -> Mapping[str, float] | None:
    if c.weights is None:
        return None
    missing = sorted(set(c.weights) - set(scores.domains))
    if missing:
        raise SpecError(
            [
                Diagnostic(
                    "E307",
                    f"the scores have no domain {', '.join(missing)} "
                    f"(they have: {', '.join(scores.domains)})",
                    c.span(*(f"domains.{m}" for m in missing), "prune"),
                )
            ]
        )
    return c.weights


def _combined(c: Constraints, scores: LayerScores) -> tuple[float, ...]:
    """The weighted domain importance for the spec's token scope."""
    try:
        return scores.combined(_weights(c, scores), c.tokens)
    except ValueError as err:
        raise _missing_scores(c, f"last-token statistics ({err})") from err


def _scored(
    c: Constraints, importance: Sequence[float], ranking: str, spacing_weight: float
) -> Selection:
    """Run the exact planner on `importance` and package the answer."""
    values = tuple(float(v) for v in importance)
    mean = sum(abs(v) for v in values) / len(values) if values else 0.0
    lam = spacing_weight * (mean if mean > 0 else 1.0)
    removed = solve_exact(
        values,
        c.budget,
        forbidden=c.forbidden,
        max_run=c.max_run,
        min_gap=c.min_gap,
        lam=lam,
    )
    if removed is None:
        raise infeasible(c)
    return _selection(c, removed, ranking, objective(values, removed, lam), values, spacing_weight)


def _selection(
    c: Constraints,
    removed: Sequence[int],
    ranking: str,
    value: float,
    importance: Sequence[float],
    spacing_weight: float,
) -> Selection:
    gone = tuple(sorted(removed))
    return Selection(
        removed=gone,
        kept=tuple(i for i in range(c.num_layers) if i not in set(gone)),
        strategy=c.strategy,
        ranking=ranking,
        regime=c.regime,
        objective=value,
        importance=tuple(importance),
        spacing_weight=spacing_weight,
        num_layers=c.num_layers,
    )


def domain_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """The paper's domain-aware activation similarity: sum_d w_d (1 - mean cos_d)."""
    s = _needs_scores(c, scores, "calibration scores")
    return _scored(c, _combined(c, s), "domain", c.spacing_weight or 0.0)


def auto_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """Measured search (`prunec.planning.search`): without the model there is nothing to
    measure, so this entry only explains how to get one."""
    raise SpecError(
        [
            Diagnostic(
                "E342",
                "strategy `auto` measures candidate sets on the model, and no model is loaded here",
                c.span("prune.strategy", "prune"),
                help="run `prunec plan` without `--scores` (it loads the model; re-planning "
                "reuses the cached result), or choose a fixed strategy such as "
                "`strategy domain`",
            )
        ]
    )


def block_influence_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """ShortGPT Block Influence: 1 - cos with all calibration tokens pooled."""
    s = _needs_scores(c, scores, "calibration scores")
    try:
        pooled = s.pooled(c.tokens)
    except ValueError as err:
        raise _missing_scores(c, f"last-token statistics ({err})") from err
    return _scored(c, pooled, "bi", c.spacing_weight or 0.0)


def last_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """Drop the deepest removable layers (the planner still honours every constraint)."""
    n = c.num_layers
    position = [(n - 1 - i) / n for i in range(n)]  # deeper = cheaper to remove
    return _scored(c, position, "position", 0.0)


def uniform_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """Evenly spaced removals over the removable layers (midpoints of k equal slices)."""
    candidates = [i for i in range(c.num_layers) if i not in c.forbidden]
    step = len(candidates) / c.budget
    removed = sorted({candidates[int((j + 0.5) * step)] for j in range(c.budget)})
    if len(removed) != c.budget or not satisfies(
        removed, c.num_layers, c.forbidden, c.max_run, c.min_gap
    ):
        raise infeasible(c, "evenly spaced removal breaks the spacing constraints here")
    return _selection(c, removed, "uniform", 0.0, [0.0] * c.num_layers, 0.0)


def angular_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """Gromov et al.: the contiguous block [l, l+n) minimising angular(h_l, h_{l+n}), last token."""
    s = _needs_scores(c, scores, "pairwise angular distances from `prunec score`")
    n = c.budget
    if (c.max_run is not None and c.max_run < n) or (c.min_gap and n > 1):
        raise infeasible(
            c,
            f"`angular` removes one contiguous block of {n} layers, which the "
            "spacing constraints (max_run / min_gap) forbid",
        )
    try:
        pairs = s.pair_angular()
    except ValueError as err:
        raise _missing_scores(c, f"pairwise angular distances ({err})") from err
    starts = [
        start
        for start in range(c.num_layers - n + 1)
        if not c.forbidden & set(range(start, start + n))
    ]
    if not starts:
        raise infeasible(c, f"no block of {n} consecutive layers avoids the kept layers")
    best = min(starts, key=lambda start: pairs[start][start + n])
    per_layer = [pairs[i][i + 1] for i in range(c.num_layers)]
    return _selection(c, range(best, best + n), "angular", pairs[best][best + n], per_layer, 0.0)


def iterative_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """SLEB-style: layers in the order ablation removed them (computed by `score`)."""
    s = _needs_scores(c, scores, "an ablation order (computed by `score` for this strategy)")
    order = [i for i in s.iterative_order if i not in c.forbidden]
    if len(order) < c.budget:
        raise _missing_scores(c, f"an ablation order of at least {c.budget} layers")
    removed = sorted(order[: c.budget])
    if not satisfies(removed, c.num_layers, c.forbidden, c.max_run, c.min_gap):
        raise infeasible(c, "the ablation order breaks the spacing constraints here")
    rank = [0.0] * c.num_layers
    for position, layer in enumerate(s.iterative_order):
        rank[layer] = (position + 1) / c.num_layers
    return _selection(c, removed, "iterative", 0.0, rank, 0.0)


def manual_strategy(c: Constraints, scores: LayerScores | None) -> Selection:
    """The spec's explicit `remove` list, checked against the constraints."""
    removed = sorted(set(c.remove or ()))
    if len(removed) != len(c.remove or ()):
        raise SpecError(
            [Diagnostic("E219", "`remove` lists a layer twice", c.span("prune.remove"))]
        )
    # Removing a kept layer is reported by `constraint_problems` before strategies run.
    if not satisfies(removed, c.num_layers, c.forbidden, c.max_run, c.min_gap):
        raise infeasible(c, f"`remove` {removed} breaks max_run / min_gap")
    importance: Sequence[float] = [0.0] * c.num_layers
    value = 0.0
    if scores is not None:
        importance = _combined(c, scores)
        value = objective(importance, removed, 0.0)
    return _selection(c, removed, "manual", value, importance, 0.0)
