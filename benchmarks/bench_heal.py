"""What `heal linear` costs: time per healed run against one scoring pass, and peak memory
with 1x and 4x the calibration samples.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_heal.py [--layers 16] [--samples 32]

Builds the random-weights testbed-architecture VLM of `bench_search.py` (CLIP vision tower +
Llama decoder) with `--samples` and 4 x `--samples` synthetic records per domain, removes two
separate runs (`--remove`), and for each sample count measures:

1. one scoring pass (`prunec.scoring.score`, fresh cache);
2. the measured objective's preparation (one unpruned pass; shared with `auto` when it runs);
3. healing: fitting every run (`LinearHealer.fit_run`) and measuring it on the held-out part
   (`heal_selection`), timed per healed run.

Memory: the peak resident-set growth while fitting (sampled every 5 ms), which should not grow
with the number of samples (the fit accumulates two hidden x hidden float64 matrices), and
the same for the whole healing step. Target: fit time per run / scoring pass <= 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SPEC = """\
model "{model}"

domain math {{
  data    "{data}/math_calib.jsonl"
  samples {samples}
  weight  0.7
}}

domain general {{
  data    "{data}/general_calib.jsonl"
  samples {samples}
  weight  0.3
}}

prune {{
  remove {remove}
  heal   linear
}}
"""


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def peak_growth(work: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak RSS growth in bytes over the RSS before) of `work()`."""
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tick = time.perf_counter()
    try:
        result = work()
    finally:
        seconds = time.perf_counter() - tick
        done.set()
        thread.join()
    return result, seconds, max(peak[0], _rss()) - start


def _random_testbed() -> Callable[..., tuple[Path, Path]]:
    path = Path(__file__).with_name("bench_search.py")
    spec = importlib.util.spec_from_file_location("bench_search", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.random_testbed  # type: ignore[no-any-return]


def run(root: Path, samples: int, args: argparse.Namespace) -> dict[str, Any]:
    from prunec.arch.loading import load_model
    from prunec.planning.heal import heal_selection, healer_for, removed_runs
    from prunec.planning.measure import MeasuredObjective
    from prunec.scoring import score
    from prunec.syntax import parse

    model_dir, data_dir = _random_testbed()(root, args.layers, args.hidden, samples)
    remove = [int(i) for i in args.remove.split(",")]
    text = SPEC.format(
        model=model_dir, data=data_dir, samples=samples, remove=", ".join(map(str, remove))
    )
    plan = parse(text)
    loaded = load_model(plan.model)
    tick = time.perf_counter()
    score(plan, loaded, cache_dir=root / "score-cache")
    scoring = time.perf_counter() - tick
    objective, prepare_s, prepare_mem = peak_growth(
        lambda: MeasuredObjective.from_plan(plan, loaded)
    )
    healer = healer_for(plan, loaded, lambda: objective)
    runs = [r for r in removed_runs(remove) if r[0] > 0]
    _, fit_s, fit_mem = peak_growth(lambda: [healer.fit_run(remove, r, {}) for r in runs])
    healer._cache.clear()  # the whole step again, fits included
    (record, _), heal_s, heal_mem = peak_growth(
        lambda: heal_selection(healer, objective, remove, plan.prune.heal)
    )
    return {
        "samples_per_domain": samples,
        "scoring_pass_s": round(scoring, 3),
        "objective_prepare_s": round(prepare_s, 3),
        "fit_s": round(fit_s, 3),
        "heal_step_s": round(heal_s, 3),
        "healed_runs": len(runs),
        "fit_per_run_over_scoring": round(fit_s / len(runs) / scoring, 3),
        "heal_step_per_run_over_scoring": round(heal_s / len(runs) / scoring, 3),
        "fit_peak_rss_growth_mib": round(fit_mem / 2**20, 1),
        "heal_step_peak_rss_growth_mib": round(heal_mem / 2**20, 1),
        "objective_prepare_peak_rss_growth_mib": round(prepare_mem / 2**20, 1),
        "objective": [round(record.before, 4), round(record.after, 4)],
        "statuses": [r.status for r in record.runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--samples", type=int, default=32, help="records per domain (1x)")
    parser.add_argument("--remove", default="5,6,10,11", help="removed layers (two runs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-heal-"))
    print(f"torch threads {torch.get_num_threads()}, {args.layers} layers, hidden {args.hidden}")
    one = run(work / "x1", args.samples, args)
    four = run(work / "x4", 4 * args.samples, args)
    print(json.dumps({"x1": one, "x4": four}, indent=2))
    for label, result in (("1x", one), ("4x", four)):
        print(
            f"{label}: fit per run / scoring pass {result['fit_per_run_over_scoring']:.2f}; "
            f"fit + measure per run / scoring pass {result['heal_step_per_run_over_scoring']:.2f}"
        )
    print(
        "peak RSS growth while fitting, 4x / 1x samples: "
        f"{four['fit_peak_rss_growth_mib']} / {one['fit_peak_rss_growth_mib']} MiB"
    )


if __name__ == "__main__":
    main()
