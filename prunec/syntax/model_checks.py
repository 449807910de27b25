"""Checks that need the model's decoder layer count, and warnings about files not there yet."""

from __future__ import annotations

import os
from pathlib import Path

from prunec.errors import Diagnostic, Span
from prunec.plan.model import Plan
from prunec.syntax.lower import is_dir, is_file


def validate_against_model(plan: Plan, num_layers: int) -> list[Diagnostic]:
    """Every problem of `plan` that shows only once the model has `num_layers` decoder layers.

    Budget too large, out-of-range `remove`/`protect` indices, `keep last` hitting a removed
    layer, too few removable layers, and spacing limits that cannot be met. Each diagnostic
    points at the offending span recorded in `plan.spans`.
    """
    prune = plan.prune
    out: list[Diagnostic] = []
    budget_span = plan.span("prune.budget") or plan.span("prune")
    k = prune.budget.resolve(num_layers) if prune.budget is not None else None
    if prune.remove is not None:
        k = len(prune.remove)
    if prune.budget is not None and (b := prune.budget.resolve(num_layers)) >= num_layers:
        written = (
            f"{prune.budget.percent:g}%" if prune.budget.percent is not None else f"{b} layers"
        )
        out.append(
            Diagnostic(
                "E301",
                f"budget {written} removes {b} of the model's {num_layers} layers",
                budget_span,
                help=f"the budget must leave at least one layer; at most {num_layers - 1}",
            )
        )
        return out + _index_checks(plan, num_layers)
    if prune.budget is not None and prune.budget.percent is not None and prune.remove is not None:
        b = prune.budget.resolve(num_layers)
        if b != len(prune.remove):
            out.append(
                Diagnostic(
                    "E306",
                    f"budget {prune.budget.percent:g}% of {num_layers} layers is {b}, "
                    f"but `remove` lists {len(prune.remove)}",
                    budget_span,
                    help="drop the `budget` line; `remove` already says how many",
                )
            )
    out += _index_checks(plan, num_layers)
    if k is not None and prune.remove is None:
        out += _capacity_checks(plan, num_layers, k)
    return out


def _index_checks(plan: Plan, num_layers: int) -> list[Diagnostic]:
    prune = plan.prune
    out: list[Diagnostic] = []
    for key, indices in (("protect", prune.protect), ("remove", prune.remove or ())):
        for position, index in enumerate(indices):
            span = plan.span(f"prune.{key}.{position}")
            if index >= num_layers:
                out.append(
                    Diagnostic(
                        "E302",
                        f"layer {index} does not exist; the model has {num_layers} layers "
                        f"(0 to {num_layers - 1}; indices are 0-based)",
                        span,
                    )
                )
            elif key == "remove" and index >= num_layers - prune.keep_last:
                out.append(
                    Diagnostic(
                        "E305",
                        f"layer {index} is removed but `keep last {prune.keep_last}` keeps it",
                        span,
                    )
                )
    return out


def _capacity_checks(plan: Plan, num_layers: int, k: int) -> list[Diagnostic]:
    prune = plan.prune
    span = plan.span("prune.budget") or plan.span("prune")
    window = max(num_layers - prune.keep_first - prune.keep_last, 0)
    inside = {i for i in prune.protect if prune.keep_first <= i < num_layers - prune.keep_last}
    removable = window - len(inside)
    if removable < k:
        return [
            Diagnostic(
                "E303",
                f"the budget removes {k} layers but `keep` and `protect` leave only "
                f"{removable} of the {num_layers} removable",
                span,
            )
        ]
    # Removed layers come in runs of at most `run`, separated by at least `gap` kept layers.
    min_gap = prune.min_gap or 0
    run = 1 if min_gap >= 1 else (prune.max_run or k)
    gap = max(min_gap, 1)
    runs = -(-k // run)
    needed = k + (runs - 1) * gap
    if needed > window:
        limits = " ".join(
            f"{name} {value}"
            for name, value in (("max_run", prune.max_run), ("min_gap", prune.min_gap))
            if value is not None
        )
        where = "" if window == num_layers else f" between the kept ends ({window} there)"
        return [
            Diagnostic(
                "E304",
                f"budget {k} with {limits} needs at least {needed} layers{where}; "
                f"the model has {num_layers}",
                span,
            )
        ]
    return []


def missing_file_warnings(plan: Plan) -> list[Diagnostic]:
    """Warnings (not errors) for data files and local model directories that do not exist yet.

    Example specs point at data a demo generates, so `check` must pass on a fresh clone; the
    build stage fails on a file that is still missing.
    """
    out: list[Diagnostic] = []

    def warn(code: str, what: str, path: Path, span: Span | None) -> None:
        # Shown relative to the spec, as the user wrote it, not as an absolute path.
        shown = os.path.relpath(path, plan.spec_path.parent) if plan.spec_path else str(path)
        message = f"{what} `{shown}` does not exist yet"
        out.append(Diagnostic(code, message, span, severity="warning"))

    if plan.model.local and not is_dir(Path(plan.model.source)):
        warn("W302", "model directory", Path(plan.model.source), plan.span("model"))
    for domain in plan.domains:
        if not is_file(domain.data):
            warn("W301", "data file", domain.data, plan.span(f"domains.{domain.name}.data"))
        if domain.eval is not None and not is_file(domain.eval):
            warn("W301", "eval file", domain.eval, plan.span(f"domains.{domain.name}.eval"))
    for position, gate in enumerate(plan.verify.gates):
        if gate.data is not None and not is_file(gate.data):
            warn("W301", "eval file", gate.data, plan.span(f"verify.{position}.data"))
    return out
