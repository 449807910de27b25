"""`prunec check FILE...`: validate specs and report every problem (no torch import)."""

from __future__ import annotations

from pathlib import Path

import click

from prunec.errors import ExitCode, SpecError, format_diagnostics
from prunec.syntax import Analysis, check_file


def _check_one(path: Path) -> Analysis | SpecError:
    try:
        return check_file(path)
    except SpecError as err:  # the file could not be read at all
        return err


@click.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def command(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Validate spec FILES: syntax, meaning, and layer counts of local models.

    Prints `ok  FILE` for each valid file; exits 2 when any file has an error. Data files
    that do not exist yet are reported as warnings only.
    """
    invalid = 0
    for path in files:
        result = _check_one(path)
        if isinstance(result, SpecError):
            click.echo(result.render(), err=True)
            invalid += 1
            continue
        if result.diagnostics:
            click.echo(format_diagnostics(result.diagnostics, result.sources), err=True)
        if result.errors:
            invalid += 1
        else:
            click.echo(f"ok  {path}")
    if len(files) > 1 and invalid:
        click.echo(f"{invalid} of {len(files)} files have errors", err=True)
    if invalid:
        ctx.exit(int(ExitCode.SPEC))
