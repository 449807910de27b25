"""The scoring engine: hooks on the decoder stack, one forward pass per batch, running sums.

For each batch (all from one domain) one forward pass scores every layer: a forward hook on
each decoder layer sees the hidden state entering it (h_l) and leaving it (h_{l+1}) and adds
masked per-token cosine and angular sums into per-layer totals; last-token states of every
layer are kept only until the end of the batch, where they give the pairwise angular
distances Gromov et al.'s block strategy needs for any block size. Nothing survives a batch
but per-layer scalars and one (L+1)x(L+1) matrix per domain, so memory is flat in the number
of samples. Per-batch statistics are reduced on each layer's own device in float32 and moved to
CPU float64 totals, so layers spread over devices (accelerate device maps) just work.
Launched as several processes (torchrun), each scores its shard of the batches and the totals
are added up across processes (`prunec.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from prunec import distributed
from prunec.data import Record, encode, read_calibration, records_digest
from prunec.distributed import Group, agreed, is_worker
from prunec.errors import BuildError, SourceMap, SpecError
from prunec.plan.model import Plan
from prunec.scoring.cache import (
    SCORING_VERSION,
    ScoreCache,
    cache_key,
    data_fingerprint,
    file_digest,
    model_fingerprint,
    state_dict_fingerprint,
)
from prunec.scoring.scores import DomainStats, LayerScores

if TYPE_CHECKING:
    from prunec.arch.loading import LazyModel, LoadedModel


class _Totals:
    """Running float64 CPU sums for one domain."""

    def __init__(self, num_layers: int):
        self.cos_all = np.zeros(num_layers)
        self.ang_all = np.zeros(num_layers)
        self.cos_last = np.zeros(num_layers)
        self.ang_last = np.zeros(num_layers)
        self.pairs = np.zeros((num_layers + 1, num_layers + 1))
        self.tokens = 0
        self.samples = 0

    def vector(self) -> np.ndarray:
        """Every running sum in one float64 vector (what a distributed build adds up)."""
        counts = [float(self.tokens), float(self.samples)]
        rows = [self.cos_all, self.ang_all, self.cos_last, self.ang_last, self.pairs.ravel()]
        return np.concatenate([*rows, counts])

    def load(self, vector: np.ndarray) -> None:
        """Set the sums from `vector` (laid out as `vector()` writes it)."""
        n = len(self.cos_all)
        parts = np.split(vector[:-2], [n, 2 * n, 3 * n, 4 * n])
        self.cos_all, self.ang_all, self.cos_last, self.ang_last = parts[:4]
        self.pairs = parts[4].reshape(n + 1, n + 1)
        self.tokens, self.samples = round(float(vector[-2])), round(float(vector[-1]))

    def stats(self) -> DomainStats:
        t, s = max(self.tokens, 1), max(self.samples, 1)
        return DomainStats(
            cos_all=tuple(float(v) for v in self.cos_all / t),
            cos_last=tuple(float(v) for v in self.cos_last / s),
            angular_all=tuple(float(v) for v in self.ang_all / t),
            angular_last=tuple(float(v) for v in self.ang_last / s),
            pair_angular_last=tuple(tuple(float(v) for v in row) for row in self.pairs / s),
            tokens=self.tokens,
            samples=self.samples,
        )


class LayerStatsCollector:
    """Forward hooks that turn one forward pass into per-layer statistics for one batch."""

    def __init__(self, layers: Sequence[torch.nn.Module]):
        self.layers = list(layers)
        self.mask: torch.Tensor | None = None
        self._placed: dict[tuple[str, tuple[int, ...]], tuple[torch.Tensor, torch.Tensor]] = {}
        self._batch: list[tuple[torch.Tensor, ...] | None] = []
        self._last_states: list[torch.Tensor | None] = []
        self._handles: list[Any] = []

    @contextmanager
    def attached(self) -> Iterator[LayerStatsCollector]:
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._hook(index), with_kwargs=True))
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def begin(self, attention_mask: torch.Tensor) -> None:
        self.mask = attention_mask.to("cpu", torch.bool)
        self._placed = {}
        n = len(self.layers)
        self._batch = [None] * n
        self._last_states = [None] * (n + 1)

    def _hook(self, index: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple | list) else output
            self._observe(index, h_in.detach(), h_out.detach())

        return hook

    def _masks(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token mask [B, S] on h's device, last-token index [B]), made once per device."""
        key = (str(h.device), tuple(h.shape[:2]))
        if key not in self._placed:
            self._placed[key] = self._place(h)
        return self._placed[key]

    def _place(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.mask is not None
        mask = self.mask
        if mask.shape != h.shape[:2]:  # the model changed the sequence: score every position
            mask = torch.ones(h.shape[:2], dtype=torch.bool)
        positions = torch.arange(mask.shape[1]).expand_as(mask)
        last = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
        return mask.to(h.device), last.to(h.device)

    def _observe(self, index: int, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        mask, last = self._masks(h_in)
        cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1, eps=1e-8)
        angle = torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi
        rows = torch.arange(cos.shape[0], device=cos.device)
        weight = mask.float()
        self._batch[index] = (
            (cos * weight).sum(),
            (angle * weight).sum(),
            cos[rows, last].sum(),
            angle[rows, last].sum(),
        )
        self._last_states[index] = h_in[rows, last].float()
        if index == len(self.layers) - 1:
            self._last_states[index + 1] = h_out[rows, last].float()

    def end(self, totals: _Totals) -> None:
        """Move this batch's per-layer sums to CPU and add them to `totals`."""
        assert self.mask is not None
        if any(entry is None for entry in self._batch):
            raise BuildError("a decoder layer did not run in the forward pass; cannot score it")
        sums = np.array([[float(v) for v in entry] for entry in self._batch if entry is not None])
        totals.cos_all += sums[:, 0]
        totals.ang_all += sums[:, 1]
        totals.cos_last += sums[:, 2]
        totals.ang_last += sums[:, 3]
        states = torch.stack([s.to("cpu") for s in self._last_states if s is not None], dim=1)
        unit = F.normalize(states.double(), dim=-1)  # [B, L+1, H]
        cos = (unit @ unit.transpose(1, 2)).clamp(-1.0, 1.0)
        totals.pairs += (torch.arccos(cos) / math.pi).sum(dim=0).numpy()
        totals.tokens += int(self.mask.sum())
        totals.samples += int(self.mask.shape[0])
        self._batch, self._last_states = [], []


@dataclass(frozen=True)
class Batch:
    """One calibration batch: its domain, its records and the encoded model inputs."""

    domain: str
    records: tuple[Record, ...]
    inputs: dict[str, torch.Tensor]


def _chunks(
    plan: Plan, records: dict[str, list[Record]]
) -> Iterator[tuple[Any, tuple[Record, ...]]]:
    """(domain, records) of every batch, in order: `plan.prune.batch_size` records of one
    domain and one modality (image / text) each."""
    size = max(plan.prune.batch_size, 1)
    for domain in plan.domains:
        chunks = [r for r in records[domain.name] if r.image is not None]
        texts = [r for r in records[domain.name] if r.image is None]
        for group in (chunks, texts):
            for start in range(0, len(group), size):
                yield domain, tuple(group[start : start + size])


def calibration_batches(
    plan: Plan, processor: Any, records: dict[str, list[Record]], shard: Group | None = None
) -> Iterator[Batch]:
    """Batches of `plan.prune.batch_size`, one domain and one modality (image / text) each;
    with `shard`, only this process's batches (only those are encoded)."""
    for index, (domain, part) in enumerate(_chunks(plan, records)):
        if shard is None or shard.owns(index):
            yield Batch(domain.name, part, encode(processor, part, domain.max_length))


def model_inputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Inputs on the model's input device, floats in its compute dtype, without training-only
    keys."""
    from prunec.arch.precision import compute_dtype

    device = getattr(model, "device", torch.device("cpu"))
    dtype = compute_dtype(model)
    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key in ("answer_mask", "labels"):
            continue
        value = value.to(device)
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out


def forward_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """Extra forward arguments: no KV cache, and logits for one position only (cheaper)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    extra: dict[str, Any] = {"use_cache": False}
    if "logits_to_keep" in params:
        extra["logits_to_keep"] = 1
    return extra


def collect_scores(
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    batches: Iterator[Batch],
    domains: Sequence[str],
    total_samples: int,
    group: Group | None = None,
) -> dict[str, DomainStats]:
    """Run every batch once through `model` with hooks on `layers`; per-domain statistics.

    group: the batches are this process's shard; the sums of every process are added up.
    """
    totals = {name: _Totals(len(layers)) for name in domains}
    if group is None:
        _accumulate(model, layers, batches, totals, total_samples)
    else:

        def share() -> np.ndarray:
            _accumulate(model, layers, batches, totals, total_samples)
            return np.concatenate([totals[name].vector() for name in domains])

        width = len(_Totals(len(layers)).vector())
        summed = group.run_and_sum("scoring", width * len(domains), share)
        for i, name in enumerate(domains):
            totals[name].load(summed[i * width : (i + 1) * width])
    return {name: totals[name].stats() for name in domains}


def _accumulate(
    model: torch.nn.Module,
    layers: Sequence[torch.nn.Module],
    batches: Iterator[Batch],
    totals: dict[str, _Totals],
    total_samples: int,
) -> None:
    from prunec.progress import progress

    collector = LayerStatsCollector(layers)
    extra = forward_kwargs(model)
    with (
        progress("scoring", total=total_samples, unit="samples") as bar,
        collector.attached(),
        torch.inference_mode(),
    ):
        for batch in batches:
            bar.update(note=batch.domain)
            collector.begin(batch.inputs["attention_mask"])
            try:
                model(**model_inputs(model, batch.inputs), **extra)
            except (RuntimeError, ValueError, IndexError, TypeError) as err:
                where = batch.records[0].where if batch.records else batch.domain
                raise BuildError(
                    f"forward pass failed on the batch starting at {where} "
                    f"(domain `{batch.domain}`): {type(err).__name__}: {err}"
                ) from err
            collector.end(totals[batch.domain])
            bar.advance(len(batch.records))


def read_all_records(plan: Plan) -> dict[str, list[Record]]:
    """Every domain's calibration records; one SpecError with the problems of all files."""
    records: dict[str, list[Record]] = {}
    errors: list[SpecError] = []
    for domain in plan.domains:
        try:
            records[domain.name] = read_calibration(domain)
        except SpecError as err:
            errors.append(err)
    if errors:
        sources = SourceMap({k: v for e in errors for k, v in e.sources.texts.items()})
        raise SpecError([d for e in errors for d in e.diagnostics], sources)
    return records


def _hub_snapshot(plan: Plan) -> Path | None:
    """The local hub-cache snapshot of a hub model, if already downloaded (no network)."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            plan.model.source, revision=plan.model.revision, local_files_only=True
        )
    except Exception:  # not cached, or not a valid hub id: fingerprint after loading
        return None
    return Path(path)


def _model_fp(plan: Plan, loaded: LoadedModel | None, memo: Path) -> str | None:
    source = loaded.source_dir if loaded is not None else None
    if source is None:
        source = Path(plan.model.source) if plan.model.local else _hub_snapshot(plan)
    if source is not None and Path(source).is_dir():
        return model_fingerprint(Path(source), memo)
    return state_dict_fingerprint(loaded.model) if loaded is not None else None


def needs_ablation(plan: Plan) -> bool:
    """Whether the spec's strategy ranks layers by an ablation order that scoring computes
    (its registry declaration's `ablation` flag; `iterative` today)."""
    from prunec.plan.registry import strategies

    info = strategies().get(plan.prune.strategy)
    return bool(info is not None and info.ablation)


def scorer_settings(plan: Plan) -> dict[str, Any]:
    """What besides model and data changes the scores: dtype, and for `iterative` what its
    ablation order depends on (budget depth, layers it may not try, domain weights of the
    loss). Batch size is left out on purpose: padding is masked, so it changes the
    statistics only by float rounding (tested).
    """
    settings: dict[str, Any] = {"dtype": plan.model.dtype}
    if needs_ablation(plan):
        prune = plan.prune
        settings["iterative"] = {
            "budget": prune.budget.model_dump() if prune.budget is not None else None,
            "keep": [prune.keep_first, prune.keep_last, sorted(prune.protect)],
            "weights": plan.normalized_weights(),
        }
    return settings


def score(
    plan: Plan,
    loaded: LoadedModel | LazyModel | None = None,
    *,
    cache_dir: Path | None = None,
) -> LayerScores:
    """Per-layer, per-domain statistics for `plan`'s calibration data; cached by content.

    loaded: the model (from `prunec.arch.loading.load_model`), or a `LazyModel` that loads it
    on first need (shared with later stages); None loads `plan.model`. Either way the model is
    loaded only when the cache has no entry.
    cache_dir: default `$PRUNEC_CACHE_DIR` or `~/.cache/prunec`.
    Data problems raise SpecError before any model work; scoring failures raise BuildError.
    """
    if not plan.domains:
        raise BuildError("scoring needs at least one calibration domain")
    from prunec.arch.loading import LazyModel

    lazy = loaded if isinstance(loaded, LazyModel) else LazyModel(plan.model)
    if isinstance(loaded, LazyModel):
        loaded = loaded.loaded
    cache = ScoreCache(cache_dir)
    records = read_all_records(plan)
    fingerprints = {
        f"data.{d.name}": data_fingerprint(
            records_digest(records[d.name], lambda p: file_digest(p, cache.directory)),
            {"samples": d.samples, "seed": d.seed, "max_length": d.max_length},
        )
        for d in plan.domains
    }
    fingerprints["settings"] = cache_key(scorer_settings(plan))
    fingerprints["code"] = SCORING_VERSION
    model_fp = _model_fp(plan, loaded, cache.directory)
    if model_fp is not None:
        fingerprints["model"] = model_fp
        hit = agreed(cache.get(cache_key(fingerprints)), "the score cache")
        if hit is not None:
            return hit
    if loaded is None:
        loaded = lazy.get()
        if model_fp is None:
            fingerprints["model"] = _model_fp(plan, loaded, cache.directory) or ""
            hit = agreed(cache.get(cache_key(fingerprints)), "the score cache")
            if hit is not None:
                return hit
    scores = compute_scores(plan, loaded, records, fingerprints)
    if not is_worker():  # one writer per launch
        cache.put(cache_key(fingerprints), scores)
    return scores


def compute_scores(
    plan: Plan,
    loaded: LoadedModel,
    records: dict[str, list[Record]],
    fingerprints: dict[str, str],
) -> LayerScores:
    """Run the calibration forward passes (no cache)."""
    from prunec.arch import locate_decoder

    layers = locate_decoder(loaded.model).layers
    if loaded.processor is None:
        raise BuildError(f"{plan.model.source} has no tokenizer or processor to encode data with")
    shard = distributed.group()
    total = sum(
        len(part)
        for index, (_, part) in enumerate(_chunks(plan, records))
        if shard is None or shard.owns(index)
    )
    stats = collect_scores(
        loaded.model,
        list(layers),
        calibration_batches(plan, loaded.processor, records, shard),
        [d.name for d in plan.domains],
        total,
        shard,
    )
    order: tuple[int, ...] = ()
    if needs_ablation(plan):
        from prunec.scoring.iterative import ablation_order

        order = ablation_order(plan, loaded, records)
    return LayerScores(
        num_layers=len(layers), domains=stats, fingerprints=fingerprints, iterative_order=order
    )
