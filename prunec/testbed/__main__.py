"""`python -m prunec.testbed [--root DIR] [--force]`: train the testbed by hand."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--root", type=click.Path(path_type=Path), default=Path("build/testbed"))
@click.option("--force", is_flag=True, help="Retrain even when a cached testbed matches.")
@click.option("--steps", type=int, default=None, help="Override the recipe's step count.")
def main(root: Path, force: bool, steps: int | None) -> None:
    """Train (or reuse) the two-domain testbed VLM and print its per-domain accuracy."""
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunec.testbed import TrainConfig, ensure_testbed

    config = TrainConfig()
    if steps is not None:
        config = dataclasses.replace(config, steps=steps)
    console = Console(stderr=True)
    columns = (
        TextColumn("training"),
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

        paths = ensure_testbed(root, force=force, config=config, on_step=on_step)
        if progress.tasks[0].completed == 0:
            progress.update(task, visible=False)
            trained = False
        else:
            trained = True
    info = paths.info
    if not trained:
        console.print("cached testbed matches the recipe (use --force to retrain)")
    console.print(f"testbed: {paths.model}")
    console.print(
        f"trained {info['config']['steps']} steps in {info['train_seconds']} s "
        f"({info['steps_per_second']} steps/s, torch threads: {info['threads']})"
    )
    for domain, acc in info["eval_accuracy"].items():
        console.print(f"  {domain:8s} accuracy {100 * acc:.1f}%")


if __name__ == "__main__":
    main()
