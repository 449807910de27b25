"""Human-readable build output: the layer plan table, the artifacts and the gate table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from prunec.pipeline import BuildResult
    from prunec.planning import Selection
    from prunec.scoring import LayerScores


def selection_table(
    selection: Selection,
    domain_importance: dict[str, Sequence[float]] | None = None,
    title: str | None = None,
) -> Table:
    """One row per decoder layer: per-domain importance, the value the planner minimised
    (its column named after the ranking), and whether the layer is removed."""
    from rich.table import Table

    domains = domain_importance or {}
    table = Table(
        title=title
        or (
            f"plan: remove {len(selection.removed)} of {selection.num_layers} layers "
            f"({selection.strategy} -> {selection.ranking}, {selection.regime} budget)"
        )
    )
    table.add_column("layer", justify="right")
    for name in domains:
        table.add_column(name, justify="right")
    table.add_column(
        "combined" if selection.ranking == "domain" else selection.ranking, justify="right"
    )
    table.add_column("removed", justify="center")
    removed = set(selection.removed)
    for layer in range(selection.num_layers):
        gone = layer in removed
        cells = [str(layer), *(f"{values[layer]:.4f}" for values in domains.values())]
        cells.append(f"{selection.importance[layer]:.4f}" if selection.importance else "")
        cells.append("x" if gone else "")
        table.add_row(*cells, style="bold red" if gone else None)
    return table


def domain_importance(
    scores: LayerScores | None, order: Sequence[str] = ()
) -> dict[str, Sequence[float]]:
    """domain -> per-layer importance (all-token statistic), for tables and model cards.

    Domains listed in `order` (the spec's order) come first.
    """
    if scores is None:
        return {}
    names = [n for n in order if n in scores.domains]
    names += [n for n in scores.domains if n not in names]
    return {name: scores.importance(name) for name in names}


def _target_line(kind: str, path: Any, report: Any) -> str:
    return f"{kind:<5} {path}  {report.summary()}"


def render_build(result: BuildResult, console: Console) -> None:
    """Print the plan table, the published targets and the gate table."""
    order = [d.name for d in result.plan.domains]
    console.print(selection_table(result.selection, domain_importance(result.scores, order)))
    for target in result.targets:
        console.print(_target_line(target.target.kind, target.target.path, target.report))
    if result.gates is not None:
        console.print(result.gates.render())
    if result.lock_path is not None:
        console.print(f"lockfile {result.lock_path}")
    if result.timings:
        stages = ", ".join(f"{name} {sec:.1f}s" for name, sec in result.timings.items())
        console.print(f"[dim]time: {stages}[/]")
    kept = result.num_layers - len(result.selection.removed)
    console.print(
        f"[bold green]built[/] {result.num_layers} -> {kept} decoder layers "
        f"in {result.seconds:.1f}s"
    )
