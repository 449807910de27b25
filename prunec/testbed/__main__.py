"""`python -m prunec.testbed [--kind NAME] [--root DIR] [--force]`: train a testbed by hand."""

from __future__ import annotations

from pathlib import Path

import click

from prunec.testbed import TESTBEDS


@click.command()
@click.option(
    "--kind",
    type=click.Choice(tuple(TESTBEDS)),
    default="demo",
    show_default=True,
    help="Which recipe: the demo's, or one of the results testbeds.",
)
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    default=None,
    help="Cache directory (default: build/testbed for demo, build/testbed-<kind> otherwise).",
)
@click.option("--force", is_flag=True, help="Retrain even when a cached testbed matches.")
@click.option("--steps", type=int, default=None, help="Override the recipe's step count.")
def main(kind: str, root: Path | None, force: bool, steps: int | None) -> None:
    """Train (or reuse) a two-domain testbed VLM and print its per-domain and per-task accuracy."""
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunec.testbed import default_root, ensure_testbed

    config = TESTBEDS[kind]
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    console = Console(stderr=True)
    columns = (
        TextColumn(f"training {kind}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=config.steps, loss=float("nan"))

        def on_step(step: int, loss: float) -> None:
            progress.update(task, completed=step + 1, loss=loss)
            if not console.is_terminal and (step + 1) % 100 == 0:
                console.print(f"step {step + 1}/{config.steps} loss {loss:.4f}")

        paths = ensure_testbed(
            root or default_root(kind), force=force, config=config, on_step=on_step
        )
        trained = progress.tasks[0].completed > 0
        if not trained:
            progress.update(task, visible=False)
    info = paths.info
    if not trained:
        console.print("cached testbed matches the recipe (use --force to retrain)")
    console.print(
        f"testbed {kind} ({info['config']['family']}, tasks {info['config']['tasks']}): "
        f"{paths.model}"
    )
    console.print(
        f"trained {info['config']['steps']} steps in {info['train_seconds']} s wall, "
        f"{info.get('train_cpu_seconds', 'n/a')} s CPU "
        f"({info['steps_per_second']} steps/s, torch threads: {info['threads']})"
    )
    tasks = info.get("task_accuracy", {})
    for domain, acc in info["eval_accuracy"].items():
        parts = ", ".join(f"{t} {100 * a:.1f}%" for t, a in tasks.get(domain, {}).items())
        console.print(
            f"  {domain:8s} accuracy {100 * acc:.1f}%" + (f"  ({parts})" if parts else "")
        )


if __name__ == "__main__":
    main()
