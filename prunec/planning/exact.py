"""The exact layer-selection solver: a dynamic program over the decoder stack.

Problem. Given per-layer importance I(l) >= 0 (any real works), choose the set R of exactly k
layers to remove, never removing a forbidden layer (protected, keep-first/last), minimising

    sum_{l in R} I(l)  +  lam * spacing(R)

subject to: no run of consecutive removed layers longer than `max_run`, and at least `min_gap`
kept layers between any two removed layers.

The spacing term. spacing(R) = sum over maximal runs of consecutive removed layers of
r * (r - 1) / 2, i.e. each removed layer pays one unit per removed layer directly before it in
the same run. Why this term: (1) it is zero exactly when no two removed layers touch, so at low
budgets it never fights the ranking; (2) it is convex in the run length, so for a fixed k it is
minimised by spreading removals into as many, as equal runs as the stack allows: the survivors
end up evenly spaced, which is what the paper finds matters at high budgets; (3) it is additive
in "length of the current run", so a DP whose state is (layers seen, layers removed, current
run length) handles it exactly. A "deviation of kept gaps from the even gap" term would need the
gap target in the state as well and buys nothing over (2).

Complexity: O(L * k * S) with S = min(max_run, k) + 1 (or min_gap + 1) states, vectorised over
(k, S) with numpy: one layer is a handful of array operations, so 128 layers solve in a few ms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def spacing_penalty(removed: Iterable[int]) -> int:
    """sum over maximal runs of consecutive removed layers of r * (r - 1) / 2."""
    total = 0
    run = 0
    previous = None
    for layer in sorted(removed):
        run = run + 1 if previous is not None and layer == previous + 1 else 1
        total += run - 1
        previous = layer
    return total


def objective(importance: Sequence[float], removed: Iterable[int], lam: float) -> float:
    """The planner's objective for one candidate set (used by tests and reports)."""
    chosen = sorted(removed)
    return float(sum(importance[i] for i in chosen) + lam * spacing_penalty(chosen))


def satisfies(
    removed: Iterable[int],
    num_layers: int,
    forbidden: Iterable[int] = (),
    max_run: int | None = None,
    min_gap: int | None = None,
) -> bool:
    """True when `removed` respects every structural constraint (not the budget)."""
    chosen = sorted(set(removed))
    if any(i < 0 or i >= num_layers for i in chosen) or set(chosen) & set(forbidden):
        return False
    run = 0
    for a, b in zip([None, *chosen], chosen, strict=False):
        run = run + 1 if a is not None and b == a + 1 else 1
        if max_run is not None and run > max_run:
            return False
        if a is not None and min_gap and b - a - 1 < min_gap:
            return False
    return True


def solve_exact(
    importance: Sequence[float],
    budget: int,
    *,
    forbidden: Iterable[int] = (),
    max_run: int | None = None,
    min_gap: int | None = None,
    lam: float = 0.0,
) -> tuple[int, ...] | None:
    """The optimal removed set (sorted), or None when no set satisfies the constraints.

    Ties between equally good sets are broken deterministically.
    """
    num_layers = len(importance)
    if budget < 0 or budget > num_layers:
        return None
    if budget == 0:
        return ()
    if max_run is not None and max_run < 1:
        return None
    allowed = np.ones(num_layers, dtype=bool)
    for i in forbidden:
        if 0 <= i < num_layers:
            allowed[i] = False
    cost = np.asarray(importance, dtype=np.float64)
    if min_gap:
        return _solve_gap(cost, budget, allowed, min_gap)
    run_cap = budget if max_run is None else max(0, min(max_run, budget))
    return _solve_runs(cost, budget, allowed, run_cap, lam)


def _solve_runs(
    cost: np.ndarray, budget: int, allowed: np.ndarray, run_cap: int, lam: float
) -> tuple[int, ...] | None:
    """DP state: table[j, r] = best cost with j removed so far and a current run of r."""
    states = run_cap + 1
    table = np.full((budget + 1, states), np.inf)
    table[0, 0] = 0.0
    # extending a run of length r by one more removed layer costs lam * r (see module doc)
    run_cost = lam * np.arange(states - 1, dtype=np.float64)
    keep_from: list[np.ndarray] = []
    for layer in range(len(cost)):
        new = np.full_like(table, np.inf)
        keep_from.append(np.argmin(table, axis=1))
        new[:, 0] = table[np.arange(budget + 1), keep_from[-1]]
        if allowed[layer] and states > 1:
            new[1:, 1:] = table[:-1, :-1] + cost[layer] + run_cost
        table = new
    end_run = int(np.argmin(table[budget]))
    if not np.isfinite(table[budget, end_run]):
        return None
    removed: list[int] = []
    removed_so_far, run = budget, end_run
    for layer in range(len(cost) - 1, -1, -1):
        if run > 0:
            removed.append(layer)
            removed_so_far, run = removed_so_far - 1, run - 1
        else:
            run = int(keep_from[layer][removed_so_far])
    return tuple(sorted(removed))


def _solve_gap(
    cost: np.ndarray, budget: int, allowed: np.ndarray, gap: int
) -> tuple[int, ...] | None:
    """DP with min_gap >= 1: state s = kept layers since the last removal, capped at `gap`.

    Runs are then always of length 1, so the spacing term is identically zero.
    """
    table = np.full((budget + 1, gap + 1), np.inf)
    table[0, gap] = 0.0  # nothing removed yet: the next removal is free to happen
    saturated_from: list[np.ndarray] = []
    for layer in range(len(cost)):
        new = np.full_like(table, np.inf)
        new[:, 1:gap] = table[:, 0 : gap - 1]
        pair = table[:, gap - 1 : gap + 1]
        choice = np.argmin(pair, axis=1)
        saturated_from.append(choice + gap - 1)
        new[:, gap] = pair[np.arange(budget + 1), choice]
        if allowed[layer]:
            new[1:, 0] = table[:-1, gap] + cost[layer]
        table = new
    end_state = int(np.argmin(table[budget]))
    if not np.isfinite(table[budget, end_state]):
        return None
    removed: list[int] = []
    removed_so_far, state = budget, end_state
    for layer in range(len(cost) - 1, -1, -1):
        if state == 0:
            removed.append(layer)
            removed_so_far, state = removed_so_far - 1, gap
        elif state < gap:
            state -= 1
        else:
            state = int(saturated_from[layer][removed_so_far])
    return tuple(sorted(removed))
