"""Verification: per-domain evaluation, retention, and the spec's `verify` gates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunec.data import Record, read_records
from prunec.verify.evaluate import DomainEval, evaluate, normalize_answer, retention
from prunec.verify.gates import GateReport, GateRow, check_gates

__all__ = [
    "DomainEval",
    "GateReport",
    "GateRow",
    "Record",
    "check_gates",
    "evaluate",
    "evaluate_domains",
    "normalize_answer",
    "read_records",
    "retention",
]


def evaluate_domains(
    model: Any,
    processor: Any,
    datasets: Mapping[str, Sequence[Record]] | Mapping[str, Path],
    *,
    limit: int | None = None,
    max_new_tokens: int = 8,
) -> dict[str, DomainEval]:
    """`evaluate` on each domain; datasets are record lists or JSONL paths (first `limit`)."""
    out: dict[str, DomainEval] = {}
    for name, data in datasets.items():
        records = read_records(data, limit) if isinstance(data, Path) else list(data)[:limit]
        out[name] = evaluate(model, processor, records, max_new_tokens=max_new_tokens)
    return out
