"""`prunec fmt [--check] [--diff] FILE...`: rewrite specs in canonical form, keeping comments."""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from pathlib import Path

import click

from prunec.commands.check import COLOR_OPTION, spec_files, use_color
from prunec.errors import ExitCode, SpecError, format_diagnostics
from prunec.syntax import format_text, read_spec_text


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so an interrupted run never leaves half a spec."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _format_stdin(check_only: bool) -> int:
    """Format standard input to standard output; 1 when it was not canonical."""
    text = sys.stdin.read()
    formatted = format_text(text, "<stdin>")
    if not check_only:
        click.echo(formatted, nl=False)
    return int(formatted != text)


@click.command("fmt")
@click.option(
    "--check", "check_only", is_flag=True, help="Change nothing; exit 6 if any file would change."
)
@click.option("--diff", "show_diff", is_flag=True, help="Print a unified diff (implies --check).")
@COLOR_OPTION
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def command(
    ctx: click.Context, check_only: bool, show_diff: bool, color: str, files: tuple[Path, ...]
) -> None:
    """Format spec FILES canonically. Idempotent; keeps every comment; never changes meaning.

    FILE `-` reads standard input and writes the formatted text to standard output (for
    editors); with --check it only sets the exit status.
    """
    check_only = check_only or show_diff
    invalid = changed = 0
    for path in spec_files(files):
        try:
            if str(path) == "-":
                changed += _format_stdin(check_only)
                continue
            text = read_spec_text(path)
            formatted = format_text(text, str(path))
        except SpecError as err:
            colored = use_color(color)
            rendered = format_diagnostics(err.diagnostics, err.sources, colored)
            click.echo(rendered, err=True, color=colored)
            invalid += 1
            continue
        if formatted == text:
            continue
        changed += 1
        if show_diff:
            diff = difflib.unified_diff(
                text.splitlines(keepends=True),
                formatted.splitlines(keepends=True),
                fromfile=str(path),
                tofile=f"{path} (formatted)",
            )
            click.echo("".join(diff), nl=False)
        if check_only:
            click.echo(f"would reformat {path}", err=True)
        else:
            _write_atomically(path, formatted)
            click.echo(f"formatted {path}", err=True)
    if invalid:
        ctx.exit(int(ExitCode.SPEC))
    if check_only and changed:
        click.echo(f"{changed} file(s) would be reformatted", err=True)
        ctx.exit(int(ExitCode.FMT))
