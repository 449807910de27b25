"""`prunec plan SPEC [--scores FILE] [--json]`: show the selection without emitting anything.

With `--scores` the plan comes from a scores file alone: no model is loaded and torch is not
imported (the file is `prunec score` output or `{"domains": {"math": [I per layer], ...}}`).
That works for every fixed strategy; `auto` measures candidates on the model, so with
`--scores` it is an error (E342). Without `--scores`, the model is loaded at most once, and
only when the scores or `auto`'s search are not cached yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from prunec.commands import cache_dir_option
from prunec.errors import Diagnostic, SpecError

if TYPE_CHECKING:
    from prunec.arch.loading import LazyModel
    from prunec.plan.model import Plan
    from prunec.planning import Selection
    from prunec.planning.search import SearchContext
    from prunec.scoring import LayerScores


def read_scores_file(path: Path) -> LayerScores:
    """LayerScores from a file; SpecError naming the file when it is unreadable or malformed."""
    from prunec.scoring.scores import LayerScores

    try:
        return LayerScores.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([Diagnostic("E330", f"cannot read scores file {path}: {err}")]) from None
    except ValueError as err:
        raise SpecError([Diagnostic("E331", f"invalid scores file {path}: {err}")]) from None


def _check_layer_count(plan: Plan, scores: LayerScores) -> None:
    from prunec.plan.model_info import read_layer_count

    expected = read_layer_count(plan.model)
    if expected is not None and expected != scores.num_layers:
        raise SpecError(
            [
                Diagnostic(
                    "E332",
                    f"the scores file has {scores.num_layers} layers; "
                    f"the model has {expected} decoder layers",
                    plan.span("model"),
                )
            ]
        )


def _scores_and_layers(
    plan: Plan, scores_file: Path | None, cache_dir: Path | None, model: LazyModel
) -> tuple[LayerScores | None, int]:
    if scores_file is not None:
        scores = read_scores_file(scores_file)
        _check_layer_count(plan, scores)
        return scores, scores.num_layers
    if plan.prune.remove is not None:  # manual: no calibration; the layer count suffices
        from prunec.plan.model_info import read_layer_count

        count = read_layer_count(plan.model)
        return None, count if count is not None else _hub_layer_count(plan)
    from prunec.scoring import score

    scored = score(plan, model, cache_dir=cache_dir)
    return scored, scored.num_layers


def _hub_layer_count(plan: Plan) -> int:
    """The decoder layer count from a hub model's config (downloads the config only)."""
    from prunec.errors import BuildError

    try:
        from transformers import AutoConfig

        from prunec.arch.loading import hub_reachable

        config = AutoConfig.from_pretrained(
            plan.model.source,
            revision=plan.model.revision,
            trust_remote_code=plan.model.trust_remote_code,
            local_files_only=not hub_reachable(),
        )
        return int(config.get_text_config(decoder=True).num_hidden_layers)
    except Exception as err:
        raise BuildError(f"cannot read the layer count of {plan.model.source}: {err}") from err


def plan_json(selection: Selection, scores: LayerScores | None) -> dict[str, Any]:
    """The `--json` output: the selection plus per-domain importance."""
    out = selection.to_json()
    out["domains"] = (
        {name: list(scores.importance(name)) for name in scores.domains} if scores else {}
    )
    return out


def _context(
    plan: Plan, scores_file: Path | None, cache_dir: Path | None, model: LazyModel
) -> SearchContext | None:
    """`auto`'s model and data to measure on; None with `--scores` (nothing to measure)."""
    from prunec.plan.registry import strategies

    if scores_file is not None or plan.prune.remove is not None:
        return None
    info = strategies().get(plan.prune.strategy)
    if info is None or not info.measured:
        return None
    from prunec.planning.search import SearchContext

    context = SearchContext(plan, model, cache_dir=cache_dir)
    if plan.prune.heal.enabled:
        # Measure candidates healed, as `build` does, so the plan is the build's.
        import functools

        from prunec.planning.heal import healer_for, search_transform

        healer = functools.cache(lambda: healer_for(plan, context.loaded(), context.objective))
        context.transform = search_transform(healer, plan.prune.heal)
    return context


def render_table(plan: Plan, selection: Selection, scores: LayerScores | None) -> None:
    from rich.console import Console

    from prunec.report import candidates_table, domain_importance, search_line, selection_table

    table = selection_table(
        selection,
        domain_importance(scores, [d.name for d in plan.domains]),
        title=f"{plan.model.source}: remove {len(selection.removed)} of "
        f"{selection.num_layers} layers",
    )
    console = Console()
    console.print(table)
    if selection.search is not None:
        console.print(candidates_table(selection.search))
        console.print(f"strategy auto, regime [bold]{selection.regime}[/] (reported, not a rule)")
        console.print(search_line(selection.search))
        if plan.prune.heal.enabled:
            console.print(
                f"candidates measured after `{plan.prune.heal.key()}`; the build keeps each "
                "run's correction only where it helps on the held-out part"
            )
    else:
        console.print(
            f"strategy {selection.strategy} ({selection.ranking} ranking), regime "
            f"[bold]{selection.regime}[/], spacing weight {selection.spacing_weight:g}, "
            f"objective {selection.objective:.4f}"
        )
    console.print(f"removed: {list(selection.removed)}")


@click.command(name="plan")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--scores",
    "scores_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Plan from this scores file; loads no model.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the selection as JSON.")
@cache_dir_option
def command(spec: Path, scores_file: Path | None, as_json: bool, cache_dir: Path | None) -> None:
    """Show which layers SPEC would remove, and the regime; writes nothing.

    With `auto`, also every candidate set it measured (cached: re-planning runs no model).
    """
    from prunec.arch.loading import LazyModel
    from prunec.planning import solve
    from prunec.syntax import load_spec

    plan = load_spec(spec)
    model = LazyModel(plan.model)
    scores, num_layers = _scores_and_layers(plan, scores_file, cache_dir, model)
    context = _context(plan, scores_file, cache_dir, model)
    selection = solve(plan, scores if scores is not None else {}, num_layers, context=context)
    if as_json:
        click.echo(json.dumps(plan_json(selection, scores), sort_keys=True, indent=2))
    else:
        render_table(plan, selection, scores)
