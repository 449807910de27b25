"""Checks that need the model's decoder layer count, and warnings about files not there yet."""

from __future__ import annotations

import os
import re
from pathlib import Path

from prunec.errors import Diagnostic, Span, SpecError
from prunec.plan.model import DataSource, Plan
from prunec.syntax.lower import is_dir, is_file


def validate_against_model(plan: Plan, num_layers: int) -> list[Diagnostic]:
    """Every problem of `plan` that shows only once the model has `num_layers` decoder layers.

    Budget too large, out-of-range `remove`/`protect` indices, removed layers the spec also
    keeps, too few removable layers, and spacing limits that cannot be met: the planner's
    constraint rules (`prunec.planning.problem.constraint_problems`, their one home), plus a
    percentage budget that disagrees with an explicit `remove` list. Each diagnostic points at
    the offending span recorded in `plan.spans`.
    """
    from prunec.planning.problem import Constraints, constraint_problems

    out = _percent_vs_remove(plan, num_layers)
    try:
        constraints = Constraints.from_plan(plan, num_layers)
    except SpecError as err:
        return out + list(err.diagnostics)
    return out + constraint_problems(constraints)


def _percent_vs_remove(plan: Plan, num_layers: int) -> list[Diagnostic]:
    prune = plan.prune
    if prune.budget is None or prune.budget.percent is None or prune.remove is None:
        return []
    b = prune.budget.resolve(num_layers)
    if b == len(prune.remove):
        return []
    return [
        Diagnostic(
            "E306",
            f"budget {prune.budget.percent:g}% of {num_layers} layers is {b}, "
            f"but `remove` lists {len(prune.remove)}",
            plan.span("prune.budget") or plan.span("prune"),
            help="drop the `budget` line; `remove` already says how many",
        )
    ]


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
        hint = None
        if code == "W301" and _HUB_LIKE.match(shown):
            hint = f'for the hub dataset `{shown}`, write "hf://datasets/{shown}"'
        out.append(Diagnostic(code, message, span, help=hint, severity="warning"))

    def missing(source: DataSource | None) -> Path | None:
        # Hub datasets are checked when read; a folder of data files is as good as a file.
        if isinstance(source, Path) and not is_file(source) and not is_dir(source):
            return source
        return None

    if plan.model.local and not is_dir(Path(plan.model.source)):
        warn("W302", "model directory", Path(plan.model.source), plan.span("model"))
    for domain in plan.domains:
        if (path := missing(domain.data)) is not None:
            warn("W301", "data file", path, plan.span(f"domains.{domain.name}.data"))
        if (path := missing(domain.eval)) is not None:
            warn("W301", "eval file", path, plan.span(f"domains.{domain.name}.eval"))
    for position, gate in enumerate(plan.verify.gates):
        if (path := missing(gate.data)) is not None:
            warn("W301", "eval file", path, plan.span(f"verify.{position}.data"))
    return out


#: A relative path that reads like a hub id ("org/name", no extension).
_HUB_LIKE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9_-]*$")
