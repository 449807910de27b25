"""Checks that need the model's decoder layer count, and warnings about files not there yet."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prunec.errors import Diagnostic, Span, SpecError
from prunec.plan.constraints import Constraints, constraint_problems
from prunec.plan.model import DataSource, Plan
from prunec.syntax.lower import is_dir, is_file


def validate_against_model(plan: Plan, num_layers: int) -> list[Diagnostic]:
    """Every problem of `plan` that shows only once the model has `num_layers` decoder layers.

    Budget too large, out-of-range `remove`/`protect` indices, removed layers the spec also
    keeps, too few removable layers, and spacing limits that cannot be met: the planner's
    constraint rules (`prunec.plan.constraints.constraint_problems`, their one home), plus a
    percentage budget that disagrees with an explicit `remove` list. Each diagnostic points at
    the offending span recorded in `plan.spans`.
    """
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


def target_problems(plan: Plan, force: bool = False) -> list[Diagnostic]:
    """Targets whose publishing would destroy something prunec did not write.

    A target may replace only an absent path, an empty directory or a directory an earlier
    prunec build published (`prunec.backends.atomic.replaceable`); `force` allows replacing a
    foreign directory, never a file. Independent of that: a target must not be (or contain)
    the model's folder, the spec file, a data or eval file, or another target. Each problem
    points at the target's path in the spec.
    """
    from prunec.backends.atomic import replaceable

    out: list[Diagnostic] = []
    protected = _protected_paths(plan)
    resolved = [Path(os.path.realpath(t.path)) for t in plan.targets]
    for position, (target, real) in enumerate(zip(plan.targets, resolved, strict=True)):
        span = plan.span(f"targets.{position}.path") or plan.span(f"targets.{position}")
        shown = _shown(plan, target.path)
        for what, path in protected:
            if path == real or real in path.parents:
                relation = "is" if path == real else "contains"
                out.append(
                    Diagnostic(
                        "E312",
                        f"target `{shown}` {relation} the {what} `{_shown(plan, path)}`",
                        span,
                        help="write the target somewhere else; publishing replaces the whole "
                        "directory",
                    )
                )
                break
        else:
            for other, other_real in enumerate(resolved):
                if other != position and other_real in real.parents:
                    line = span_line(plan, f"targets.{other}")
                    out.append(
                        Diagnostic(
                            "E231",
                            f"target `{shown}` lies inside another target "
                            f"`{_shown(plan, plan.targets[other].path)}`",
                            span,
                            notes=(f"that target is at line {line}",) if line else (),
                        )
                    )
                    break
            else:
                reason = replaceable(target.path)
                if reason is not None and not (force and target.path.is_dir()):
                    foreign = target.path.is_dir() and not target.path.is_symlink()
                    out.append(
                        Diagnostic(
                            "E313",
                            f"target `{shown}` {reason}; prunec replaces only what it published",
                            span,
                            help=(
                                "choose a new path, empty or remove that directory yourself, "
                                "or build with `--force` to replace it"
                                if foreign
                                else "choose another path"
                            ),
                        )
                    )
    return out


def span_line(plan: Plan, key: str) -> int | None:
    span = plan.span(key)
    return span.line if span is not None else None


def _shown(plan: Plan, path: Path) -> str:
    return os.path.relpath(path, plan.spec_path.parent) if plan.spec_path else str(path)


def _protected_paths(plan: Plan) -> list[tuple[str, Path]]:
    """What no target may be or contain: (what it is, resolved path)."""
    paths: list[tuple[str, Path]] = []
    if plan.model.local:
        paths.append(("model folder", Path(os.path.realpath(plan.model.source))))
    if plan.spec_path is not None:
        paths.append(("spec file", Path(os.path.realpath(plan.spec_path))))
    sources: list[tuple[str, DataSource | None]] = []
    for domain in plan.domains:
        sources += [("data file", domain.data), ("eval file", domain.eval)]
    sources += [("eval file", gate.data) for gate in plan.verify.gates]
    for what, source in sources:
        if isinstance(source, Path):  # hub datasets live in the hub cache, not beside targets
            kind = "data folder" if is_dir(source) else what
            paths.append((kind, Path(os.path.realpath(source))))
    return paths


def support_problems(plan: Plan, config: dict[str, Any]) -> list[Diagnostic]:
    """Targets whose kind cannot handle the model described by `config` (its config.json)."""
    from prunec.plan.registry import target_kinds

    out = []
    for position, target in enumerate(plan.targets):
        reason = target_kinds()[target.kind].unsupported(config)
        if reason is not None:
            out.append(
                Diagnostic(
                    "E309",
                    f"target {target.kind}: {reason}",
                    plan.span(f"targets.{position}"),
                )
            )
    return out


def heal_problems(plan: Plan, config: dict[str, Any]) -> list[Diagnostic]:
    """`heal` on a model type whose residual projection cannot carry a correction exactly
    (the architecture table's `residual_projection`, e.g. Gemma 2/3 normalise after it)."""
    from prunec.arch.table import heal_refusal

    if not plan.prune.heal.enabled:
        return []
    reason = heal_refusal(config)
    if reason is None:
        return []
    return [
        Diagnostic(
            "E314",
            f"`heal {plan.prune.heal.method}` cannot fold its corrections into this model: "
            + reason,
            plan.span("prune.heal") or plan.span("prune"),
            help="drop the `heal` line (healing would be an approximation here, never exact)",
        )
    ]


#: A relative path that reads like a hub id ("org/name", no extension).
_HUB_LIKE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9_-]*$")
