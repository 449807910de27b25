"""The exact planner against brute force, strategies, regimes and infeasibility messages."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunec.errors import Span, SpecError
from prunec.plan.model import Budget, DomainSpec, ModelSpec, Plan, PruneSpec
from prunec.plan.strategies import strategy_names
from prunec.planning import (
    Constraints,
    Selection,
    objective,
    regime_for,
    satisfies,
    solve,
    solve_exact,
    spacing_penalty,
)
from prunec.scoring import DomainStats, LayerScores


def brute_force(importance, budget, forbidden, max_run, min_gap, lam):
    best = None
    for chosen in itertools.combinations(range(len(importance)), budget):
        if satisfies(chosen, len(importance), forbidden, max_run, min_gap):
            value = objective(importance, chosen, lam)
            if best is None or value < best:
                best = value
    return best


@st.composite
def instances(draw):
    n = draw(st.integers(1, 11))
    budget = draw(st.integers(0, n))
    importance = draw(st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=n, max_size=n))
    forbidden = draw(st.sets(st.integers(0, n - 1), max_size=3))
    max_run = draw(st.one_of(st.none(), st.integers(1, 4)))
    min_gap = draw(st.one_of(st.none(), st.integers(0, 3)))
    lam = draw(st.sampled_from([0.0, 0.25, 1.0, 3.0]))
    return importance, budget, forbidden, max_run, min_gap, lam


@settings(max_examples=400, deadline=None)
@given(instances())
def test_exact_planner_matches_brute_force(instance):
    importance, budget, forbidden, max_run, min_gap, lam = instance
    got = solve_exact(
        importance, budget, forbidden=forbidden, max_run=max_run, min_gap=min_gap, lam=lam
    )
    best = brute_force(importance, budget, forbidden, max_run, min_gap, lam)
    if best is None:
        assert got is None
        return
    assert got is not None and len(got) == budget
    assert satisfies(got, len(importance), forbidden, max_run, min_gap)
    assert objective(importance, got, lam) == pytest.approx(best, abs=1e-9)


def test_spacing_penalty_counts_within_run_pairs():
    assert spacing_penalty([]) == 0
    assert spacing_penalty([1, 3, 5]) == 0
    assert spacing_penalty([1, 2, 3]) == 3  # run of 3: 0 + 1 + 2
    assert spacing_penalty([0, 1, 5, 6]) == 2


def test_spacing_weight_spreads_removals():
    importance = [0.5, 0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5]
    packed = solve_exact(importance, 4, lam=0.0)
    spread = solve_exact(importance, 4, lam=1.0)
    assert packed == (1, 2, 3, 4)
    assert spread is not None and spacing_penalty(spread) < spacing_penalty(packed)


def test_planner_solves_128_layers_at_every_budget():
    # Its speed target (< 100 ms) is measured by benchmarks/bench_planner.py, not here: a
    # timed assertion fails on a busy machine without anything being wrong.
    importance = [((i * 37) % 101) / 101 for i in range(128)]
    for budget in (1, 16, 32, 64, 96, 120):
        removed = solve_exact(importance, budget, forbidden={0, 127}, max_run=None, lam=1.0)
        assert removed is not None and len(removed) == budget
        assert not {0, 127} & set(removed)


def scores_for(importances: dict[str, list[float]]) -> LayerScores:
    return LayerScores.from_importance(importances)


def test_regime_thresholds():
    assert regime_for(2, 20) == "low"
    assert regime_for(3, 20) == "low"
    assert regime_for(5, 20) == "moderate"
    assert regime_for(7, 20) == "moderate"
    assert regime_for(8, 20) == "high"


def test_domain_strategy_weights_domains():
    math = [0.9, 0.1, 0.9, 0.9, 0.9, 0.9]
    general = [0.9, 0.9, 0.9, 0.1, 0.9, 0.9]
    scores = scores_for({"math": math, "general": general})
    pick_math = solve(
        Constraints(6, 1, strategy="domain", weights={"math": 0.9, "general": 0.1}), scores
    )
    pick_general = solve(
        Constraints(6, 1, strategy="domain", weights={"math": 0.1, "general": 0.9}), scores
    )
    assert pick_math.removed == (1,) and pick_general.removed == (3,)
    assert pick_math.kept == (0, 2, 3, 4, 5)
    assert pick_math.regime == "moderate"


def test_auto_without_a_model_says_how_to_get_one():
    # `auto` measures candidates on the model (tests/test_search.py); from scores alone it
    # cannot, and says so instead of falling back to a ranking silently.
    scores = scores_for({"d": [0.9] + [0.1] * 8 + [0.9] * 7})
    with pytest.raises(SpecError) as err:
        solve(Constraints(16, 2, strategy="auto"), scores)
    assert err.value.diagnostics[0].code == "E342"
    assert "without `--scores`" in (err.value.diagnostics[0].help or "")


def test_spacing_weight_spreads_the_domain_ranking_at_high_budgets():
    importance = [0.9] + [0.1] * 8 + [0.9] * 7
    scores = scores_for({"d": importance})
    packed = solve(Constraints(16, 8, strategy="domain"), scores)
    spread = solve(Constraints(16, 8, strategy="domain", spacing_weight=2.0), scores)
    assert spacing_penalty(packed.removed) > 0 and spacing_penalty(spread.removed) == 0
    assert spread.regime == "high" and spread.spacing_weight == 2.0


def test_bi_pools_by_token_count():
    a = DomainStats(cos_all=(0.5, 0.9, 0.9), tokens=900)
    b = DomainStats(cos_all=(0.9, 0.9, 0.5), tokens=100)
    scores = LayerScores(num_layers=3, domains={"a": a, "b": b})
    assert solve(Constraints(3, 1, strategy="bi"), scores).removed == (1,)
    pooled = scores.pooled()
    assert pooled[0] == pytest.approx(0.9 * 0.5 + 0.1 * 0.1)


def test_last_and_uniform_respect_constraints():
    last = solve(Constraints(10, 3, strategy="last", keep_last=1), {}, 10)
    assert last.removed == (6, 7, 8)
    uniform = solve(Constraints(12, 3, strategy="uniform", keep_first=1, keep_last=1), {}, 12)
    assert uniform.removed == (2, 6, 9)
    capped = solve(Constraints(10, 4, strategy="last", keep_last=1, max_run=2), {}, 10)
    assert satisfies(capped.removed, 10, {9}, 2, None) and len(capped.removed) == 4


def test_angular_picks_least_distant_block():
    n = 6
    pairs = [[abs(i - j) * 0.2 for j in range(n + 1)] for i in range(n + 1)]
    pairs[2][4] = pairs[4][2] = 0.01
    stats = DomainStats(cos_all=(0.5,) * n, pair_angular_last=tuple(map(tuple, pairs)), samples=3)
    scores = LayerScores(num_layers=n, domains={"d": stats})
    assert solve(Constraints(n, 2, strategy="angular"), scores).removed == (2, 3)
    with pytest.raises(SpecError, match="contiguous block"):
        solve(Constraints(n, 2, strategy="angular", max_run=1), scores)


def test_manual_checks_kept_layers():
    sel = solve(Constraints(8, 2, strategy="manual", remove=(3, 5)), {}, 8)
    assert sel.removed == (3, 5)
    with pytest.raises(SpecError, match="`keep first 1` keeps it"):
        solve(Constraints(8, 1, strategy="manual", remove=(0,), keep_first=1), {}, 8)


def test_unknown_strategy_lists_valid_ones():
    with pytest.raises(SpecError) as err:
        solve(Constraints(8, 2, strategy="greedy"), {"d": [0.1] * 8})
    assert "unknown strategy" in str(err.value)
    assert all(name in err.value.render() for name in strategy_names())


def make_plan(**prune) -> Plan:
    spans = {
        "prune.budget": Span("x.prune", 12, 3, 12, 14),
        "prune.max_run": Span("x.prune", 13, 3, 13, 12),
    }
    return Plan(
        model=ModelSpec(source="tiny"),
        domains=(DomainSpec(name="math", data="/m.jsonl", weight=3.0),),
        prune=PruneSpec(**prune),
        spans=spans,
    )


def test_infeasible_budget_points_at_span():
    plan = make_plan(budget=Budget(layers=12), max_run=1)
    with pytest.raises(SpecError) as err:
        solve(plan, {"math": [0.1] * 20}, 20)
    diag = err.value.diagnostics[0]
    assert diag.message == "budget 12 with max_run 1 needs at least 23 layers; the model has 20"
    assert diag.span is not None and diag.span.line == 13


def test_all_problems_reported_at_once():
    plan = make_plan(budget=Budget(layers=9), max_run=1, min_gap=None, protect=(40,), keep_first=6)
    with pytest.raises(SpecError) as err:
        solve(plan, {"math": [0.1] * 12}, 12)
    messages = [d.message for d in err.value.diagnostics]
    assert len(messages) == 3, messages
    assert any("layer 40 does not exist" in m for m in messages)
    assert any("only 6 of 12 layers may be removed" in m for m in messages)


def test_budget_every_layer_is_an_error():
    with pytest.raises(SpecError, match="removes 8 of the model's 8 layers"):
        solve(make_plan(budget=Budget(layers=8)), {"math": [0.1] * 8}, 8)


def test_plan_scores_domain_mismatch():
    with pytest.raises(SpecError, match="no domain math"):
        solve(make_plan(budget=Budget(layers=2), strategy="domain"), {"general": [0.1] * 8}, 8)


def test_selection_json_round_trip():
    plan = make_plan(budget=Budget(percent=25.0), strategy="domain", spacing_weight=0.5)
    sel = solve(plan, {"math": [i / 10 for i in range(8)]}, 8)
    again = Selection.from_json(json.loads(json.dumps(sel.to_json())))
    assert again == sel
    assert sel.removed == (0, 2)  # the spacing term splits the run (0, 1)


def test_last_token_scope_uses_last_token_statistics():
    stats = DomainStats(cos_all=(0.1, 0.9, 0.5, 0.2), cos_last=(0.9, 0.1, 0.5, 0.2))
    scores = LayerScores(num_layers=4, domains={"d": stats})
    assert solve(Constraints(4, 1, strategy="domain"), scores).removed == (1,)
    assert solve(Constraints(4, 1, strategy="domain", tokens="last"), scores).removed == (0,)
    minimal = scores_for({"d": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(SpecError, match="last-token statistics"):
        solve(Constraints(4, 1, strategy="domain", tokens="last"), minimal)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 10),
    data=st.data(),
)
def test_solve_errors_exactly_when_infeasible(n, data):
    """The closed-form feasibility messages never reject a problem that has a solution."""
    budget = data.draw(st.integers(1, n - 1))
    keep_first = data.draw(st.integers(0, 2))
    keep_last = data.draw(st.integers(0, 2))
    protect = tuple(data.draw(st.sets(st.integers(0, n - 1), max_size=2)))
    max_run = data.draw(st.one_of(st.none(), st.integers(1, 3)))
    min_gap = data.draw(st.one_of(st.none(), st.integers(0, 2)))
    importance = data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    c = Constraints(
        n,
        budget,
        max_run=max_run,
        min_gap=min_gap,
        keep_first=keep_first,
        keep_last=keep_last,
        protect=protect,
        strategy="domain",
    )
    best = brute_force(importance, budget, c.forbidden, max_run, min_gap, 0.0)
    if best is None:
        with pytest.raises(SpecError):
            solve(c, {"d": importance})
    else:
        selection = solve(c, {"d": importance})
        assert selection.objective == pytest.approx(best, abs=1e-6)


def deepest_first(c: Constraints, scores: LayerScores | None) -> Selection:
    """A strategy plug-in for the test below: the `budget` deepest removable layers."""
    removable = [i for i in range(c.num_layers) if i not in c.forbidden]
    gone = tuple(sorted(removable[-c.budget :]))
    kept = tuple(i for i in range(c.num_layers) if i not in gone)
    return Selection(gone, kept, c.strategy, "deepest", c.regime, 0.0, (), 0.0, c.num_layers)


def test_a_registered_strategy_is_known_to_the_front_end_and_the_planner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Adding a strategy is one declaration: the front end accepts its name (and checks its
    needs), `solve` dispatches to its implementation, sweeps run it by default."""
    from prunec.plan.registry import strategies
    from prunec.plan.strategies import StrategyInfo, sweep_strategies
    from prunec.syntax import parse

    registry = strategies()
    info = StrategyInfo("deepest", "test plug-in", f"{__name__}:deepest_first", scores=True)
    monkeypatch.setattr(registry, "_found", {**registry.all(), "deepest": info})
    text = 'model "o/m"\n{domain}prune {{ budget 2 layers\n strategy deepest\n {extra}}}\n'
    plan = parse(text.format(domain='domain a { data "a" }\n', extra="keep last 1\n"))
    assert plan.prune.strategy == "deepest"
    assert solve(plan, {}, 8).removed == (5, 6)
    assert "deepest" in sweep_strategies()
    with pytest.raises(SpecError) as err:  # it declares that it needs calibration scores
        parse(text.format(domain="", extra=""))
    assert [d.code for d in err.value.diagnostics] == ["E225"]
    with pytest.raises(SpecError) as err:  # `search` is `auto`'s option, not its
        parse(text.format(domain='domain a { data "a" }\n', extra="search 4\n"))
    assert [d.code for d in err.value.diagnostics] == ["E232"]
    assert "use `strategy auto`" in err.value.render()
