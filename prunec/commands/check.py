"""`prunec check FILE...`: validate specs and report every problem (no torch import)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from prunec.errors import Diagnostic, ExitCode, format_diagnostics
from prunec.syntax import Analysis, check_file


def spec_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Each path as given; a directory stands for every `*.prune` file under it, sorted."""
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.prune"))
        else:
            yield path


COLOR_OPTION = click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour diagnostics (auto: when stderr is a terminal and NO_COLOR is unset).",
)


def use_color(choice: str) -> bool:
    """Whether to colour diagnostics on stderr (https://no-color.org is honoured)."""
    if choice != "auto":
        return choice == "always"
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR")


def _check_one(path: Path) -> Analysis:
    return check_file(path)


def _diagnostic_json(diag: Diagnostic) -> dict[str, Any]:
    span = diag.span
    where = (
        {"line": span.line, "col": span.col, "end_line": span.end_line, "end_col": span.end_col}
        if span is not None
        else {}
    )
    return {
        "code": diag.code,
        "severity": diag.severity,
        "message": diag.message,
        **where,
        "expected": diag.expected,
        "help": diag.help,
        "notes": list(diag.notes),
    }


@click.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Show errors only, not warnings.")
@COLOR_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def command(
    ctx: click.Context, as_json: bool, quiet: bool, color: str, files: tuple[Path, ...]
) -> None:
    """Validate spec FILES: syntax, meaning, and layer counts of local models.

    Prints `ok  FILE` for each valid file; exits 2 when any file has an error. A directory
    means every `*.prune` file under it. Data files that do not exist yet are reported as
    warnings only.
    """
    paths = list(spec_files(files))
    colored = use_color(color)
    invalid = 0
    report = []
    for path in paths:
        result = _check_one(path)
        if quiet:
            result = result._replace(diagnostics=result.errors)
        invalid += bool(result.errors)
        if as_json:
            diagnostics = [_diagnostic_json(d) for d in result.diagnostics]
            report.append({"file": str(path), "ok": not result.errors, "diagnostics": diagnostics})
            continue
        if result.diagnostics:
            rendered = format_diagnostics(result.diagnostics, result.sources, colored)
            click.echo(rendered, err=True, color=colored)
        if not result.errors:
            click.echo(f"ok  {path}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif len(paths) > 1 and invalid:
        click.echo(f"{invalid} of {len(paths)} files have errors", err=True)
    if invalid:
        ctx.exit(int(ExitCode.SPEC))
