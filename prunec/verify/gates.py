"""Retention gates: compare a pruned model's per-domain scores with the original's."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from prunec.errors import BuildError, VerifyError
from prunec.plan.model import Plan
from prunec.verify.evaluate import DomainEval, retention


@dataclass(frozen=True)
class GateRow:
    """One gate's outcome.

    original / pruned: the metric's value (accuracy fraction, or NLL in nats).
    retention: pruned/original for accuracy, original/pruned for NLL (1.0 = nothing lost).
    threshold: the retention the spec demands, a fraction in (0, 1].
    """

    domain: str
    metric: str
    original: float
    pruned: float
    retention: float
    threshold: float
    passed: bool


@dataclass(frozen=True)
class GateReport:
    """Every gate of a spec's `verify` block; `passed` is True when all of them passed."""

    rows: tuple[GateRow, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failed(self) -> tuple[GateRow, ...]:
        return tuple(row for row in self.rows if not row.passed)

    def render(self, width: int = 100) -> str:
        """The gate table as plain text (rich layout, no colour codes)."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title="verify: retention vs the unpruned model")
        for name, justify in (
            ("domain", "left"),
            ("metric", "left"),
            ("original", "right"),
            ("pruned", "right"),
            ("retention", "right"),
            ("threshold", "right"),
            ("result", "left"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in self.rows:
            fmt = _percent if row.metric == "accuracy" else _nats
            table.add_row(
                row.domain,
                row.metric,
                fmt(row.original),
                fmt(row.pruned),
                _percent(row.retention),
                f">= {_percent(row.threshold)}",
                "pass" if row.passed else "FAIL",
            )
        console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
        console.print(table)
        return console.export_text().rstrip()

    def raise_if_failed(self) -> None:
        """Raise VerifyError (exit code 4, carrying the table) when any gate failed."""
        if not self.passed:
            names = ", ".join(f"{r.domain} ({r.metric})" for r in self.failed)
            raise VerifyError(f"retention gate failed for {names}", report=self.render())


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _nats(value: float) -> str:
    return f"{value:.4f}"


def check_gates(
    plan: Plan, original: Mapping[str, DomainEval], pruned: Mapping[str, DomainEval]
) -> GateReport:
    """Check each `verify` gate of `plan` against per-domain evaluations of both models."""
    rows = []
    for gate in plan.verify.gates:
        if gate.domain not in original or gate.domain not in pruned:
            raise BuildError(f"no evaluation of domain `{gate.domain}` to check its gate against")
        before, after = original[gate.domain], pruned[gate.domain]
        kept = retention(before, after)[gate.metric]
        value = (lambda e: e.accuracy) if gate.metric == "accuracy" else (lambda e: e.nll)
        rows.append(
            GateRow(
                domain=gate.domain,
                metric=gate.metric,
                original=value(before),
                pruned=value(after),
                retention=kept,
                threshold=gate.threshold,
                # A tiny tolerance so that "keep 100%" passes when nothing changed but float
                # noise moved the NLL in its last digits.
                passed=kept >= gate.threshold - 1e-9,
            )
        )
    return GateReport(rows=tuple(rows))
