"""What `auto`'s measured search costs: a default `auto` plan against one scoring pass.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_search.py [--layers 24] [--samples 64]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_search.py --testbed build/testbed

By default it builds a randomly initialised VLM with the testbed's architecture (CLIP vision
tower + Llama decoder, `--layers` deep, `--hidden` wide) and writes `--samples` synthetic
math and general records per domain (image, question, answer); `--testbed DIR` uses a trained
testbed (`python -m prunec.testbed`) and its calibration files instead. Then, with a fresh
cache each time:

1. one scoring pass (`prunec.scoring.score`): the best of `--repeats` runs;
2. a default `auto` plan from the scores: the measured search (the unpruned pass included);
3. the same plan again (a cache hit: no forward pass).

Prints the ratios search / scoring pass and (scoring + search) / scoring pass (the whole
`auto` plan from scratch), with what the search did (evaluations, early stops, layer calls).
Target: (scoring + search) / scoring <= 20 with the default `search 48`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def random_testbed(root: Path, layers: int, hidden: int, samples: int) -> tuple[Path, Path]:
    """A random-weights testbed-architecture model and synthetic calibration data."""
    from prunec.testbed import write_jsonl
    from prunec.testbed.processor import build_processor
    from prunec.testbed.synth import sample
    from prunec.testbed.train import TrainConfig, build_model

    processor = build_processor()
    model = build_model(TrainConfig(num_layers=layers, hidden_size=hidden), processor)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    rng = random.Random(0)
    for domain in ("math", "general"):
        rows = [sample(domain, rng) for _ in range(samples)]
        write_jsonl(rows, root / "data" / f"{domain}_calib.jsonl", f"{domain}_calib")
    return root / "model", root / "data"


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
  budget 25%
  keep   first 1, last 1
  {search}
}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--samples", type=int, default=64, help="records per domain")
    parser.add_argument("--search", type=int, default=None, help="default: the spec default")
    parser.add_argument(
        "--repeats", type=int, default=3, help="scoring passes (median; the last after)"
    )
    parser.add_argument("--testbed", type=Path, default=None, help="a trained testbed root")
    args = parser.parse_args()

    from prunec.arch.loading import load_model
    from prunec.planning import SearchContext, solve
    from prunec.scoring import score
    from prunec.syntax import parse

    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    if args.testbed is not None:
        model_dir, data_dir = args.testbed / "model", args.testbed / "data"
    else:
        model_dir, data_dir = random_testbed(work, args.layers, args.hidden, args.samples)
    search = f"search {args.search}" if args.search else ""
    plan = parse(SPEC.format(model=model_dir, data=data_dir, samples=args.samples, search=search))
    loaded = load_model(plan.model)
    print(
        f"model: {loaded.num_layers} decoder layers, "
        f"{sum(p.numel() for p in loaded.model.parameters()) / 1e6:.1f}M parameters, "
        f"{args.samples} calibration records per domain, torch threads "
        f"{torch.get_num_threads()}"
    )
    score_times = []

    def scoring_pass() -> Any:
        tick = time.perf_counter()
        scores = score(plan, loaded, cache_dir=work / f"score-{len(score_times)}")
        score_times.append(time.perf_counter() - tick)
        return scores

    for _ in range(max(1, args.repeats - 1)):
        scores = scoring_pass()
    cache = work / "search-cache"
    context = SearchContext(plan, loaded, cache_dir=cache, progress=False)
    tick = time.perf_counter()
    selection = solve(plan, scores, context=context)
    searching = time.perf_counter() - tick
    objective = context.objective()
    tick = time.perf_counter()
    again = solve(plan, scores, context=SearchContext(plan, loaded, cache_dir=cache))
    cached = time.perf_counter() - tick
    if args.repeats > 1:
        scoring_pass()
    scoring = statistics.median(score_times)
    summary = selection.search
    assert summary is not None and again.removed == selection.removed
    batches = objective.batch_count()
    work = objective.counters.forwards / batches + objective.counters.layer_calls / (
        loaded.num_layers * batches
    )
    stopped_early = sum(not c.complete for c in summary.candidates)
    print(
        json.dumps(
            {
                "scoring_pass_s": [round(t, 2) for t in score_times],
                "search_s": round(searching, 2),
                "cached_replan_s": round(cached, 3),
                "evaluations": summary.evaluations,
                "budget": summary.budget,
                "stopped": summary.stopped,
                "stopped_early": stopped_early,
                "finalists": len(summary.finalists),
                "direct_layer_loop": summary.direct,
                "layer_calls": objective.counters.layer_calls,
                "full_forwards": objective.counters.forwards,
                "cached_boundaries": [len(b) for b in objective.cached_boundaries],
                "removed": list(selection.removed),
            },
            indent=2,
        )
    )
    print(f"search / scoring pass:              {searching / scoring:.1f}")
    print(f"(scoring + search) / scoring pass:  {(scoring + searching) / scoring:.1f}")
    print(f"search work in scoring passes:      {work:.1f} (load-independent)")


if __name__ == "__main__":
    main()
