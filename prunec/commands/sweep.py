"""`prunec sweep SPEC [--budgets 1,2,...] [--strategies domain,bi,...] [--heal] [-o DIR]`.

One calibration (through the score cache), then for every budget and strategy: plan, prune
in memory, evaluate each domain. Writes `sweep.json`, `sweep.csv` and `sweep.png` to DIR and
prints the retention table.
"""

from __future__ import annotations

from pathlib import Path

import click

from prunec.commands import cache_dir_option
from prunec.errors import Diagnostic, SpecError


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """`1,2,4` or `1-8` or `1-4,6` -> (1, 2, 4, ...); a SpecError naming the option otherwise."""
    values: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                values += range(low, high + 1)
            else:
                values.append(int(part))
    except ValueError:
        raise SpecError(
            [Diagnostic("E340", f"{option}: expected numbers like 1,2,4 or 1-8, got {text!r}")]
        ) from None
    if not values or min(values) < 1:
        raise SpecError([Diagnostic("E340", f"{option}: budgets are layer counts >= 1")])
    return tuple(sorted(set(values)))


def check_strategies(text: str) -> tuple[str, ...]:
    """Comma-separated strategy names, each a registered strategy that chooses layers itself
    (not one that takes the spec's `remove` list)."""
    from prunec.errors import did_you_mean
    from prunec.plan.strategies import strategies_where

    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    valid = sorted(strategies_where(explicit=False))
    problems = []
    for name in names:
        if name not in valid:
            hint = did_you_mean(name, valid)
            problems.append(
                Diagnostic(
                    "E341",
                    f"--strategies: unknown strategy `{name}`",
                    expected=f"one of: {', '.join(valid)}",
                    help=f"did you mean `{hint}`?" if hint else None,
                )
            )
    if not names:
        problems.append(Diagnostic("E341", "--strategies: no strategy given"))
    if problems:
        raise SpecError(problems)
    return names


@click.command(name="sweep")
@click.argument("spec", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--budgets", default=None, help="Layer counts to remove, e.g. 1,2,4 or 1-8 (default 1..L/2)."
)
@click.option(
    "--strategies",
    default=None,
    help="Comma-separated strategies (default: every strategy that chooses layers and needs "
    "no extra scoring pass).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output directory (default: build/sweep-<spec name>).",
)
@click.option(
    "--samples",
    type=int,
    default=None,
    help="Evaluation lines per domain (default: the spec's, else all).",
)
@click.option(
    "--heal",
    is_flag=True,
    default=False,
    help="Also evaluate every point healed (`heal linear`, the spec's ridge): NAME+heal rows.",
)
@cache_dir_option
def command(
    spec: Path,
    budgets: str | None,
    strategies: str | None,
    output: Path | None,
    samples: int | None,
    heal: bool,
    cache_dir: Path | None,
) -> None:
    """Evaluate retention across budgets and strategies (JSON, CSV, PNG and a table)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunec.pipeline import preflight
    from prunec.plan.strategies import sweep_strategies
    from prunec.syntax import load_spec
    from prunec.verify.sweep import (
        plot,
        render_table,
        run_sweep,
        write_csv,
        write_json,
    )

    console = Console(stderr=True)
    plan = load_spec(spec)
    chosen = check_strategies(strategies) if strategies else sweep_strategies()
    requested = parse_int_list(budgets, "--budgets") if budgets else None
    preflight(plan)

    from prunec.arch.loading import load_model
    from prunec.scoring import score

    with console.status("loading the model"):
        loaded = load_model(plan.model)
    num_layers = int(loaded.num_layers)
    budget_list = requested or tuple(range(1, num_layers // 2 + 1))
    if max(budget_list) >= num_layers:
        raise SpecError(
            [Diagnostic("E340", f"--budgets: the model has {num_layers} layers; remove fewer")]
        )
    if heal:
        from prunec.pipeline import check_heal_supported, model_config_dict
        from prunec.plan.model import HealSpec

        healed = HealSpec(method="linear", ridge=plan.prune.heal.ridge)
        plan = plan.model_copy(update={"prune": plan.prune.model_copy(update={"heal": healed})})
        check_heal_supported(plan, model_config_dict(loaded))
    with console.status("calibrating (score cache)"):
        scores = score(plan, loaded, cache_dir=cache_dir)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sweep", total=len(budget_list) * len(chosen))

        def on_point(_: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = run_sweep(
            plan,
            loaded,
            scores,
            budgets=budget_list,
            strategies=chosen,
            samples=samples,
            progress=on_point,
            cache_dir=cache_dir,
            heal=heal,
        )
    out_dir = output or Path("build") / f"sweep-{spec.stem}"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(result, out_dir / "sweep.json")
    write_csv(result, out_dir / "sweep.csv")
    plot(result, out_dir / "sweep.png")
    click.echo(render_table(result))
    console.print(f"wrote {out_dir}/sweep.json, sweep.csv, sweep.png")
