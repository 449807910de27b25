"""Progress off a terminal: timestamped plain lines at a modest rate, silence for short stages."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from prunec.progress import progress

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] ")


def test_long_stages_print_timestamped_lines_at_the_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("PRUNEC_PROGRESS_INTERVAL", "0.1")
    with progress("writing weights", total=4e9, unit="bytes") as bar:
        for _ in range(4):
            time.sleep(0.12)
            bar.advance(1e9)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 6, lines  # one per interval, not one per update
    assert all(LINE.match(line) for line in lines), lines
    assert "writing weights: " in lines[0] and "/4.00 GB (" in lines[0]
    assert lines[-1].endswith("(done)") and "4.00 GB/4.00 GB (100%)" in lines[-1]


def test_stages_without_a_total_report_elapsed_time(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("PRUNEC_PROGRESS_INTERVAL", "0.05")
    with progress("self-check") as bar:
        bar.update(note="(reloading)")
        time.sleep(0.2)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.match(r"^\[[\d:]+\] self-check \(reloading\): \d+s", s) for s in lines)


def test_short_stages_stay_silent(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv("PRUNEC_PROGRESS_INTERVAL", raising=False)  # the default: 10 s
    with progress("loading", total=3) as bar:
        bar.advance(3)
    assert capsys.readouterr().err == ""
