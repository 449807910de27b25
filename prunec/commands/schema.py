"""`prunec schema`: the JSON Schema of the validated plan (what a `.prune` file lowers to)."""

from __future__ import annotations

import json

import click

from prunec.plan.model import Plan


@click.command("schema")
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
def command(indent: int) -> None:
    """Print the JSON Schema of the plan on stdout."""
    click.echo(json.dumps(Plan.model_json_schema(), indent=indent, sort_keys=True))
