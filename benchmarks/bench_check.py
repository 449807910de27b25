"""Wall time of `prunec check specs/math_tutor.prune` (median of several fresh processes).

The target is well under 0.5 s: `check` must not import torch, transformers or onnx.
Usage: python benchmarks/bench_check.py [--runs N] [SPEC]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = 0.5


def time_check(spec: Path, runs: int) -> tuple[list[float], list[float]]:
    """(wall, CPU) seconds per run of the console script, each in a fresh interpreter.

    CPU time (user + system of the child) is printed too because wall time on a shared
    machine includes waiting for a core.
    """
    script = Path(sys.executable).parent / "prunec"
    command = (
        [str(script), "check", str(spec)]
        if script.exists()
        else [sys.executable, "-m", "prunec.cli", "check", str(spec)]
    )
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(f"check failed ({proc.returncode}):\n{proc.stderr}")
    return walls, cpus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", nargs="?", default=str(ROOT / "specs" / "math_tutor.prune"))
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    time_check(Path(args.spec), 1)  # warm the OS file cache and .pyc files
    times, cpus = time_check(Path(args.spec), args.runs)
    median = statistics.median(times)
    print(
        f"prunec check {Path(args.spec).relative_to(ROOT)}: median {median:.3f} s wall over "
        f"{args.runs} runs (min {min(times):.3f}, max {max(times):.3f}; target < {TARGET_S} s); "
        f"median CPU {statistics.median(cpus):.3f} s"
    )
    return 0 if median < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
