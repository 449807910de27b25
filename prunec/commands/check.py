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


def _check_one(path: Path, deep: bool = False) -> Analysis:
    result = check_file(path)
    if not deep or result.plan is None:
        return result
    from prunec.data.deep import deep_diagnostics

    found, sources = deep_diagnostics(result.plan)
    # The build's errors for missing files replace `check`'s warnings about them.
    kept = [d for d in result.diagnostics if d.code not in ("W301", "W302")]
    diagnostics = tuple(kept + found)
    sources.texts.update(result.sources.texts)
    failed = any(d.severity == "error" for d in diagnostics)
    return Analysis(None if failed else result.plan, diagnostics, sources)


def _diagnostic_json(diag: Diagnostic) -> dict[str, Any]:
    span = diag.span
    where: dict[str, Any] = {}
    if span is not None:  # `file`: the spec, or (with --deep) a data or config file
        where = {
            "file": span.file,
            "line": span.line,
            "col": span.col,
            "end_line": span.end_line,
            "end_col": span.end_col,
        }
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
@click.option(
    "--deep",
    is_flag=True,
    help="Also read every data and eval record and the model's config.json, as a build would.",
)
@COLOR_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def command(
    ctx: click.Context,
    as_json: bool,
    quiet: bool,
    deep: bool,
    color: str,
    files: tuple[Path, ...],
) -> None:
    """Validate spec FILES: syntax, meaning, and layer counts of local models.

    Prints `ok  FILE` for each valid file; exits 2 when any file has an error. A directory
    means every `*.prune` file under it. Data files that do not exist yet are reported as
    warnings only. With --deep, every record of every data and eval file is read and checked
    (images opened, URLs downloaded) and the model's config.json parsed, without loading the
    model; missing files are then errors, as in a build.
    """
    paths = list(spec_files(files))
    colored = use_color(color)
    invalid = 0
    report = []
    for path in paths:
        result = _check_one(path, deep)
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
