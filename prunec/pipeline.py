"""The build pipeline: spec -> model -> scores -> selection -> verified artifacts + lockfile.

Order matters for the "nothing half-done" promise:
1. everything that can be checked without the model (spec, data files, target support) is
   checked first, so a bad spec costs no model load;
2. the model's layer count is checked against the spec (out-of-range indices, budget);
3. scoring (cached), solving, `heal`'s fitting and measuring (`Healing`), and the `--locked`
   comparison happen before any surgery;
4. the original model is evaluated for the gates, then healed (the kept corrections folded
   into its weights) and pruned in place (one copy in memory);
5. gates are checked before emission; a failed gate publishes nothing;
6. every target is written into a staging directory beside it and self-checked; only when all
   targets passed are they moved into place, then the lockfile is written.

The model is held once. Targets that stream (HF) take what they need from it first
(`Backend.prepare`: reference logits), targets that need it (ONNX) are written next, then the
build releases the model and the streaming targets are written from the source's shards and
self-checked in fresh processes that can use the memory it held.

A manual `remove` list with only HF targets and no gates needs no weights in this process:
such builds (`can_stream`) copy the kept tensors shard by shard from the local safetensors
checkpoint (a local folder or a hub cache snapshot) and self-check in a child process, so
memory stays flat in the model's size.

Launched as several processes (torchrun / accelerate launch, `prunec.distributed`), every
process loads the model, scores and searches on its shard of the calibration data; once the
layers to remove are known the processes meet at a barrier and all but rank 0 stop. Rank 0
alone holds the target locks, prints, verifies, emits and writes the lockfile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.errors import BuildError, Diagnostic, SourceMap, SpecError, VerifyError
from prunec.plan.model import Plan, TargetSpec

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel
    from prunec.planning import Selection
    from prunec.scoring import LayerScores
    from prunec.verify import DomainEval, GateReport

Reporter = Callable[[str], None]


@dataclass(frozen=True)
class TargetResult:
    """One published artifact. report: the emitter's own report (HFReport / OnnxReport)."""

    target: TargetSpec
    report: Any


@dataclass(frozen=True)
class BuildResult:
    """What `build` produced.

    scores: None for manual selection (an explicit `remove` list needs no calibration).
    gates: None when the spec has no `verify` gates.
    lock_path: None when the lockfile was not written (`write_lock=False`).
    """

    plan: Plan
    num_layers: int
    selection: Selection
    scores: LayerScores | None
    targets: tuple[TargetResult, ...]
    gates: GateReport | None
    lock_path: Path | None
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def quiet_transformers() -> None:
    """prunec reports its own progress; transformers' per-shard bars would interleave."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _say(reporter: Reporter | None, message: str) -> None:
    if reporter is not None:
        reporter(message)


#: Files that `check` only warns about (the demo creates them) must exist when building.
_MISSING_AT_BUILD = {"W301": "E310", "W302": "E311"}


def preflight(plan: Plan, *, force: bool = False) -> None:
    """Checks that need neither torch nor the model: every file the spec names exists, and no
    target would replace something prunec did not write (`force`: a foreign directory may go).

    Raises SpecError with every problem found, each pointing at the spec.
    """
    from prunec.syntax.model_checks import missing_file_warnings, target_problems

    diags = [
        replace(
            d,
            code=_MISSING_AT_BUILD.get(d.code, d.code),
            message=d.message.removesuffix(" yet"),
            severity="error",
        )
        for d in missing_file_warnings(plan)
    ]
    diags += target_problems(plan, force)
    if diags:
        raise SpecError(diags, _sources(plan, diags))


def _sources(plan: Plan, diags: Sequence[Diagnostic]) -> SourceMap:
    """The spec's text under every file name the diagnostics' spans use."""
    sources = SourceMap()
    for diag in diags:
        if diag.span is not None:
            sources.add(diag.span.file, plan.spec_text)
    return sources


def check_model_fit(plan: Plan, num_layers: int) -> None:
    """Raise SpecError when the spec does not fit a model with `num_layers` decoder layers."""
    from prunec.syntax import validate_against_model

    diags = validate_against_model(plan, num_layers)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise SpecError(errors, _sources(plan, errors))


def model_config_dict(loaded: LoadedModel) -> dict[str, Any]:
    """The loaded model's config as config.json would hold it."""
    config: Any = loaded.model.config
    return dict(config.to_dict())


def check_targets_supported(plan: Plan, config: dict[str, Any]) -> None:
    """Fail before any work when a target kind cannot handle this model (BuildError)."""
    from prunec.backends.base import backend_for

    for target in plan.targets:
        backend_for(target.kind).check_supported(config)


def check_heal_supported(plan: Plan, config: dict[str, Any]) -> None:
    """Fail before any work when `heal` cannot fold its corrections exactly into this model
    type (SpecError E314, pointing at the `heal` line)."""
    from prunec.syntax.model_checks import heal_problems

    diags = heal_problems(plan, config)
    if diags:
        raise SpecError(diags, _sources(plan, diags))


class Healing:
    """`heal` in a build: fits and measures corrections for the selection while the model
    still has every layer (`fit`), then folds the kept ones into its weights (`fold`, after
    the original model was evaluated for the gates).

    With `auto`, the search measures every candidate healed (`transform`); the objective and
    the fitted corrections are shared with the search, so the winner's fits are reused.
    """

    def __init__(self, plan: Plan, loaded: LoadedModel, context: Any = None) -> None:
        from prunec.planning.heal import healer_for, search_transform

        self.plan = plan
        self.loaded = loaded
        self.context = context
        self._objective: Any = None
        self.healer = healer_for(plan, loaded, self.objective)
        self.corrections: dict[int, Any] = {}
        if context is not None:
            context.transform = search_transform(lambda: self.healer, plan.prune.heal)

    def objective(self) -> Any:
        if self.context is not None:
            return self.context.objective()
        if self._objective is None:
            from prunec.planning.measure import MeasuredObjective

            self._objective = MeasuredObjective.from_plan(self.plan, self.loaded)
        return self._objective

    def fit(self, selection: Selection) -> Selection:
        """The selection with its healing record; the kept corrections wait for `fold`."""
        from prunec.planning.heal import heal_selection

        record, self.corrections = heal_selection(
            self.healer, self.objective(), selection.removed, self.plan.prune.heal
        )
        self._objective = None  # its cached hidden states are not needed any more
        return replace(selection, healing=record)

    def fold(self) -> None:
        self.healer.fold(self.corrections)


def _needs_samples(plan: Plan) -> bool:
    from prunec.backends.base import backend_for

    return any(backend_for(t.kind).needs_samples for t in plan.targets)


def evaluate_domains(
    plan: Plan, loaded: LoadedModel, reporter: Reporter | None = None, label: str = ""
) -> dict[str, DomainEval]:
    """Evaluate the model on every gated domain's evaluation data."""
    from prunec.data import read_evaluation
    from prunec.verify import evaluate

    results: dict[str, DomainEval] = {}
    for gate in plan.verify.gates:
        if gate.domain in results:
            continue
        records = read_evaluation(plan.domain(gate.domain), gate.data, plan.verify.samples)
        results[gate.domain] = evaluate(loaded.model, loaded.processor, records)
        result = results[gate.domain]
        _say(
            reporter,
            f"{label}{gate.domain}: accuracy {result.accuracy:.1%}, "
            f"answer NLL {result.nll:.3f} ({result.n} samples)",
        )
    return results


def calibration_inputs(plan: Plan, loaded: LoadedModel, limit: int = 2) -> list[dict[str, Any]]:
    """A few real model inputs from the calibration data, for artifact parity checks."""
    from prunec.data import encode, read_calibration

    inputs: list[dict[str, Any]] = []
    for domain in plan.domains:
        if isinstance(domain.data, Path) and not domain.data.exists():
            continue
        records = read_calibration(domain, samples=limit)
        for record in records:
            inputs.append(dict(encode(loaded.processor, [record], domain.max_length)))
    return inputs


def emit_target(
    target: TargetSpec,
    loaded: LoadedModel | None,
    selection: Selection,
    staged: Path,
    plan: Plan,
    samples: Sequence[dict[str, Any]] = (),
    scores: LayerScores | None = None,
    prepared: Any = None,
) -> Any:
    """Write one target into its staging directory and self-check it (its kind's `emit`).

    loaded: the pruned model, or None for a streamed build or once the build released it
    (kinds with `streams`; then `prepared` holds what their `prepare` took from it).
    """
    from prunec.backends.atomic import MANIFEST, write_manifest
    from prunec.backends.base import EmitJob, backend_for

    job = EmitJob(plan, target, selection, staged, loaded, samples, scores, prepared)
    report = backend_for(target.kind).emit(job)
    if not (staged / MANIFEST).is_file():  # what marks the folder as prunec's to replace later
        meta = {"kind": target.kind, "source": plan.model.source, "removed": selection.removed}
        write_manifest(staged, meta)
    return report


def ensure_pruned(loaded: LoadedModel, selection: Selection) -> None:
    """Apply the selection's surgery to `loaded.model` unless it is already applied."""
    from prunec.arch import locate_decoder, remove_layers

    current = len(locate_decoder(loaded.model).layers)
    if current == len(selection.kept):
        return
    if current != loaded.num_layers:
        raise BuildError(
            f"the model has {current} decoder layers: neither the original "
            f"{loaded.num_layers} nor the selection's {len(selection.kept)}"
        )
    remove_layers(loaded.model, list(selection.removed))


@contextmanager
def hold_targets(targets: Sequence[TargetSpec], reporter: Reporter | None = None) -> Iterator[None]:
    """Hold every target's build lock (see `prunec.backends.atomic.target_lock`).

    Taken before the model loads, so an unwritable target or a concurrent build of the same
    target fails in seconds (BuildError), and left-overs of dead builds are cleaned first.
    """
    from prunec.backends.atomic import target_lock

    with ExitStack() as stack:
        for target in targets:
            stack.enter_context(target_lock(target.path, reporter))
        yield


def stage_and_publish(
    targets: Sequence[TargetSpec],
    write: Callable[[TargetSpec, Path, Any], Any],
    reporter: Reporter | None = None,
    how: str = "staged, self-checked",
    *,
    force: bool = False,
    prepare: Callable[[TargetSpec, Path], Any] | None = None,
) -> tuple[TargetResult, ...]:
    """Write every target into a staging directory beside it with `write(target, staged,
    prepared)` (which self-checks and returns its report), then publish them all. Every
    staging directory exists first, and `prepare(target, staged)` (if given) runs for every
    target before the first write; its result is `prepared`. Nothing is published unless
    every target was written; a failure removes every staging directory. `force` allows
    replacing a directory prunec did not write.
    """
    from prunec.backends.atomic import publish, staging_directory

    results: list[TargetResult] = []
    with ExitStack() as stack:
        stack.enter_context(hold_targets(targets, reporter))
        staged_dirs = [(stack.enter_context(staging_directory(t.path)), t) for t in targets]
        prepared = [prepare(t, staged) if prepare else None for staged, t in staged_dirs]
        for (staged, target), ready in zip(staged_dirs, prepared, strict=True):
            results.append(TargetResult(target, write(target, staged, ready)))
            _say(reporter, f"emitted {target.kind} target ({how})")
        for staged, target in staged_dirs:
            publish(staged, target.path, force=force)
            _say(reporter, f"published {target.path}")
    return tuple(results)


class HeldModel:
    """The build's one reference to the loaded model, so emission can drop it.

    `release()` forgets the model and returns its memory to the system (the weights of a
    model loaded without conversion are the checkpoint file's pages; they are unmapped).
    """

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded: LoadedModel | None = loaded

    def get(self) -> LoadedModel:
        if self.loaded is None:
            raise RuntimeError("the model was already released")
        return self.loaded

    def release(self) -> None:
        if self.loaded is None:
            return
        self.loaded = None
        import gc

        gc.collect()
        _trim_heap()


def _trim_heap() -> None:
    """Ask glibc to hand freed heap memory back to the system (no-op elsewhere)."""
    import contextlib
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def _emit_held(
    plan: Plan,
    held: HeldModel,
    selection: Selection,
    *,
    scores: LayerScores | None,
    samples: Sequence[dict[str, Any]],
    reporter: Reporter | None,
    force: bool,
    release: bool,
) -> tuple[TargetResult, ...]:
    """Emit every target of `plan` from the pruned model in `held`: streaming kinds prepare
    first, kinds that need the model are written next (in the compute dtype), then, with
    `release`, the model is dropped before the streaming kinds write and self-check."""
    from prunec.arch.precision import materialize
    from prunec.backends.base import EmitJob, backend_for

    def streams(target: TargetSpec) -> bool:
        return backend_for(target.kind).streams

    def prepare(target: TargetSpec, staged: Path) -> Any:
        if not streams(target):
            return None
        job = EmitJob(plan, target, selection, staged, held.get(), samples, scores)
        return backend_for(target.kind).prepare(job)

    def write(target: TargetSpec, staged: Path, prepared: Any) -> Any:
        if streams(target):
            if release:
                held.release()
            loaded = held.loaded if prepared is None else None
            return emit_target(target, loaded, selection, staged, plan, samples, scores, prepared)
        materialize(held.get().model)
        return emit_target(target, held.get(), selection, staged, plan, samples, scores)

    ordered = sorted(plan.targets, key=streams)  # stable: the model's users first
    results = stage_and_publish(ordered, write, reporter, force=force, prepare=prepare)
    by_target = {id(r.target): r for r in results}
    return tuple(by_target[id(t)] for t in plan.targets)


def emit(
    plan: Plan,
    loaded: LoadedModel,
    selection: Selection,
    *,
    scores: LayerScores | None = None,
    samples: list[dict[str, Any]] | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
) -> tuple[TargetResult, ...]:
    """Write, self-check and publish every target of `plan` for the pruned model.

    Applies the selection's surgery first if the model still has all its layers. Each target
    is staged beside its final path; targets are published only after all of them passed,
    so a failure leaves every earlier artifact untouched. A target replaces only what an
    earlier prunec build published (`force`: a foreign directory too). The caller keeps
    `loaded` (a build releases its own model before the self-checks instead).
    """
    ensure_pruned(loaded, selection)
    if samples is None:
        samples = calibration_inputs(plan, loaded) if _needs_samples(plan) else []
    return _emit_held(
        plan,
        HeldModel(loaded),
        selection,
        scores=scores,
        samples=samples,
        reporter=reporter,
        force=force,
        release=False,
    )


def can_stream(plan: Plan) -> bool:
    """True when the build needs no weights in memory: an explicit `remove` list, no `heal`,
    no gates, only target kinds that stream, and a local safetensors checkpoint. Such builds copy the
    kept tensors shard by shard (`prunec.backends.hf.stream`), so memory stays flat in the
    model's size.
    """
    from prunec.backends.base import backend_for

    return (
        plan.prune.remove is not None
        and not plan.prune.heal.enabled
        and not plan.verify.gates
        and bool(plan.targets)
        and all(backend_for(t.kind).streams for t in plan.targets)
        and plan.model.local
        and any(Path(plan.model.source).glob("*.safetensors"))
    )


def _build_streaming(
    plan: Plan,
    num_layers: int,
    *,
    locked: bool,
    write_lock: bool,
    reporter: Reporter | None,
    started: float,
    force: bool,
) -> BuildResult:
    """`build` for `can_stream` plans: stream, self-check in child processes, publish."""
    from prunec import lock as lockfile
    from prunec.planning import solve

    check_model_fit(plan, num_layers)
    selection = solve(plan, {}, num_layers)
    _say(reporter, f"streaming: removing layers {list(selection.removed)} without loading weights")
    lock_path = lockfile.lock_path_for(plan)
    if locked:
        lockfile.check_lock(lock_path, plan, None, None, selection)
    results = stage_and_publish(
        plan.targets,
        lambda target, staged, _: emit_target(target, None, selection, staged, plan),
        reporter,
        "streamed, self-checked",
        force=force,
    )
    written_lock = (
        lockfile.write_lock(lock_path, plan, None, None, selection) if write_lock else None
    )
    return BuildResult(
        plan=plan,
        num_layers=num_layers,
        selection=selection,
        scores=None,
        targets=results,
        gates=None,
        lock_path=written_lock,
        seconds=time.perf_counter() - started,
        timings=_emit_timings(results),
    )


def _worker_result(plan: Plan, num_layers: int | None, started: float) -> BuildResult:
    """What a worker process of a distributed launch returns for a build it has no share in
    (a manual `remove` list): the selection, nothing published."""
    from prunec.plan.model_info import read_layer_count
    from prunec.planning import solve

    count = num_layers if num_layers is not None else read_layer_count(plan.model)
    if count is None:  # a hub id: its config (from the hub or its cache), no weights
        from prunec.arch.loading import hub_reachable, load_config
        from prunec.plan.model_info import layer_count

        local_only = not plan.model.local and not hub_reachable()
        count = layer_count(load_config(plan.model, local_only).to_dict()) or 0
    selection = solve(plan, {}, count)
    return BuildResult(plan, count, selection, None, (), None, None, time.perf_counter() - started)


def _emit_timings(results: Sequence[TargetResult]) -> dict[str, float]:
    timings: dict[str, float] = {}
    for result in results:
        key = f"emit_{result.target.kind}"
        timings[key] = timings.get(key, 0.0) + float(getattr(result.report, "seconds", 0.0))
    return timings


def build(
    spec: str | Path | Plan,
    *,
    locked: bool = False,
    write_lock: bool = True,
    cache_dir: Path | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
) -> BuildResult:
    """Run the whole pipeline for one spec. See the module docstring for the order.

    force: allow a target to replace a directory that prunec did not write.
    """
    from prunec.distributed import is_worker, world_size
    from prunec.syntax import load_spec

    started = time.perf_counter()
    quiet_transformers()
    plan = spec if isinstance(spec, Plan) else load_spec(spec)
    preflight(plan, force=force)
    worker = is_worker()  # computes its share with rank 0, then stops: no locks, no output
    reporter = None if worker else reporter
    if world_size() > 1:
        _say(reporter, f"data-parallel over {world_size()} processes (rank 0 publishes)")
    with ExitStack() if worker else hold_targets(plan.targets, reporter):
        num_layers = None
        if can_stream(plan):
            from prunec.plan.model_info import read_layer_count

            num_layers = read_layer_count(plan.model)
        if worker and plan.prune.remove is not None:  # no calibration pass to share
            return _worker_result(plan, num_layers, started)
        if num_layers is not None:
            return _build_streaming(
                plan,
                num_layers,
                locked=locked,
                write_lock=write_lock,
                reporter=reporter,
                started=started,
                force=force,
            )
        return _build_in_memory(
            plan,
            locked=locked,
            write_lock=write_lock,
            cache_dir=cache_dir,
            reporter=reporter,
            started=started,
            force=force,
        )


def _build_in_memory(
    plan: Plan,
    *,
    locked: bool,
    write_lock: bool,
    cache_dir: Path | None,
    reporter: Reporter | None,
    started: float,
    force: bool,
) -> BuildResult:
    """`build` with the model in memory: load, score, solve, gate, emit, lock.

    The model is held once, by `held`; it is released during emission (see `_emit_held`),
    so everything that needs it afterwards (the lockfile's content) is taken before.
    """
    from prunec.arch.loading import load_model

    timings: dict[str, float] = {}
    tick = time.perf_counter()
    held = HeldModel(load_model(plan.model))
    loaded = held.get()
    timings["load"] = time.perf_counter() - tick
    computes = (
        f"; {loaded.storage_dtype} weights, computing in {loaded.compute_dtype}"
        if loaded.compute_dtype != loaded.storage_dtype
        else ""
    )
    _say(reporter, f"loaded {plan.model.source} ({loaded.num_layers} decoder layers{computes})")
    check_model_fit(plan, loaded.num_layers)
    check_targets_supported(plan, model_config_dict(loaded))
    if plan.prune.heal.enabled:
        check_heal_supported(plan, model_config_dict(loaded))

    from prunec.plan.registry import strategies
    from prunec.planning import solve

    scores = None
    if plan.prune.remove is None:
        from prunec.scoring import score

        tick = time.perf_counter()
        scores = score(plan, loaded, cache_dir=cache_dir)
        timings["score"] = time.perf_counter() - tick
    context = None
    info = strategies().get(plan.prune.strategy)
    if plan.prune.remove is None and info is not None and info.measured:
        from prunec.planning.search import SearchContext

        context = SearchContext(plan, loaded, cache_dir=cache_dir, progress=reporter is not None)
    healing = Healing(plan, loaded, context) if plan.prune.heal.enabled else None
    tick = time.perf_counter()
    selection = solve(
        plan, scores if scores is not None else {}, loaded.num_layers, context=context
    )
    if context is not None:
        timings["search"] = time.perf_counter() - tick
    from prunec.distributed import finish

    if plan.prune.remove is None and finish():  # a worker process: its share is done
        seconds = time.perf_counter() - started
        return BuildResult(plan, loaded.num_layers, selection, scores, (), None, None, seconds)
    _say(reporter, f"selected layers to remove: {list(selection.removed)} ({selection.regime})")
    if selection.search is not None:
        from prunec.report import search_line

        _say(reporter, search_line(selection.search))
    if healing is not None:
        from prunec.report import healing_lines

        tick = time.perf_counter()
        selection = healing.fit(selection)
        timings["heal"] = time.perf_counter() - tick
        for line in healing_lines(selection):
            _say(reporter, line)
    if context is not None:
        context.close()  # the search's cached hidden states are not needed any more

    from prunec import lock as lockfile

    lock_path = lockfile.lock_path_for(plan)
    if locked:
        lockfile.check_lock(lock_path, plan, loaded, scores, selection)

    original: dict[str, DomainEval] = {}
    if plan.verify.gates:
        tick = time.perf_counter()
        original = evaluate_domains(plan, loaded, reporter, label="original ")
        timings["eval_original"] = time.perf_counter() - tick

    samples = calibration_inputs(plan, loaded) if _needs_samples(plan) else []

    if healing is not None:
        healing.fold()
        del healing
    ensure_pruned(loaded, selection)

    gates = None
    if plan.verify.gates:
        from prunec.verify import check_gates

        tick = time.perf_counter()
        pruned = evaluate_domains(plan, loaded, reporter, label="pruned   ")
        timings["eval_pruned"] = time.perf_counter() - tick
        gates = check_gates(plan, original, pruned)
        if not gates.passed:
            raise VerifyError("a verify gate failed; no target was published", gates.render())

    num_layers = loaded.num_layers
    lock_content = lockfile.lock_data(plan, loaded, scores, selection) if write_lock else None
    del loaded  # from here on `held` is the only reference: emission releases it
    results = _emit_held(
        plan,
        held,
        selection,
        scores=scores,
        samples=samples,
        reporter=reporter,
        force=force,
        release=True,
    )
    timings.update(_emit_timings(results))

    written = None
    if lock_content is not None:
        written = lockfile.write_lock_data(lock_path, lock_content)
    return BuildResult(
        plan=plan,
        num_layers=num_layers,
        selection=selection,
        scores=scores,
        targets=tuple(results),
        gates=gates,
        lock_path=written,
        seconds=time.perf_counter() - started,
        timings=timings,
    )


__all__ = ["BuildResult", "TargetResult", "build", "emit", "ensure_pruned", "preflight"]
