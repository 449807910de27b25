"""onnxruntime session options shared by the runner, parity checks and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with honest threading: no spin-waiting, one inter-op thread.

    Spinning threads burn the cores other processes (and the benchmark's PyTorch side)
    need, which skews latency on small machines.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
