"""Data parallelism over `torch.distributed`: which process this is, its shard, the sums.

Launched by `torchrun` or `accelerate launch` (both set WORLD_SIZE, RANK, LOCAL_RANK and the
rendezvous address), every process loads its own copy of the model and runs the same build.
Where the calibration forward passes are (scoring, the measured objective of `auto`, the
ablation order of `iterative`), each process takes a deterministic shard (whole batches,
round-robin by batch index) and the per-process running sums are added up by one float64
all-reduce, so every process holds the single-process result (up to the order of float
additions) and the rest of the build (solving, searching) runs identically everywhere.
Only rank 0 writes caches, targets and the lockfile, and prints; the other ranks meet it at a
barrier once the layers to remove are known, and exit.

Every all-reduce carries one failure flag per rank: a process whose share failed still
joins the reduction (with zeros), re-raises its own error, and every other process raises a
BuildError naming it, so one bad batch stops the whole job with a clear message instead of a
hang. (A process that dies outright is stopped by the launcher, which then stops the others.)

The reductions go over gloo on CPU float64 tensors (a few kB per call); CUDA models get an
NCCL backend beside it for anything else. Without WORLD_SIZE > 1 nothing here imports torch
or does any work: the single-process path is unchanged.

torch.distributed is used directly rather than through accelerate's `PartialState`: prunec
needs its process-group setup, `all_reduce` and `barrier`, nothing of accelerate's training
wrappers, and launching through `accelerate launch` sets the same variables as torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from prunec.errors import BuildError

T = TypeVar("T")


def world_size() -> int:
    """Processes in this launch (WORLD_SIZE; 1 when not launched by torchrun / accelerate)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank (RANK; 0 when not launched by torchrun / accelerate)."""
    return _env_int("RANK", 0)


def is_worker() -> bool:
    """True on every process but rank 0 of a multi-process launch: it computes, never writes."""
    return world_size() > 1 and rank() > 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        raise BuildError(f"${name} must be an integer, not `{os.environ[name]}`") from None


def placed_device(device: str) -> str:
    """The device this process loads the model on: under a multi-process launch a bare
    `cuda` means this process's own GPU (`cuda:LOCAL_RANK`); `auto` (one model spread over
    every device) is refused there, since each process holds a whole copy."""
    if world_size() <= 1:
        return device
    if device == "auto":
        raise BuildError(
            "`device auto` spreads one model over every device, but each of the "
            f"{world_size()} launched processes holds its own copy: use `device cuda` (process "
            "N then uses cuda:LOCAL_RANK), or run one process for a model larger than a GPU"
        )
    if device == "cuda":
        return f"cuda:{_env_int('LOCAL_RANK', 0)}"
    return device


@dataclass(frozen=True)
class Group:
    """This process's place in the launch, and the collectives prunec uses."""

    rank: int
    size: int
    process_group: Any = None  # the gloo group the CPU reductions use (None: the default)

    def owns(self, index: int) -> bool:
        """Whether batch number `index` (in the single-process order) is this process's."""
        return index % self.size == self.rank

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of `items`: every size-th one, starting at its rank."""
        return list(items[self.rank :: self.size])

    def run_and_sum(self, what: str, size: int, compute: Callable[[], Any]) -> np.ndarray:
        """Run this process's share (`compute` returns `size` floats), then add every
        process's result elementwise in float64. A failure anywhere raises on every process:
        its own exception where it happened, a BuildError naming the rank elsewhere."""
        error: Exception | None = None
        try:
            local = np.asarray(compute(), dtype=np.float64).reshape(-1)
            if local.size != size:  # a bug, not a user error: say what disagreed
                raise RuntimeError(f"{what}: {local.size} values for a {size}-value reduction")
        except Exception as exc:
            error, local = exc, np.zeros(size)
        import torch
        import torch.distributed as dist

        flags = np.zeros(self.size)
        flags[self.rank] = 1.0 if error is not None else 0.0
        buffer = torch.from_numpy(np.concatenate([local, flags]))
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.process_group)
        if error is not None:
            raise error
        failed = [r for r, flag in enumerate(buffer[size:].tolist()) if flag > 0]
        if failed:
            ranks = ", ".join(str(r) for r in failed)
            raise BuildError(
                f"{what} failed on rank {ranks} of {self.size} (its own error is printed by "
                "that process); stopping every process"
            )
        return buffer[:size].numpy().copy()

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier(group=self.process_group)


_GROUP: Group | None = None


def group() -> Group | None:
    """The process group of this launch, set up on first use; None in a single process."""
    global _GROUP
    if world_size() <= 1:
        return None
    if _GROUP is None:
        _GROUP = _init()
    return _GROUP


def _init() -> Group:
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise BuildError("this torch build has no torch.distributed; launch one process")
    try:
        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
            # CPU tensors (prunec's reductions) over gloo; CUDA ones, if any, over NCCL.
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise BuildError(
            f"cannot join the process group of {world_size()} processes "
            f"(MASTER_ADDR={os.environ.get('MASTER_ADDR', '?')}, "
            f"MASTER_PORT={os.environ.get('MASTER_PORT', '?')}): {exc}"
        ) from exc
    if dist.get_world_size() != world_size() or dist.get_rank() != rank():
        raise BuildError(
            f"the process group ({dist.get_world_size()} processes, this one rank "
            f"{dist.get_rank()}) disagrees with WORLD_SIZE={world_size()} RANK={rank()}"
        )
    pg = None
    if "gloo" not in str(dist.get_backend()):  # set up by someone else, e.g. NCCL only
        pg = dist.new_group(backend="gloo")
    return Group(rank=rank(), size=world_size(), process_group=pg)


def agreed(found: T | None, what: str = "the cache") -> T | None:
    """`found` (a cache entry) when every process found one, else None everywhere: caches are
    per machine on a multi-node launch, and all processes must take the same path."""
    current = group()
    if current is None:
        return found
    hits = current.run_and_sum(f"reading {what}", 1, lambda: [float(found is not None)])
    return found if int(hits[0]) == current.size else None


def finish() -> bool:
    """Meet every process once the distributed work is done. True on worker ranks (they
    should stop now), False on rank 0 and in a single process (carry on)."""
    current = group()
    if current is None:
        return False
    current.barrier()
    return current.rank > 0


def shutdown() -> None:
    """Leave the process group (at exit; harmless when there is none)."""
    global _GROUP
    if _GROUP is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _GROUP = None
