"""Exact planner time for a 128-layer stack, every budget, with spacing (target < 100 ms).

.venv/bin/python benchmarks/bench_planner.py
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time

from prunec.errors import SpecError
from prunec.planning import Constraints, solve


def main(num_layers: int = 128) -> None:
    rng = random.Random(0)
    scores = {
        "math": [rng.random() for _ in range(num_layers)],
        "general": [rng.random() for _ in range(num_layers)],
    }
    solve(Constraints(num_layers, 8, strategy="domain"), scores)  # warm-up (numpy)
    cases = {
        "domain": {},
        "domain, spacing_weight 2": {"spacing_weight": 2.0},
        "domain, max_run 3, keep 1/1": {"max_run": 3, "keep_first": 1, "keep_last": 1},
        "domain, min_gap 1": {"min_gap": 1},
    }
    report = {}
    for name, extra in cases.items():
        options = {"strategy": "domain", **extra}
        times = []
        for budget in range(1, num_layers):
            constraints = Constraints(
                num_layers, budget, weights={"math": 0.7, "general": 0.3}, **options
            )
            start = time.perf_counter()
            with contextlib.suppress(SpecError):  # infeasible budgets (min_gap 1 above 64)
                solve(constraints, scores)
            times.append(time.perf_counter() - start)
        report[name] = {
            "max_ms": round(max(times) * 1e3, 2),
            "median_ms": round(statistics.median(times) * 1e3, 2),
        }
    print(
        json.dumps(
            {"num_layers": num_layers, "budgets": f"1..{num_layers - 1}", **report}, indent=2
        )
    )


if __name__ == "__main__":
    main()
