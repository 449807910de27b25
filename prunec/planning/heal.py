"""Training-free healing (`heal linear`): one least-squares correction per removed run, folded
into the residual-writing projection of the kept layer before it.

For a maximal run of removed layers a..b that follows a kept layer k = a - 1, let n = b + 1 be
the first layer after the run (n = the layer count when the run ends the stack). In the pruned
model, layer k's MLP adds M (the output of its residual projection, e.g. `mlp.down_proj`) to
the residual stream, and S is the stream that enters layer n (the stream after k). The
ORIGINAL model's stream entering layer n is H. Healing fits T so that the pruned stream, with
layer k writing M T instead of M, matches H:

    minimise  ||M T - Y||^2 + lambda ||T - I||^2,   Y = H - S + M,

over every calibration token of the search part (each domain weighted by the spec's weight
and normalised by its token count). With T = I + D this is ridge regression of the residual
H - S on M: D = (M^T M + lambda I)^-1 M^T (H - S). The ridge term pulls T towards the identity
("no correction"), not towards zero, so the strongest ridge is exactly the unhealed model;
lambda = `ridge` x the mean of diag(M^T M), so the strength does not depend on the scale of
the activations. M^T M and M^T (H - S) are accumulated in float64 batch by batch (memory flat
in the number of samples: two hidden x hidden matrices).

Because the projection is linear and its output enters the residual stream unchanged (the
architecture table's `residual_projection`), writing M T is the same as replacing its weight W
by T^T W (and its bias b by T^T b): the healed model has the same classes and parameter names.
Runs are fitted in order, each on the model as healed so far. A run that starts at layer 0 has
no layer before it and is reported as not healed.

Corrections are measured, not assumed: each run's correction is kept only when it lowers the
measured objective (`prunec.planning.measure`) on the held-out part of the calibration data
(the search part when there is no held-out part); a correction that makes it worse is dropped
and the record says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prunec.errors import BuildError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunec.arch.loading import LoadedModel
    from prunec.plan.model import HealSpec, Plan
    from prunec.planning.measure import MeasuredObjective, Part, Transform

RunStatus = Literal["healed", "dropped", "not healed"]
#: (domain, model inputs) of calibration batches to fit on.
Batches = Callable[[], Iterable[tuple[str, Mapping[str, Any]]]]


@dataclass(frozen=True)
class RunHealing:
    """What healing did for one maximal run of removed layers.

    layers: the run's removed layers (original indices).
    corrected: the kept layer whose projection carries the correction; None when the run
        starts at layer 0.
    status: "healed" (correction kept), "dropped" (it made the measured objective worse),
        "not healed" (no layer before the run).
    before / after: the measured objective without / with this run's correction (with the
        corrections kept before it); None when not measured.
    """

    layers: tuple[int, ...]
    corrected: int | None
    status: RunStatus
    before: float | None = None
    after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "corrected": self.corrected,
            "status": self.status,
            "before": self.before,
            "after": self.after,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunHealing:
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        corrected = data.get("corrected")
        return cls(
            layers=tuple(int(i) for i in data["layers"]),
            corrected=None if corrected is None else int(corrected),
            status=data["status"],
            before=number("before"),
            after=number("after"),
        )


@dataclass(frozen=True)
class HealRecord:
    """The healing applied to a selection (model card, lockfile, build report).

    method / ridge: as the spec wrote them (`heal linear ridge R`).
    projection: the module, inside a decoder layer, whose weight carries the corrections.
    part: the calibration part that decided which corrections to keep ("held_out", or
        "search" when there is no held-out part).
    before / after: the measured objective on `part` without any correction and with the
        kept ones (lower is better).
    runs: one entry per maximal run of removed layers, in order.
    seconds: wall time of fitting and measuring.
    """

    method: str
    ridge: float
    projection: str
    part: str
    before: float
    after: float
    runs: tuple[RunHealing, ...]
    seconds: float = 0.0

    @property
    def corrected(self) -> tuple[int, ...]:
        """Kept layers (original indices) whose projection weight changed."""
        return tuple(
            r.corrected for r in self.runs if r.status == "healed" and r.corrected is not None
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "ridge": self.ridge,
            "projection": self.projection,
            "part": self.part,
            "before": self.before,
            "after": self.after,
            "runs": [r.to_json() for r in self.runs],
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HealRecord:
        return cls(
            method=str(data["method"]),
            ridge=float(data["ridge"]),
            projection=str(data["projection"]),
            part=str(data["part"]),
            before=float(data["before"]),
            after=float(data["after"]),
            runs=tuple(RunHealing.from_json(r) for r in data["runs"]),
            seconds=float(data.get("seconds", 0.0)),
        )


def removed_runs(removed: Sequence[int]) -> list[tuple[int, ...]]:
    """Maximal runs of consecutive removed layers, in order."""
    runs: list[list[int]] = []
    for layer in sorted(set(removed)):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return [tuple(r) for r in runs]


#: Most bytes of fitted corrections kept for reuse (`auto` fits every candidate; the winner's
#: fits are reused by the final healing). One hidden 4096 correction is 128 MiB.
CACHE_BYTES = 512 * 1024**2
#: "No decoder layer changes" for `Transform.first_changed` (above any layer count).
_NO_LAYER = 1 << 30


class _Stop(Exception):
    """Raised by a hook once a forward pass has produced everything the fit needs."""


class LinearHealer:
    """Fits and folds `heal linear` corrections for one model (see the module docstring).

    batches: the calibration batches to fit on, as (domain, model inputs); called once per
        fitted run. weights: domain -> weight (normalised here).
    Corrections are {kept layer index (original numbering): T (hidden x hidden, float64)}.
    The model must still have all its layers; fits run it with the removed layers skipped.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Batches,
        weights: Mapping[str, float],
        ridge: float,
    ):
        from prunec.arch import locate_decoder

        self.model = model
        self.stack = locate_decoder(model)
        self.num_layers = len(self.stack.layers)
        projection = self.stack.entry.residual_projection
        if projection is None:
            raise BuildError(
                f"`heal` cannot fold a correction into `{self.stack.model_type}`: "
                + (self.stack.entry.residual_note or "no residual projection is known")
            )
        self.projection = projection
        self.batches = batches
        total = sum(weights.values())
        self.weights = {d: w / total for d, w in weights.items()} if total > 0 else {}
        self.ridge = float(ridge)
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}
        #: runs fitted and forward passes (full or partial) made, for reports and benchmarks
        self.fits = 0
        self.passes = 0

    # ------------------------------------------------------------------ fitting

    def fit_all(self, removed: Sequence[int]) -> dict[int, torch.Tensor]:
        """Corrections for every healable run of `removed`, each fitted on the model with the
        earlier ones applied (no measuring: what `auto` evaluates candidates with)."""
        corrections: dict[int, torch.Tensor] = {}
        for run in removed_runs(removed):
            if run[0] == 0:
                continue
            corrections[run[0] - 1] = self.fit_run(removed, run, corrections)
        return corrections

    def fit_run(
        self,
        removed: Sequence[int],
        run: tuple[int, ...],
        corrections: Mapping[int, torch.Tensor],
    ) -> torch.Tensor:
        """T for `run` (which must follow a kept layer), on the model with `removed` skipped
        and `corrections` applied.

        Cached (the most recent fits, up to CACHE_BYTES) by the removal set, the run and which
        layers carry corrections: for one removal set, the corrections before a run are
        themselves fits keyed the same way, so the layers determine their values.
        """
        key = (tuple(sorted(removed)), run, tuple(sorted(corrections)))
        cached = self._cache.pop(key, None)
        if cached is None:
            gram, cross = self.statistics(removed, run, corrections)
            cached = solve_correction(gram, cross, self.ridge)
            self.fits += 1
        self._cache[key] = cached  # most recent last
        while len(self._cache) > 1 and _nbytes(self._cache.values()) > CACHE_BYTES:
            del self._cache[next(iter(self._cache))]
        return cached

    def statistics(
        self,
        removed: Sequence[int],
        run: tuple[int, ...],
        corrections: Mapping[int, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M^T W M, M^T W (H - S)) in float64 over the calibration tokens (W: per-token
        weights), for `run` on the model with `removed` skipped and `corrections` applied."""
        import torch

        from prunec.arch import skip_layers

        corrected = run[0] - 1
        if corrected < 0 or corrected in set(removed):
            raise ValueError(f"run {list(run)} does not follow a kept layer")
        following = run[-1] + 1
        batches = list(self.batches())
        tokens: dict[str, int] = {}
        for domain, inputs in batches:
            tokens[domain] = tokens.get(domain, 0) + int(_token_mask(inputs).sum())
        gram: torch.Tensor | None = None
        cross: torch.Tensor | None = None
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for domain, inputs in batches:
                    weight = self.weights.get(domain, 0.0) / max(tokens.get(domain, 0), 1)
                    if weight <= 0:
                        continue
                    mask = _token_mask(inputs)
                    target = self._entering(inputs, following, None)
                    with self.applied(corrections), skip_layers(self.model, removed):
                        stream, written = self._entering(inputs, following, corrected)
                    picked = _select(mask, written)
                    residual = _select(mask, target[0]) - _select(mask, stream)
                    batch_gram = weight * picked.T @ picked
                    batch_cross = weight * picked.T @ residual
                    gram = batch_gram if gram is None else gram + batch_gram
                    cross = batch_cross if cross is None else cross + batch_cross
        finally:
            self.model.train(was_training)
        if gram is None or cross is None:
            raise BuildError("healing found no calibration tokens to fit on")
        return gram.cpu(), cross.cpu()

    def _entering(
        self, inputs: Mapping[str, Any], layer: int, corrected: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass, stopped as soon as the stream entering decoder layer `layer`
        (original index; the last layer's output when `layer` is the layer count) is known.
        With `corrected`, also what that layer's residual projection wrote.
        Returns (stream, written); `written` is the stream again when not asked for."""
        from prunec.scoring.engine import model_inputs

        layers = self.stack.layers
        got: dict[str, Any] = {}
        handles = []

        def before(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            got["stream"] = args[0] if args else kwargs["hidden_states"]
            raise _Stop

        def after(module: Any, args: Any, output: Any) -> None:
            got["stream"] = output[0] if isinstance(output, tuple | list) else output
            raise _Stop

        def written(module: Any, args: Any, output: Any) -> None:
            got["written"] = output

        if layer < self.num_layers:
            handles.append(layers[layer].register_forward_pre_hook(before, with_kwargs=True))
        else:
            last = corrected if corrected is not None else self.num_layers - 1
            handles.append(layers[last].register_forward_hook(after))
        if corrected is not None:
            module = layers[corrected].get_submodule(self.projection)
            handles.append(module.register_forward_hook(written))
        self.passes += 1
        try:
            self.model(**model_inputs(self.model, dict(inputs)), use_cache=False)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if "stream" not in got or (corrected is not None and "written" not in got):
            raise BuildError(
                f"healing could not observe decoder layer {layer} "
                f"({type(self.model).__name__} did not run it)"
            )
        return got["stream"], got.get("written", got["stream"])

    # ------------------------------------------------------------------ folding

    def _module(self, layer: int) -> nn.Module:
        return self.stack.layers[layer].get_submodule(self.projection)

    @contextmanager
    def applied(self, corrections: Mapping[int, torch.Tensor]) -> Iterator[None]:
        """The model with `corrections` folded in; the original weights are back on exit."""
        saved: list[tuple[Any, torch.Tensor]] = []
        try:
            for layer, matrix in corrections.items():
                module = self._module(layer)
                for param, value in _folded(module, matrix):
                    saved.append((param, param.data))
                    param.data = value
            yield
        finally:
            for param, data in reversed(saved):
                param.data = data

    def fold(self, corrections: Mapping[int, torch.Tensor]) -> None:
        """Fold `corrections` into the model's weights for good."""
        import torch

        with torch.no_grad():
            for layer, matrix in corrections.items():
                for param, value in _folded(self._module(layer), matrix.clone()):
                    param.data = value


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _folded(module: nn.Module, matrix: torch.Tensor) -> list[tuple[Any, torch.Tensor]]:
    """(parameter, new value) for a linear `module` whose output o becomes o T: W' = T^T W,
    b' = T^T b, computed in float64 and stored in the parameter's own dtype."""
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2 or weight.shape[0] != matrix.shape[0]:
        raise BuildError(
            f"healing expected a linear projection writing {matrix.shape[0]} features, "
            f"found {type(module).__name__}"
        )
    t = matrix.to(weight.device, dtype=_float64(weight))
    out = [(weight, (t.T @ weight.detach().to(t.dtype)).to(weight.dtype))]
    bias = getattr(module, "bias", None)
    if bias is not None:
        out.append((bias, (t.T @ bias.detach().to(t.dtype)).to(bias.dtype)))
    return out


def _float64(tensor: torch.Tensor) -> torch.dtype:
    import torch

    # MPS has no float64; fold in float32 there.
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def _token_mask(inputs: Mapping[str, Any]) -> torch.Tensor:
    import torch

    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    return mask.bool()


def _select(mask: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """The states at the real (unpadded) tokens, as float64 rows, on the states' device
    (the CPU for MPS, which has no float64): the sums are accumulated where they are made."""
    import torch

    device = states.device if states.device.type != "mps" else torch.device("cpu")
    flat = states.detach().to(device, torch.float64)
    if flat.shape[:2] == mask.shape:
        return flat[mask.to(flat.device)]
    return flat.reshape(-1, flat.shape[-1])  # a model that reshapes tokens: every position


def solve_correction(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """T = I + (G + lambda I)^-1 C with lambda = ridge x mean(diag G) (module docstring).
    A singular system (ridge 0 and too few tokens) falls back to the least-norm solution."""
    import torch

    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    scale = float(gram.diagonal().mean()) if gram.numel() else 0.0
    system = gram + ridge * scale * eye
    try:
        delta = torch.linalg.solve(system, cross)
        if not bool(torch.isfinite(delta).all()):
            raise RuntimeError("not finite")
    except RuntimeError:
        delta = torch.linalg.pinv(system) @ cross
    return eye + delta


# ---------------------------------------------------------------------- in the pipeline


def healer_for(
    plan: Plan, loaded: LoadedModel, objective: Callable[[], MeasuredObjective]
) -> LinearHealer:
    """The healer for a spec: fits on the search part of `objective()`'s calibration data."""
    return LinearHealer(
        loaded.model,
        lambda: objective().iter_batches("search"),
        plan.normalized_weights(),
        plan.prune.heal.ridge,
    )


def search_transform(healer: Callable[[], LinearHealer], spec: HealSpec) -> Transform:
    """The transform `auto` measures candidates with: every healable run corrected (fitted
    per candidate and cached), nothing measured or dropped yet. `healer()` is called on the
    first candidate only, so a search answered from the cache needs no model."""
    from prunec.planning.measure import Transform

    def apply(model: nn.Module, removed: tuple[int, ...]) -> Any:
        fitted = healer()
        return fitted.applied(fitted.fit_all(removed))

    def first_changed(removed: tuple[int, ...]) -> int:
        starts = [r[0] - 1 for r in removed_runs(removed) if r[0] > 0]
        # No healable run: nothing changes; any value at or above the layer count says so.
        return min(starts, default=_NO_LAYER)

    return Transform(key=spec.key(), apply=apply, first_changed=first_changed)


def corrections_transform(
    healer: LinearHealer, corrections: Mapping[int, torch.Tensor]
) -> Transform:
    """A transform applying fixed `corrections` (whatever the removal set)."""
    from prunec.planning.measure import Transform

    fixed = dict(corrections)
    return Transform(
        key="heal " + ",".join(str(k) for k in sorted(fixed)),
        apply=lambda model, removed: healer.applied(fixed),
        first_changed=lambda removed: min(fixed, default=healer.num_layers),
    )


def heal_selection(
    healer: LinearHealer,
    objective: MeasuredObjective,
    removed: Sequence[int],
    spec: HealSpec,
) -> tuple[HealRecord, dict[int, torch.Tensor]]:
    """Fit each run's correction in order, keep it only when it lowers the measured objective
    (held-out part; search part when there is none), and return the record with the kept
    corrections (not yet folded)."""
    started = time.perf_counter()
    chosen = tuple(sorted(removed))
    part: Part = "held_out" if objective.has_part("held_out") else "search"

    def measure(corrections: Mapping[int, torch.Tensor]) -> float:
        transform = corrections_transform(healer, corrections) if corrections else None
        return objective.evaluate(chosen, part, transform=transform).value

    kept: dict[int, torch.Tensor] = {}
    before = current = measure(kept)
    runs: list[RunHealing] = []
    for run in removed_runs(chosen):
        if run[0] == 0:
            runs.append(RunHealing(run, None, "not healed"))
            continue
        corrected = run[0] - 1
        matrix = healer.fit_run(chosen, run, kept)
        value = measure({**kept, corrected: matrix})
        if value < current:
            runs.append(RunHealing(run, corrected, "healed", current, value))
            kept[corrected] = matrix
            current = value
        else:
            runs.append(RunHealing(run, corrected, "dropped", current, value))
    record = HealRecord(
        method=spec.method,
        ridge=spec.ridge,
        projection=healer.projection,
        part=part,
        before=before,
        after=current,
        runs=tuple(runs),
        seconds=round(time.perf_counter() - started, 3),
    )
    return record, kept


__all__ = [
    "HealRecord",
    "LinearHealer",
    "RunHealing",
    "heal_selection",
    "healer_for",
    "removed_runs",
    "search_transform",
    "solve_correction",
]
