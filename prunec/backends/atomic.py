"""Atomic output directories: a target appears complete or not at all.

A build writes into a hidden temporary directory beside the target and renames it into place
only after every file is written and every self-check passed. A failed or interrupted build
removes its temporary directory and leaves any earlier target untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _stage_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def publish(staged: Path, target: Path) -> None:
    """Move a complete staged directory onto `target`, replacing an earlier one.

    The old target is first renamed aside, so at every instant either the old or the new
    complete directory sits at `target` (except between two renames on the same filesystem).
    """
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    try:
        os.replace(staged, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; remove it if the block fails.

    The caller publishes with `publish(staged, target)` once every check passed (publishing
    is separate so several targets of one build can all be checked before any goes live).
    """
    staged = _stage_dir(target)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Stage into a temporary directory and publish it at `target` when the block succeeds."""
    with staging_directory(target) as staged:
        yield staged
        publish(staged, target)
