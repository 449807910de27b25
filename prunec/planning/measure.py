"""The measured objective: how much worse the model gets without a set of decoder layers.

`MeasuredObjective.evaluate(removed)` runs the calibration data through the model with
`removed` skipped (in memory, no weight copy) and returns one number, lower is better:

- a domain whose every record has a non-empty `answer` is scored by the teacher-forced answer
  NLL (nats per answer token, the quantity `verify`'s `nll` metric reports);
- any other domain is scored label-free by KL(original || pruned) of the next-token
  distribution, averaged over positions. The original's distributions are computed once and
  kept as the top `KL_TOP_K` log-probabilities plus the remaining tail mass, so the KL is that
  of the coarsened distributions (top-k tokens + one "rest" bucket): a lower bound of the full
  KL, exact when the top-k hold all the mass, never negative. Positions are the text tokens
  that predict a text token (image placeholders neither predict nor are predicted), the last
  `KL_POSITIONS` of each sample.

Domains are combined by the spec's normalised weights. The calibration records of each domain
are split deterministically: every `HELD_OUT_EVERY`-th record (positions 3, 7, 11, ... of the
domain's sample, 0-based) is the held-out part, the rest the search part; a domain with 2 or 3
records holds out its last one, a domain with 1 record has no held-out record (its weight then
goes to the other domains on that part). The search uses the search part; the held-out part
decides between finalists.

Speed. Every value is a sum of non-negative per-token terms, so a candidate evaluated with a
`bound` (the best value so far) stops as soon as its partial sum exceeds it: the answer is
then "worse", exactly, and its value a lower bound. What does not change between candidates is
computed once: the unpruned model's hidden state entering each decoder layer ("boundary") is
kept for as many boundaries as `state_memory` allows (evenly spaced; boundary 0 always, so the
vision tower and embeddings run once), together with the arguments each layer receives (masks,
rotary embeddings). A candidate then runs only the layers from the last kept boundary at or
before its first removed layer. The states of the best candidate so far are kept too, so a
neighbour that differs from it first at layer m starts near m. Logits are computed only at the
positions the objective reads (the final norm and the LM head applied to those states).

This direct layer loop is checked against the model's own forward once per model (unpruned and
with one layer skipped); when it does not reproduce the logits, or the architecture moves
features between layers (Qwen3-VL deepstack), every evaluation runs the model's full forward
under `prunec.arch.skip_layers` instead: slower, same numbers.

A `Transform` (for example a healing correction fitted per removal set) is applied around an
evaluation as a context manager; boundaries at or below the first layer it changes are reused.

Launched as several processes (torchrun, `prunec.distributed`), every process encodes every
batch (cheap, and the token counts are then known everywhere) but keeps and runs only its
shard of each part's batches. An evaluation runs in rounds of one batch per process, and one
all-reduce per round hands every process the round's per-batch losses; each process then adds
them in the single-process order and stops at a `bound` where one process would: the same
values, complete or not at the same batch, the same search on every process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from prunec import distributed
from prunec.data import Record, encode
from prunec.errors import BuildError

if TYPE_CHECKING:
    from torch import nn

    from prunec.arch.loading import LoadedModel
    from prunec.plan.model import Plan

Part = Literal["search", "held_out"]
Kind = Literal["nll", "kl"]

#: Every HELD_OUT_EVERY-th calibration record of a domain is held out (see the module doc).
HELD_OUT_EVERY = 4
#: Top log-probabilities of the original model kept per position for the label-free KL.
KL_TOP_K = 32
#: At most this many positions per sample enter the label-free KL (the last ones).
KL_POSITIONS = 64
#: Default memory for cached hidden states (unpruned boundaries, best candidate's, in flight).
DEFAULT_STATE_MEMORY = 2 * 1024**3
#: Bump when the objective's definition or numerics change (part of the search cache key).
MEASURE_VERSION = "1"


@dataclass(frozen=True)
class Transform:
    """A temporary change to the model for one removal set, applied while it is measured.

    key: what the change depends on besides the removal set (e.g. "heal linear ridge 0.001");
        part of cache keys and reports.
    apply(model, removed): a context manager that changes `model` for `removed` and restores
        it on exit. It runs with the layers still in place (the objective skips them itself).
    first_changed(removed): the lowest decoder layer whose computation `apply` changes for
        this set; hidden states entering that layer are reused. 0 when unknown.
    """

    key: str
    apply: Callable[[nn.Module, tuple[int, ...]], AbstractContextManager[Any]]
    first_changed: Callable[[tuple[int, ...]], int] = lambda removed: 0


@dataclass(frozen=True)
class Measurement:
    """The objective of one removal set on one part of the calibration data.

    value: sum over domains of weight x domain value; lower is better. When `complete` is
        False the evaluation stopped early at a bound, and `value` is a lower bound that already
        exceeds it.
    domains: per-domain value (mean answer NLL, or mean KL); partial when not complete.
    batches: calibration batches evaluated (all of the part when complete).
    """

    removed: tuple[int, ...]
    part: Part
    value: float
    domains: Mapping[str, float]
    complete: bool
    batches: int
    transform: str = ""


@dataclass(frozen=True)
class DomainSplit:
    """How a domain is measured: its objective kind and its records per part."""

    kind: Kind
    search: int
    held_out: int


@dataclass
class _Batch:
    """One encoded calibration batch of one domain and part, with what candidates reuse."""

    domain: str
    part: Part
    where: str
    inputs: dict[str, torch.Tensor]
    rows: torch.Tensor
    cols: torch.Tensor
    #: nll: target token ids at the positions. kl: (top-k ids, top-k log-probs, tail mass).
    targets: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logp: torch.Tensor | None = None
    tail: torch.Tensor | None = None
    #: per decoder layer: the positional args after the hidden state, and the keyword args.
    layer_args: list[tuple[tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    #: unpruned hidden state entering each kept boundary layer.
    pinned: dict[int, torch.Tensor] = field(default_factory=dict)
    #: the best candidate's hidden states entering the trail boundaries.
    trail: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass
class Counters:
    """Work done so far: full model forwards and individual decoder-layer calls."""

    forwards: int = 0
    layer_calls: int = 0
    evaluations: int = 0
    seconds: float = 0.0


def split_records(records: Sequence[Record], every: int = HELD_OUT_EVERY) -> tuple[list, list]:
    """(search part, held-out part) of one domain's records (see the module docstring)."""
    held = {i for i in range(len(records)) if i % every == every - 1}
    if not held and len(records) >= 2:
        held = {len(records) - 1}
    search = [r for i, r in enumerate(records) if i not in held]
    return search, [r for i, r in enumerate(records) if i in held]


def _tolerance(reference: torch.Tensor, dtype: torch.dtype) -> float:
    half = dtype in (torch.float16, torch.bfloat16)
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    return (3e-2 if half else 1e-3) * scale


class MeasuredObjective:
    """The measured objective of removal sets for one model and its calibration data.

    Build it with `MeasuredObjective.from_plan(plan, loaded)` (or the constructor, for records
    and weights not written as a spec); that runs the unpruned model once over every
    calibration record. Then
    `evaluate(removed, part=...)` measures any set, `unpruned(part)` is the original model's
    value. The model is not modified outside an `evaluate` call.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        records: Mapping[str, Sequence[Record]],
        weights: Mapping[str, float],
        *,
        batch_size: int = 4,
        max_length: Mapping[str, int] | int = 512,
        state_memory: int = DEFAULT_STATE_MEMORY,
        held_out_every: int = HELD_OUT_EVERY,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        from prunec.arch import locate_decoder

        self.model = model
        self.processor = processor
        self.stack = locate_decoder(model)
        self.num_layers = len(self.stack.layers)
        self.counters = Counters()
        self.state_memory = int(state_memory)
        self.held_out_every = held_out_every
        names = [d for d in records if records[d]]
        if not names:
            raise BuildError("measuring needs calibration records; every domain is empty")
        self.splits: dict[str, DomainSplit] = {}
        self._batches: dict[Part, list[_Batch]] = {"search": [], "held_out": []}
        self._tokens: dict[Part, dict[str, int]] = {"search": {}, "held_out": {}}
        self._weights = {d: float(weights.get(d, 0.0)) for d in names}
        if sum(self._weights.values()) <= 0:
            raise BuildError("measuring needs a positive weight on at least one domain")
        self._image_ids = _image_ids(processor)
        self._encode(records, names, batch_size, max_length)
        #: batches of each part over every process; self._batches holds this process's share
        self._counts = {part: len(batches) for part, batches in self._batches.items()}
        self._domain_order = {p: [b.domain for b in bs] for p, bs in self._batches.items()}
        self._group = distributed.group()
        if self._group is not None:
            self._batches = {p: self._group.shard(b) for p, b in self._batches.items()}
        self._best: dict[Part, tuple[float, tuple[int, ...]] | None] = {
            "search": None,
            "held_out": None,
        }
        self._unpruned: dict[Part, Measurement] = {}
        self.fast, self.note = self._fast_path_supported()
        self._pinned_layers, self._trail_layers = self._boundaries()
        self._setup(on_batch)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_plan(
        cls,
        plan: Plan,
        loaded: LoadedModel,
        records: Mapping[str, Sequence[Record]] | None = None,
        **options: Any,
    ) -> MeasuredObjective:
        """The objective for a spec's calibration domains (records read as scoring reads them)."""
        if records is None:
            from prunec.scoring.engine import read_all_records

            records = read_all_records(plan)
        if loaded.processor is None:
            raise BuildError(f"{plan.model.source} has no tokenizer or processor to encode data")
        return cls(
            loaded.model,
            loaded.processor,
            records,
            plan.normalized_weights(),
            batch_size=max(plan.prune.batch_size, 1),
            max_length={d.name: d.max_length for d in plan.domains},
            **options,
        )

    def _encode(
        self,
        records: Mapping[str, Sequence[Record]],
        names: list[str],
        batch_size: int,
        max_length: Mapping[str, int] | int,
    ) -> None:
        per_part: dict[Part, list[list[_Batch]]] = {"search": [], "held_out": []}
        for name in names:
            limit = max_length if isinstance(max_length, int) else max_length.get(name, 512)
            with_answer = all(r.answer and r.answer.strip() for r in records[name])
            kind: Kind = "nll" if with_answer else "kl"
            search, held = split_records(list(records[name]), self.held_out_every)
            self.splits[name] = DomainSplit(kind, len(search), len(held))
            parts: tuple[tuple[Part, list[Record]], ...] = (("search", search), ("held_out", held))
            for part, group in parts:
                batches = self._domain_batches(name, part, group, kind, batch_size, limit)
                if batches:
                    per_part[part].append(batches)
        for part, lists in per_part.items():
            # Interleave domains, so a partial sum under a bound sees every domain early.
            longest = max((len(b) for b in lists), default=0)
            self._batches[part] = [b[i] for i in range(longest) for b in lists if i < len(b)]

    def _domain_batches(
        self,
        name: str,
        part: Part,
        group: list[Record],
        kind: Kind,
        batch_size: int,
        max_length: int,
    ) -> list[_Batch]:
        out = []
        images = [r for r in group if r.image is not None]
        texts = [r for r in group if r.image is None]
        for same in (images, texts):
            for start in range(0, len(same), batch_size):
                chunk = same[start : start + batch_size]
                inputs = encode(self.processor, chunk, max_length, with_answer=kind == "nll")
                batch = self._positions(name, part, chunk[0].where, inputs, kind)
                if batch.rows.numel():
                    out.append(batch)
                    tokens = self._tokens[part]
                    tokens[name] = tokens.get(name, 0) + int(batch.rows.numel())
        return out

    def _positions(
        self, name: str, part: Part, where: str, inputs: dict[str, torch.Tensor], kind: Kind
    ) -> _Batch:
        """The positions whose next-token distribution the objective reads (see module doc)."""
        ids = inputs["input_ids"]
        mask = inputs["attention_mask"].bool()
        if kind == "nll":
            answer = inputs.pop("answer_mask").bool()
            rows, cols = torch.nonzero(answer[:, 1:] & mask[:, 1:], as_tuple=True)
            batch = _Batch(name, part, where, inputs, rows, cols)
            batch.targets = ids[rows, cols + 1]
            return batch
        inputs.pop("answer_mask", None)
        text = mask & ~torch.isin(ids, torch.tensor(self._image_ids, dtype=ids.dtype))
        valid = text[:, :-1] & text[:, 1:]
        # Keep the last KL_POSITIONS valid positions of each row: they see the most context.
        from_end = valid.flip(1).cumsum(1).flip(1)
        valid &= from_end <= KL_POSITIONS
        rows, cols = torch.nonzero(valid, as_tuple=True)
        return _Batch(name, part, where, inputs, rows, cols)

    def _fast_path_supported(self) -> tuple[bool, str]:
        if self.stack.entry.deepstack is not None:
            return False, "the architecture adds features between layers (deepstack)"
        if _final_norm(self.model, self.stack.path) is None or not _lm_head(self.model):
            return False, "no final norm / LM head found"
        return True, ""

    def _boundaries(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Which boundaries keep the unpruned state (always 0) and the best candidate's, within
        `state_memory` (a state's size estimated as batch x input length x hidden x dtype)."""
        if not self.fast:
            return (), ()
        elem = next(self.model.parameters()).element_size()
        width = int(self.stack.text_config.hidden_size)
        every = [b for part in self._batches.values() for b in part]
        per_boundary = sum(int(b.inputs["input_ids"].numel()) * width * elem for b in every)
        search = self._batches["search"]
        per_trail = sum(int(b.inputs["input_ids"].numel()) * width * elem for b in search)
        share = self.state_memory // 3  # unpruned, best candidate's, the one being measured
        n = self.num_layers
        pinned = _evenly(0, n, max(1, share // max(per_boundary, 1)))
        trail = _evenly(1, n, share // max(per_trail, 1)) if n > 1 else ()
        return pinned, trail

    # ------------------------------------------------------------------ the unpruned pass

    def _setup(self, on_batch: Callable[[int, int], None] | None) -> None:
        """One forward of the unpruned model per batch: boundary states, layer arguments,
        the original's targets (top-k for KL), and a check of the direct layer loop."""
        if self._group is not None:
            self._group.run_and_sum("the unpruned pass", 0, lambda: self._unpruned_pass(on_batch))
        else:
            self._unpruned_pass(on_batch)
        for part in ("search", "held_out"):
            if self.has_part(part):
                self._unpruned[part] = self.evaluate((), part)

    def _unpruned_pass(self, on_batch: Callable[[int, int], None] | None) -> list[float]:
        started = time.perf_counter()
        layers = list(self.stack.layers)
        every = [*self._batches["search"], *self._batches["held_out"]]
        self.model.eval()
        with torch.inference_mode():
            for index, batch in enumerate(every):
                own, final = self._record(batch, layers, model_logits=index == 0 or not self.fast)
                if index == 0 and self.fast:
                    assert own is not None
                    self._check_fast_path(batch, own)
                    if not self.fast:  # fall back: nothing of the direct loop is needed
                        self._pinned_layers, self._trail_layers = (), ()
                        batch.pinned.clear()
                        batch.layer_args.clear()
                logits = self._head(final, batch) if self.fast else own
                assert logits is not None
                self._original_targets(batch, logits)
                if on_batch is not None:
                    on_batch(index + 1, len(every))
        self.counters.seconds += time.perf_counter() - started
        return []

    def _record(
        self, batch: _Batch, layers: list[nn.Module], model_logits: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Run the model once on `batch`; keep boundary states and layer arguments (for the
        direct loop). Returns (the model's own logits at the batch's positions when
        `model_logits`, else None; the last decoder layer's output)."""
        pinned = set(self._pinned_layers)
        keep_args = self.fast
        final: list[torch.Tensor] = []
        batch.layer_args = [((), {})] * len(layers) if keep_args else []

        def pre_hook(index: int) -> Callable[..., None]:
            def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                if keep_args:
                    rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                    batch.layer_args[index] = (tuple(args[1:]), rest)
                if index in pinned:
                    batch.pinned[index] = args[0] if args else kwargs["hidden_states"]

            return hook

        def last_hook(module: Any, args: Any, output: Any) -> None:
            final.append(output[0] if isinstance(output, tuple | list) else output)

        handles = [
            layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]
        handles.append(layers[-1].register_forward_hook(last_hook))
        try:
            out = self._forward(batch, keep_all=model_logits)
        finally:
            for handle in handles:
                handle.remove()
        own = None
        if model_logits:
            device = out.logits.device
            own = out.logits[batch.rows.to(device), batch.cols.to(device)]
        return own, final[-1]

    def _forward(self, batch: _Batch, keep_all: bool) -> Any:
        from prunec.scoring.engine import forward_kwargs, model_inputs

        extra = forward_kwargs(self.model) if not keep_all else {"use_cache": False}
        self.counters.forwards += 1
        try:
            return self.model(**model_inputs(self.model, batch.inputs), **extra)
        except (RuntimeError, ValueError, IndexError, TypeError) as err:
            raise BuildError(
                f"forward pass failed on the batch starting at {batch.where} "
                f"(domain `{batch.domain}`): {type(err).__name__}: {err}"
            ) from err

    def _check_fast_path(self, batch: _Batch, reference: torch.Tensor) -> None:
        """Does the direct layer loop reproduce the model's logits, unpruned and with one
        layer skipped? If not, fall back to full forwards (`self.fast = False`)."""
        from prunec.arch import skip_layers

        dtype = next(self.model.parameters()).dtype
        checks: list[tuple[tuple[int, ...], torch.Tensor]] = [((), reference)]
        if self.num_layers > 1:
            middle = (self.num_layers // 2,)
            with skip_layers(self.model, middle):
                out = self._forward(batch, keep_all=True)
            rows, cols = batch.rows.to(out.logits.device), batch.cols.to(out.logits.device)
            checks.append((middle, out.logits[rows, cols]))
        for removed, expected in checks:
            final = self._run_layers(batch, 0, batch.pinned[0], removed, None)
            got = self._head(final, batch)
            diff = float((got.float() - expected.float().to(got.device)).abs().max())
            if not math.isfinite(diff) or diff > _tolerance(expected.float(), dtype):
                self.fast = False
                what = f"with layer {removed[0]} skipped" if removed else "unpruned"
                self.note = (
                    f"the direct layer loop differs from the model's forward ({what}, "
                    f"max |logit diff| {diff:.2e}); every candidate runs the full forward"
                )
                return

    def _original_targets(self, batch: _Batch, logits: torch.Tensor) -> None:
        if batch.targets is not None:
            return
        logp = torch.log_softmax(logits.float(), dim=-1)
        k = min(KL_TOP_K, logp.shape[-1])
        top_logp, top_ids = logp.topk(k, dim=-1)
        batch.top_ids, batch.top_logp = top_ids, top_logp
        batch.tail = (1.0 - top_logp.exp().sum(-1)).clamp(min=0.0)

    # ------------------------------------------------------------------ measuring

    def unpruned(self, part: Part = "search") -> Measurement:
        """The objective of the unpruned model on `part` (0 for label-free domains)."""
        return self._unpruned[part]

    def domains(self, part: Part) -> tuple[str, ...]:
        """Domains with records in `part`, in the spec's order."""
        return tuple(d for d in self.splits if self._tokens[part].get(d))

    def has_part(self, part: Part) -> bool:
        return bool(self._counts[part])

    def batch_count(self, part: Part | None = None) -> int:
        """Calibration batches in `part` (None: both parts, i.e. one full pass), over every
        process of a distributed launch."""
        parts: tuple[Part, ...] = (part,) if part is not None else ("search", "held_out")
        return sum(self._counts[p] for p in parts)

    @property
    def cached_boundaries(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(layers whose unpruned input state is kept, layers whose input state is kept for
        the best candidate); both empty when every evaluation runs the full forward."""
        return self._pinned_layers, self._trail_layers

    def evaluate(
        self,
        removed: Sequence[int],
        part: Part = "search",
        *,
        transform: Transform | None = None,
        bound: float | None = None,
    ) -> Measurement:
        """The objective with `removed` skipped (and `transform` applied) on `part`.

        bound: stop as soon as the partial value exceeds it (the result is then incomplete).
        Raises BuildError for an invalid set, or when `part` has no records.
        """
        from prunec.arch import skip_layers, validate_remove

        chosen = tuple(validate_remove(list(removed), self.num_layers))
        if not self._counts[part]:
            raise BuildError(f"the {part.replace('_', '-')} part of the calibration data is empty")
        started = time.perf_counter()
        weights = self._part_weights(part)
        sums = dict.fromkeys(weights, 0.0)
        limit = self.num_layers
        if transform is not None:
            limit = max(0, min(limit, transform.first_changed(chosen)))
        keep_trail = self.fast and transform is None and part == "search" and bool(chosen)
        trail: list[dict[int, torch.Tensor]] = []
        self.counters.evaluations += 1
        done = 0
        value = 0.0
        was_training = self.model.training
        self.model.eval()

        def one(batch: _Batch) -> float:
            states: dict[int, torch.Tensor] | None = {} if keep_trail else None
            loss = self._batch_loss(batch, chosen, limit, states, part)
            if states is not None:
                trail.append(states)
            return loss

        try:
            with ExitStack() as stack, torch.inference_mode():
                if transform is not None:
                    stack.enter_context(transform.apply(self.model, chosen))
                if not self.fast and chosen:
                    stack.enter_context(skip_layers(self.model, chosen))
                for domain, loss in self._losses(part, one):
                    sums[domain] += loss
                    done += 1
                    value = sum(w * sums[d] / self._tokens[part][d] for d, w in weights.items())
                    if bound is not None and value > bound and done < self._counts[part]:
                        break
        finally:
            self.model.train(was_training)
            self.counters.seconds += time.perf_counter() - started
        complete = done == self._counts[part]
        if complete and keep_trail:
            self._adopt_trail(part, value, chosen, trail)
        return Measurement(
            removed=chosen,
            part=part,
            value=float(value),
            domains={d: sums[d] / self._tokens[part][d] for d in weights},
            complete=complete,
            batches=done,
            transform=transform.key if transform is not None else "",
        )

    def _losses(self, part: Part, one: Callable[[_Batch], float]) -> Iterator[tuple[str, float]]:
        """(domain, summed loss) of each batch of `part` in order, computed by `one`; lazily,
        so an evaluation stopped at a bound computes no further batch.

        In a distributed launch each process computes its own batches, one per process per
        round, and one all-reduce per round gives every process the round's losses: every
        process then adds the same numbers in the same order as a single process would, and
        stops at the same batch.
        """
        if self._group is None:
            for batch in self._batches[part]:
                yield batch.domain, one(batch)
            return
        group, domains = self._group, self._domain_order[part]
        mine = iter(self._batches[part])
        for start in range(0, len(domains), group.size):

            def compute(start: int = start) -> list[float]:
                out = [0.0] * group.size
                if start + group.rank < len(domains):
                    out[group.rank] = one(next(mine))
                return out

            losses = group.run_and_sum("a measurement", group.size, compute)
            for i, domain in enumerate(domains[start : start + group.size]):
                yield domain, float(losses[i])

    def _part_weights(self, part: Part) -> dict[str, float]:
        present = {d: w for d, w in self._weights.items() if self._tokens[part].get(d)}
        total = sum(present.values())
        return {d: w / total for d, w in present.items()}

    def _adopt_trail(
        self,
        part: Part,
        value: float,
        removed: tuple[int, ...],
        trail: list[dict[int, torch.Tensor]],
    ) -> None:
        """Keep this candidate's boundary states when it is the best measured so far."""
        best = self._best[part]
        if best is not None and (best[0], best[1]) <= (value, removed):
            return
        self._best[part] = (value, removed)
        for batch, states in zip(self._batches[part], trail, strict=True):
            batch.trail = states

    def _batch_loss(
        self,
        batch: _Batch,
        removed: tuple[int, ...],
        limit: int,
        trail: dict[int, torch.Tensor] | None,
        part: Part,
    ) -> float:
        if not self.fast:
            out = self._forward(batch, keep_all=True)
            rows, cols = batch.rows.to(out.logits.device), batch.cols.to(out.logits.device)
            return self._loss(batch, out.logits[rows, cols])
        start, state = self._start(batch, removed, limit, part, trail)
        final = self._run_layers(batch, start, state, removed, trail)
        return self._loss(batch, self._head(final, batch))

    def _start(
        self,
        batch: _Batch,
        removed: tuple[int, ...],
        limit: int,
        part: Part,
        trail: dict[int, torch.Tensor] | None,
    ) -> tuple[int, torch.Tensor]:
        """The latest stored boundary state valid for `removed`: unpruned states up to its
        first removed layer, the best candidate's up to the first layer where they differ.
        Valid stored states below the start are copied into `trail` (this set's own)."""
        first = min((*removed, self.num_layers))
        valid: dict[int, torch.Tensor] = {
            b: s for b, s in batch.pinned.items() if b <= min(first, limit)
        }
        best = self._best[part]
        if best is not None and batch.trail:
            agree = min((*(set(removed) ^ set(best[1])), self.num_layers))
            valid.update((b, s) for b, s in batch.trail.items() if b <= min(agree, limit))
        start = max(valid)
        if trail is not None:
            trail.update((b, s) for b, s in valid.items() if b in self._trail_layers)
        return start, valid[start]

    def _run_layers(
        self,
        batch: _Batch,
        start: int,
        state: torch.Tensor,
        removed: tuple[int, ...],
        trail: dict[int, torch.Tensor] | None,
    ) -> torch.Tensor:
        gone = set(removed)
        keep = set(self._trail_layers) if trail is not None else set()
        hidden = state
        for index in range(start, self.num_layers):
            if trail is not None and index in keep:
                trail[index] = hidden
            if index in gone:
                continue
            args, kwargs = batch.layer_args[index]
            out = self.stack.layers[index](hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple | list) else out
            self.counters.layer_calls += 1
        return hidden

    def _head(self, hidden: torch.Tensor, batch: _Batch) -> torch.Tensor:
        """Logits at the batch's positions from the last layer's output (final norm, LM head,
        and the final soft-capping some models apply)."""
        norm = _final_norm(self.model, self.stack.path)
        head = _lm_head(self.model)
        assert norm is not None and head is not None
        rows, cols = batch.rows.to(hidden.device), batch.cols.to(hidden.device)
        picked = norm(hidden[rows, cols])
        if head.weight.device.type != "meta":  # on meta it is offloaded: its hook moves inputs
            picked = picked.to(head.weight.device)
        logits = head(picked).float()
        for config in (self.stack.text_config, self.model.config):
            cap = getattr(config, "final_logit_softcapping", None)
            if cap:
                return torch.tanh(logits / cap) * cap
        return logits

    def _loss(self, batch: _Batch, logits: torch.Tensor) -> float:
        """Summed per-position loss: answer NLL, or the top-k + tail KL to the original."""
        logq = torch.log_softmax(logits.float(), dim=-1)
        if batch.targets is not None:
            picked = logq.gather(-1, batch.targets.to(logq.device)[:, None])[:, 0]
            return float(-picked.sum())
        assert batch.top_ids is not None and batch.top_logp is not None and batch.tail is not None
        top_logp = batch.top_logp.to(logq.device)
        q_top = logq.gather(-1, batch.top_ids.to(logq.device))
        p_top = top_logp.exp()
        kl = (p_top * (top_logp - q_top)).sum(-1)
        p_tail = batch.tail.to(logq.device)
        q_tail = (1.0 - q_top.exp().sum(-1)).clamp(min=1e-30)
        kl = kl + torch.xlogy(p_tail, p_tail) - p_tail * q_tail.log()
        return float(kl.clamp(min=0.0).sum())

    def iter_batches(self, part: Part) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """(domain, model inputs) of each batch of `part`, e.g. to fit a transform on."""
        for batch in self._batches[part]:
            yield batch.domain, batch.inputs


def _evenly(low: int, high: int, count: int) -> tuple[int, ...]:
    """`count` boundaries spread evenly over [low, high), starting at `low`."""
    span = high - low
    if count <= 0 or span <= 0:
        return ()
    if count >= span:
        return tuple(range(low, high))
    return tuple(sorted({low + (i * span) // count for i in range(count)}))


def _final_norm(model: nn.Module, layers_path: str) -> nn.Module | None:
    parent = layers_path.rpartition(".")[0]
    decoder = model.get_submodule(parent) if parent else model
    norm = getattr(decoder, "norm", None)
    return norm if callable(norm) else None


def _lm_head(model: nn.Module) -> Any:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if head is not None and hasattr(head, "weight") else None


def _image_ids(processor: Any) -> list[int]:
    """Token ids that stand for image features (never predicted, never predicting)."""
    from prunec.data import image_token_ids

    return image_token_ids(processor) if processor is not None else []
