"""Progress of long stages on stderr: a rich bar on a terminal, timestamped lines elsewhere.

    with progress("emit hf", total=size, unit="bytes") as bar:
        ...
        bar.advance(len(block))

On a terminal the bar redraws itself (elapsed time even without a total) and vanishes when
the stage ends. When stderr is not a terminal (CI logs, Slurm, `2> file`) a background thread
writes one plain line every `interval` seconds (default 10, `$PRUNEC_PROGRESS_INTERVAL`) while
the stage runs, and a closing line if it wrote any: stages shorter than the interval stay
silent, long ones are never silent for long. Worker processes of a distributed launch (rank >
0) show nothing. No torch import; any stage can use it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_INTERVAL = 10.0


class Progress:
    """A running stage: `advance` / `update` record where it is; the display reads them."""

    def __init__(self, description: str, total: float | None, unit: str) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = 0.0
        self.note = ""
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def advance(self, amount: float = 1.0) -> None:
        """Add `amount` to the completed work."""
        self.update(completed=self.completed + amount)

    def update(self, completed: float | None = None, note: str | None = None) -> None:
        """Set the completed work and/or a short note shown after the description."""
        if completed is not None:
            self.completed = completed
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, description=self._label())

    def _label(self) -> str:
        return f"{self.description} {self.note}".rstrip()

    def line(self) -> str:
        """The plain-text status: description, amount done, rate and elapsed time."""
        elapsed = time.monotonic() - self.started
        parts = [self._label() + ":"]
        if self.total:
            done = f"{_amount(self.completed, self.unit)}/{_amount(self.total, self.unit)}"
            parts.append(f"{done} ({100 * self.completed / self.total:.0f}%)")
        elif self.completed:
            parts.append(_amount(self.completed, self.unit))
        if self.completed and elapsed > 0 and self.unit:
            parts.append(f"{_amount(self.completed / elapsed, self.unit)}/s")
        parts.append(f"{elapsed:.0f}s")
        return " ".join(parts)


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= scale:
                return f"{value / scale:.2f} {suffix}"
        return f"{value:.0f} B"
    text = f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    return f"{text} {unit}".rstrip()


def interval_seconds() -> float:
    """Seconds between plain progress lines (`$PRUNEC_PROGRESS_INTERVAL`, default 10)."""
    try:
        return max(0.05, float(os.environ.get("PRUNEC_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "") -> Iterator[Progress]:
    """Show the progress of one stage while the block runs (see the module docstring).

    total: the amount of work (None: unknown, only elapsed time is shown). unit: "bytes"
    formats amounts as kB/MB/GB; any other text is appended to plain numbers.
    """
    from prunec.distributed import is_worker

    state = Progress(description, total, unit)
    if is_worker():  # one process of a distributed launch reports: rank 0
        yield state
        return
    if _stderr_is_terminal():
        with _rich_bar(state):
            yield state
        return
    stop = threading.Event()
    printed = threading.Event()
    stream = sys.stderr  # the stage's own stderr, even while a library's output is captured

    def tick() -> None:
        while not stop.wait(interval_seconds()):
            _write(state.line(), stream)
            printed.set()

    ticker = threading.Thread(target=tick, name="prunec-progress", daemon=True)
    ticker.start()
    try:
        yield state
    finally:
        stop.set()
        ticker.join()
        if printed.is_set():
            _write(state.line() + " (done)", stream)


def _write(text: str, stream: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=stream, flush=True)


@contextmanager
def _rich_bar(state: Progress) -> Iterator[None]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    columns: list[Any] = [TextColumn("[bold]{task.description}")]
    if state.total:
        columns.append(BarColumn())
        columns += (
            [DownloadColumn(), TransferSpeedColumn()]
            if state.unit == "bytes"
            else [MofNCompleteColumn()]
        )
    columns.append(TimeElapsedColumn())
    bar = RichProgress(*columns, console=Console(file=sys.stderr), transient=True)
    with bar:
        state._bar = bar
        state._task = bar.add_task(
            state._label(), total=state.total, completed=int(state.completed)
        )
        try:
            yield
        finally:
            state._bar = None
