"""onnxruntime session options shared by the runner, parity checks and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class GraphRunError(ValueError):
    """onnxruntime could not load or run one graph; the message names the graph file.

    A ValueError like the runner's other complaints about an artifact, so callers that
    report those (`prunec run`, the ONNX target's parity checks) report this one too.
    """


def _ort_errors() -> tuple[type[BaseException], ...]:
    # onnxruntime's status exceptions share no base class besides Exception
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = [
        *("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError"),
        *("RuntimeException", "InvalidProtobuf", "NotImplemented", "InvalidGraph", "EPFail"),
    ]
    return tuple(getattr(state, name) for name in names if hasattr(state, name))


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with honest threading: no spin-waiting, one inter-op thread.

    Spinning threads burn the cores other processes (and the benchmark's PyTorch side)
    need, which skews latency on small machines. Raises GraphRunError when onnxruntime
    rejects the file.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # failures come back as exceptions (GraphRunError); the log line would repeat them
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _ort_errors() as err:
        raise GraphRunError(f"onnxruntime cannot load {Path(path).name}: {_reason(err)}") from err


def run_graph(
    session: ort.InferenceSession, path: Path, feed: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """`session.run` on every output; an onnxruntime failure is a GraphRunError naming `path`."""
    try:
        return session.run(None, feed)  # type: ignore[no-any-return]
    except _ort_errors() as err:
        raise GraphRunError(f"{Path(path).name} failed in onnxruntime: {_reason(err)}") from err
