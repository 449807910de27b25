"""Human-readable build output: the layer plan table, how the set was chosen (every measured
candidate of `auto`), the artifacts and the gate table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from prunec.pipeline import BuildResult
    from prunec.planning import Candidate, SearchSummary, Selection
    from prunec.planning.heal import HealRecord, RunHealing
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
        "combined" if selection.ranking in ("domain", "measured") else selection.ranking,
        justify="right",
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


def _layers(removed: Sequence[int]) -> str:
    return " ".join(str(i) for i in removed)


def _kinds(summary: SearchSummary) -> str:
    words = {"nll": "answer NLL", "kl": "KL to the unpruned model"}
    return ", ".join(f"{d}: {words.get(k, k)}" for d, k in summary.kinds.items())


def _shown(summary: SearchSummary) -> list[int]:
    """Candidates worth a row: every complete one (early-stopped moves are only counted)."""
    return [i for i, c in enumerate(summary.candidates) if c.complete]


def search_line(summary: SearchSummary) -> str:
    """One line: how many candidates, why the search stopped, what won and by how much."""
    from prunec.plan.strategies import strategies_where

    baselines = set(strategies_where(baseline=True))
    chosen = summary.selected
    fixed = [
        c.held_out
        for c in summary.candidates
        if c.held_out is not None and set(c.origin) & baselines
    ]
    line = (
        f"auto: measured {summary.evaluations} of at most {summary.budget} candidates "
        f"({summary.stopped}); chosen {', '.join(chosen.origin)}, search {chosen.search:.4f}"
    )
    if chosen.held_out is not None:
        line += f", held-out {chosen.held_out:.4f}"
        if fixed:
            line += f" (best fixed strategy {min(fixed):.4f})"
    if summary.guard:
        line += f"; per-domain guard: {summary.guard}"
    return line


def _guard_cell(candidate: Candidate) -> str:
    """The per-domain guard's verdict on a finalist: "ok", or the domains it regresses."""
    if candidate.regresses is None:
        return ""
    return "worse: " + ", ".join(candidate.regresses) if candidate.regresses else "ok"


def candidates_table(summary: SearchSummary) -> Table:
    """`auto`'s measured candidates: origin, removed layers, proxy, measured objective on the
    search and held-out parts; the chosen set in bold."""
    from rich.table import Table

    unpruned = ", ".join(
        f"{part.replace('_', '-')} {value:.4f}" for part, value in summary.unpruned.items()
    )
    table = Table(
        title=f"auto: measured candidates (objective: {_kinds(summary)}; unpruned: {unpruned})"
    )
    for name, justify in (
        ("#", "right"),
        ("origin", "left"),
        ("removed", "left"),
        ("proxy", "right"),
        ("search", "right"),
        ("held-out", "right"),
        ("guard", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for index in _shown(summary):
        cand = summary.candidates[index]
        chosen = index == summary.chosen
        table.add_row(
            str(index + 1),
            ", ".join(cand.origin) + ("  <- chosen" if chosen else ""),
            _layers(cand.removed),
            f"{cand.proxy:.4f}",
            f"{cand.search:.4f}",
            f"{cand.held_out:.4f}" if cand.held_out is not None else "",
            _guard_cell(cand),
            style="bold green" if chosen else None,
        )
    captions = []
    if summary.guard:
        captions.append(f"per-domain guard: {summary.guard}")
    stopped = len(summary.candidates) - len(_shown(summary))
    if stopped:
        captions.append(
            f"{stopped} more moves stopped early, already worse than the best "
            "(see --json for their partial values)"
        )
    if captions:
        table.caption = "\n".join(captions)
    return table


def how_chosen_markdown(selection: Selection) -> str:
    """How the removed layers were selected, as Markdown (the model card's section), and how
    the removal was healed (a subsection) when the spec asked for it."""
    text = _how_selected(selection)
    if selection.healing is not None:
        text += "\n\n### Healing\n\n" + healing_markdown(selection.healing)
    return text


def _how_selected(selection: Selection) -> str:
    if selection.strategy == "manual":
        return "Listed in the spec (`remove`); nothing was scored or searched."
    summary = selection.search
    if summary is None:
        spacing = (
            f", spacing weight {selection.spacing_weight:g}" if selection.spacing_weight else ""
        )
        return (
            f"Strategy `{selection.strategy}` ({selection.ranking} ranking{spacing}): the exact "
            "planner minimised the sum of the ranking's per-layer values over the removed "
            f"layers under the spec's constraints. Budget regime: {selection.regime}."
        )
    chosen = summary.selected
    samples = ", ".join(f"{d} {s[0]}/{s[1]}" for d, s in summary.samples.items())
    lines = [
        f"Strategy `auto` measured {summary.evaluations} candidate sets (budget "
        f"`search {summary.budget}`; stopped: {summary.stopped}) by running the model on the "
        f"calibration data with the layers skipped. Objective ({_kinds(summary)}; domains "
        f"weighted by the spec): lower is better. Records per domain, search/held-out: "
        f"{samples}. Candidates came from every ranking, then a local search from the best "
        f"one; the held-out part decided among {len(summary.finalists) or 'no'} finalists. "
        + (f"Per-domain no-regression guard: {summary.guard}. " if summary.guard else "")
        + f"Chosen: {', '.join(chosen.origin)}. Budget regime: {selection.regime} (reported, "
        "not a rule).",
        "",
        "| origin | removed | proxy | search | held-out | guard |",
        "|---|---|---:|---:|---:|---|",
    ]
    for index in _shown(summary):
        cand = summary.candidates[index]
        mark = " **(chosen)**" if index == summary.chosen else ""
        held = f"{cand.held_out:.4f}" if cand.held_out is not None else ""
        lines.append(
            f"| {', '.join(cand.origin)}{mark} | {_layers(cand.removed)} | {cand.proxy:.4f} | "
            f"{cand.search:.4f} | {held} | {_guard_cell(cand)} |"
        )
    unpruned = ", ".join(
        f"{part.replace('_', '-')} {value:.4f}" for part, value in summary.unpruned.items()
    )
    lines += ["", f"Unpruned model: {unpruned}."]
    return "\n".join(lines)


def _run_words(run: RunHealing) -> str:
    layers = _span(run.layers)
    if run.corrected is None:
        return f"layers {layers}: not healed (no layer before it)"
    values = ""
    if run.before is not None and run.after is not None:
        values = f", objective {run.before:.4f} -> {run.after:.4f}"
    verdict = {"healed": "healed", "dropped": "correction dropped (it made things worse)"}
    return f"layers {layers}: {verdict[run.status]} in layer {run.corrected}{values}"


def _span(layers: Sequence[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def healing_lines(selection: Selection) -> list[str]:
    """What `heal` did, one line per removed run, after a summary line; empty without it."""
    record = selection.healing
    if record is None:
        return []
    part = record.part.replace("_", "-")
    head = (
        f"heal {record.method} (ridge {record.ridge:g}): {len(record.corrected)} of "
        f"{len(record.runs)} runs corrected; {part} objective {record.before:.4f} -> "
        f"{record.after:.4f} ({record.seconds:.1f}s)"
    )
    return [head, *(f"  {_run_words(run)}" for run in record.runs)]


def healing_markdown(record: HealRecord) -> str:
    """The model card's healing section: the method, each run and the measured objective."""
    part = record.part.replace("_", "-")
    lines = [
        f"`heal {record.method}` (ridge {record.ridge:g}): for each run of removed layers, a "
        "least-squares correction of what the kept layer before it writes to the residual "
        f"stream was fitted on the calibration data and folded into that layer's "
        f"`{record.projection}` weight (no new modules; same parameter names). A correction "
        f"was kept only when it lowered the measured objective on the {part} part "
        f"(lower is better): {record.before:.4f} without healing, {record.after:.4f} with.",
        "",
        "| removed run | corrected layer | status | objective before | after |",
        "|---|---:|---|---:|---:|",
    ]
    for run in record.runs:
        before = f"{run.before:.4f}" if run.before is not None else ""
        after = f"{run.after:.4f}" if run.after is not None else ""
        corrected = str(run.corrected) if run.corrected is not None else ""
        lines.append(f"| {_span(run.layers)} | {corrected} | {run.status} | {before} | {after} |")
    return "\n".join(lines)


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
    if result.selection.search is not None:
        console.print(candidates_table(result.selection.search))
    for line in healing_lines(result.selection):
        console.print(line, highlight=False)
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
