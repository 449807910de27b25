"""`prunec score SPEC [-o FILE]`: run calibration and write per-layer, per-domain scores."""

from __future__ import annotations

import json
from pathlib import Path

import click

from prunec.commands import cache_dir_option


@click.command(name="score")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the scores JSON here (default: standard output).",
)
@cache_dir_option
def command(spec: Path, output: Path | None, cache_dir: Path | None) -> None:
    """Score every decoder layer of SPEC's model on each calibration domain (cached)."""
    from prunec.scoring import score
    from prunec.syntax import load_spec

    plan = load_spec(spec)
    scores = score(plan, None, cache_dir=cache_dir)
    from prunec.distributed import is_worker

    text = json.dumps(scores.to_json(), sort_keys=True, indent=2) + "\n"
    if is_worker():  # rank 0 of a distributed launch writes the one result
        return
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(output)
    click.echo(
        f"wrote {output} ({scores.num_layers} layers, {len(scores.domains)} domains)", err=True
    )
