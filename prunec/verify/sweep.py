"""Budget sweeps: one calibration, then plan -> prune in memory -> evaluate per budget/strategy."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.errors import BuildError, SpecError
from prunec.plan.model import DataSource, Plan
from prunec.verify.evaluate import DomainEval, evaluate_records, retention, summarize

if TYPE_CHECKING:
    from prunec.data import Record


@dataclass(frozen=True)
class SweepRow:
    """One (budget, strategy, domain) point.

    removed: the layers the strategy chose; empty with `error` set when the constraints made
        this budget infeasible for the strategy (then the metrics are NaN).
    accuracy / nll: the pruned model's; retention_* against the unpruned model (1.0 = kept).
    slices: accuracy per slice of the domain's records (see `run_sweep`'s `slice_by`); empty
        when the sweep was not sliced.
    """

    budget: int
    strategy: str
    regime: str
    domain: str
    removed: tuple[int, ...]
    accuracy: float
    nll: float
    retention_accuracy: float
    retention_nll: float
    error: str = ""
    slices: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepResult:
    """A whole sweep: the unpruned model's scores per domain and every point.

    original_slices: the unpruned model's accuracy per domain and slice (empty: not sliced).
    """

    spec: str
    num_layers: int
    budgets: tuple[int, ...]
    strategies: tuple[str, ...]
    original: dict[str, DomainEval]
    rows: tuple[SweepRow, ...]
    original_slices: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "num_layers": self.num_layers,
            "budgets": list(self.budgets),
            "strategies": list(self.strategies),
            "original": {d: dataclasses.asdict(e) for d, e in self.original.items()},
            "original_slices": self.original_slices,
            "rows": [{**dataclasses.asdict(r), "removed": list(r.removed)} for r in self.rows],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepResult:
        return cls(
            spec=data["spec"],
            num_layers=int(data["num_layers"]),
            budgets=tuple(data["budgets"]),
            strategies=tuple(data["strategies"]),
            original={d: DomainEval(**e) for d, e in data["original"].items()},
            rows=tuple(SweepRow(**{**r, "removed": tuple(r["removed"])}) for r in data["rows"]),
            original_slices=data.get("original_slices", {}),
        )

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.original)

    def point(self, budget: int, strategy: str, domain: str) -> SweepRow | None:
        for row in self.rows:
            if (row.budget, row.strategy, row.domain) == (budget, strategy, domain):
                return row
        return None


def eval_sets(plan: Plan) -> dict[str, DataSource]:
    """Evaluation data per domain: its first gate's data, else the domain's `eval` data."""
    out: dict[str, DataSource] = {}
    for gate in plan.verify.gates:
        if gate.data is not None and gate.domain not in out:
            out[gate.domain] = gate.data
    for domain in plan.domains:
        if domain.name not in out and domain.eval is not None:
            out[domain.name] = domain.eval
    if not out:
        raise BuildError("a sweep needs evaluation data: give a domain an `eval` file")
    return out


Progress = Callable[[str, int, int], None]
#: slice_by(domain, record) -> the name of the slice (e.g. the task) the record belongs to.
SliceBy = Callable[[str, "Record"], str]


def _evaluate(
    model: Any,
    processor: Any,
    records: Mapping[str, Sequence[Record]],
    slice_by: SliceBy | None,
    cache: dict[Any, Any],
) -> dict[str, tuple[DomainEval, dict[str, float]]]:
    """Per domain: the DomainEval and the accuracy of each slice (one evaluation pass)."""
    out = {}
    for domain, recs in records.items():
        results = evaluate_records(model, processor, recs, cache=cache)
        slices: dict[str, list[Any]] = {}
        if slice_by is not None:
            for rec, result in zip(recs, results, strict=True):
                slices.setdefault(slice_by(domain, rec), []).append(result)
        accuracy = {name: summarize(group).accuracy for name, group in slices.items()}
        out[domain] = (summarize(results), accuracy)
    return out


def run_sweep(
    plan: Plan,
    loaded: Any,
    scores: Any,
    *,
    budgets: Sequence[int],
    strategies: Sequence[str] | None = None,
    samples: int | None = None,
    progress: Progress | None = None,
    cache_dir: Path | None = None,
    slice_by: SliceBy | None = None,
    heal: bool = False,
) -> SweepResult:
    """Evaluate every (budget, strategy) on every domain with eval data, pruning in memory.

    loaded: a `LoadedModel`; scores: the plan's `LayerScores` (one calibration for all points).
    The spec's constraints (keep, protect, spacing) apply to every strategy; a budget they make
    infeasible is recorded as an error row, not raised. Identical selections are evaluated once.
    strategies: None = `prunec.plan.strategies.sweep_strategies()` (every strategy that
    chooses layers and needs no extra scoring pass).
    progress(stage, done, total) is called as points finish. `auto` measures its candidates
    on the spec's calibration data (prepared once for all budgets; results cached in
    `cache_dir`, as in `build`). slice_by: also report accuracy
    per slice of each domain's records (e.g. per task), from the same evaluation pass.
    heal: also evaluate every point healed (`heal linear` with the spec's ridge), as strategy
    `NAME+heal` beside `NAME`: the same removed layers, each run's correction fitted and kept
    or dropped by measurement exactly as `build` does (`prunec.planning.heal`). `auto`'s
    candidates are measured unhealed here (a healed search per point would multiply its cost).
    """
    from prunec.arch import skip_layers
    from prunec.data import read_evaluation
    from prunec.plan.strategies import sweep_strategies
    from prunec.planning import Constraints, regime_for, solve
    from prunec.planning.search import SearchContext

    if strategies is None:
        strategies = sweep_strategies()

    limit = samples if samples else plan.verify.samples
    records = {
        name: read_evaluation(plan.domain(name), source, limit)
        for name, source in eval_sets(plan).items()
    }
    model, processor = loaded.model, loaded.processor
    num_layers = int(loaded.num_layers)
    base = Constraints.from_plan(plan, num_layers)
    context = SearchContext(plan, loaded, cache_dir=cache_dir, progress=False)
    inputs_cache: dict[Any, Any] = {}
    unpruned = _evaluate(model, processor, records, slice_by, inputs_cache)
    original = {d: result for d, (result, _) in unpruned.items()}
    done_sets = {(): unpruned}
    healed_sets: dict[tuple[int, ...], Any] = {}
    healer = _healer(plan, loaded, context) if heal else None
    rows: list[SweepRow] = []
    total = len(budgets) * len(strategies)
    for i, (budget, strategy) in enumerate((b, s) for b in budgets for s in strategies):
        regime = regime_for(budget, num_layers)
        problem = dataclasses.replace(base, budget=budget, strategy=strategy, remove=None)
        try:
            removed = tuple(solve(problem, scores, context=context).removed)
        except SpecError as err:
            message = err.diagnostics[0].message
            rows += _error_rows(budget, strategy, regime, records, message)
            if healer is not None:
                rows += _error_rows(budget, f"{strategy}+heal", regime, records, message)
        else:
            if removed not in done_sets:
                with skip_layers(model, removed):
                    done_sets[removed] = _evaluate(
                        model, processor, records, slice_by, inputs_cache
                    )
            variants = [(strategy, done_sets[removed])]
            if healer is not None:
                if removed not in healed_sets:
                    healed_sets[removed] = (
                        _healed(plan, healer, context, removed, records, slice_by, inputs_cache)
                        or done_sets[removed]
                    )
                variants.append((f"{strategy}+heal", healed_sets[removed]))
            for name, evaluated in variants:
                rows += _rows(budget, name, regime, removed, evaluated, original)
        if progress is not None:
            progress("sweep", i + 1, total)
    context.close()
    return SweepResult(
        spec=str(plan.spec_path or ""),
        num_layers=num_layers,
        budgets=tuple(budgets),
        strategies=tuple(
            s for name in strategies for s in ((name, f"{name}+heal") if heal else (name,))
        ),
        original=original,
        rows=tuple(rows),
        original_slices={d: slices for d, (_, slices) in unpruned.items() if slices},
    )


def _rows(
    budget: int,
    strategy: str,
    regime: str,
    removed: tuple[int, ...],
    evaluated: Mapping[str, tuple[DomainEval, dict[str, float]]],
    original: Mapping[str, DomainEval],
) -> list[SweepRow]:
    out = []
    for domain, (result, slices) in evaluated.items():
        kept = retention(original[domain], result)
        out.append(
            SweepRow(
                budget=budget,
                strategy=strategy,
                regime=regime,
                domain=domain,
                removed=removed,
                accuracy=result.accuracy,
                nll=result.nll,
                retention_accuracy=kept["accuracy"],
                retention_nll=kept["nll"],
                slices=slices,
            )
        )
    return out


def _healer(plan: Plan, loaded: Any, context: Any) -> Any:
    from prunec.planning.heal import LinearHealer

    return LinearHealer(
        loaded.model,
        lambda: context.objective().iter_batches("search"),
        plan.normalized_weights(),
        plan.prune.heal.ridge,
    )


def _healed(
    plan: Plan,
    healer: Any,
    context: Any,
    removed: tuple[int, ...],
    records: Mapping[str, Sequence[Record]],
    slice_by: SliceBy | None,
    cache: dict[Any, Any],
) -> dict[str, tuple[DomainEval, dict[str, float]]] | None:
    """The evaluation of `removed` healed as `build` heals it; None when every correction
    was dropped (the unhealed evaluation then stands)."""
    from prunec.arch import skip_layers
    from prunec.plan.model import HealSpec
    from prunec.planning.heal import heal_selection

    spec = HealSpec(method="linear", ridge=plan.prune.heal.ridge)
    _, kept = heal_selection(healer, context.objective(), removed, spec)
    if not kept:
        return None
    with healer.applied(kept), skip_layers(healer.model, removed):
        return _evaluate(healer.model, context.loaded().processor, records, slice_by, cache)


def _error_rows(
    budget: int, strategy: str, regime: str, records: Mapping[str, Any], message: str
) -> list[SweepRow]:
    nan = float("nan")
    return [
        SweepRow(budget, strategy, regime, d, (), nan, nan, nan, nan, error=message)
        for d in records
    ]


def write_json(result: SweepResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")


def write_csv(result: SweepResult, path: Path) -> None:
    fields = [f.name for f in dataclasses.fields(SweepRow)]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        for row in result.rows:
            values = dataclasses.asdict(row)
            values["removed"] = " ".join(str(i) for i in row.removed)
            values["slices"] = json.dumps(row.slices, sort_keys=True) if row.slices else ""
            writer.writerow(values)


def plot(result: SweepResult, path: Path, *, dpi: int = 80) -> None:
    """Accuracy retention vs budget: one panel per domain, one line per strategy, regimes shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prunec.planning import LOW_MAX, MODERATE_MAX

    domains = result.domains
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.4), squeeze=False)
    n = result.num_layers
    edges = [0.5, LOW_MAX * n + 0.5, MODERATE_MAX * n + 0.5, max(result.budgets) + 0.5]
    shades = [("low", "#e8f4e8"), ("moderate", "#fdf3e1"), ("high", "#f9e3e3")]
    for ax, domain in zip(axes[0], domains, strict=True):
        for (name, colour), left, right in zip(shades, edges, edges[1:], strict=False):
            if right > left:
                ax.axvspan(left, right, color=colour, zorder=0)
                ax.text((left + right) / 2, 0.02, name, ha="center", fontsize=7, color="#555")
        for strategy in result.strategies:
            points = [result.point(b, strategy, domain) for b in result.budgets]
            xs = [b for b, p in zip(result.budgets, points, strict=True) if p and not p.error]
            ys = [p.retention_accuracy for p in points if p and not p.error]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=strategy)
        ax.set_title(f"{domain} (original accuracy {result.original[domain].accuracy:.0%})")
        ax.set_xlabel(f"layers removed (of {n})")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy retention")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def render_table(result: SweepResult, width: int = 120) -> str:
    """The sweep as a plain-text table: accuracy retention per domain, per budget and strategy."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep: accuracy retention ({result.num_layers} layers)")
    table.add_column("budget", justify="right")
    table.add_column("regime")
    table.add_column("strategy")
    for domain in result.domains:
        table.add_column(domain, justify="right")
    table.add_column("removed")
    for budget in result.budgets:
        for strategy in result.strategies:
            points = [result.point(budget, strategy, d) for d in result.domains]
            first = next(p for p in points if p is not None)
            cells = [
                "n/a" if p is None or p.error else f"{100 * p.retention_accuracy:.1f}%"
                for p in points
            ]
            removed = first.error or " ".join(map(str, first.removed))
            table.add_row(str(budget), first.regime, strategy, *cells, removed)
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(table)
    return console.export_text().rstrip()
