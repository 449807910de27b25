"""`prunec build SPEC`: score, plan, emit every target, verify, and write the lockfile."""

from __future__ import annotations

from pathlib import Path

import click

from prunec.commands import cache_dir_option


@click.command(name="build")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--locked", is_flag=True, help="Fail if inputs differ from SPEC.lock.")
@click.option("--no-lock", is_flag=True, help="Do not write the lockfile.")
@click.option(
    "--force",
    is_flag=True,
    help="Let a target replace an existing directory that prunec did not write.",
)
@cache_dir_option
def command(spec: Path, locked: bool, no_lock: bool, force: bool, cache_dir: Path | None) -> None:
    """Build SPEC: every target is published only if all self-checks and gates pass."""
    from rich.console import Console

    from prunec.pipeline import build
    from prunec.report import render_build

    console = Console(stderr=True, highlight=False)
    result = build(
        spec,
        locked=locked,
        write_lock=not no_lock,
        cache_dir=cache_dir,
        force=force,
        reporter=lambda message: console.print(f"[dim]·[/dim] {message}"),
    )
    from prunec.distributed import is_worker

    if not is_worker():  # one report per distributed launch: rank 0's
        render_build(result, console)
