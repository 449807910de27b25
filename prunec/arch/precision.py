"""Compute dtype vs storage dtype: which dtype weights are held in, which one calibration
computes in, and the just-in-time upcast that lets the two differ.

The spec's `dtype` is the dtype calibration computes in; artifacts keep the checkpoint's
storage dtype (a target may convert). The rule (`resolve_dtypes`):

- `auto` computes in the storage dtype when the device has fast arithmetic for it, else in
  float32. Half precision is fast on CUDA (bfloat16 when `torch.cuda.is_bf16_supported()`),
  on MPS, and on CPUs with bf16/fp16 units (Linux `/proc/cpuinfo` flags `avx512_bf16` or
  `amx_bf16`; `avx512_fp16` or `amx_fp16`). Elsewhere bfloat16 matmuls run ~11x slower
  than float32 ones, so a bf16 checkpoint computes in float32.
- An explicit dtype is the compute dtype.
- Weights are held in the storage dtype whenever the compute dtype is wider (a bf16
  checkpoint computing in float32 stays ~1x its size in memory); a narrower or equally wide
  compute dtype is applied at load (transformers converts tensor by tensor).

When held and compute dtypes differ, `install_upcast` wraps the forward of every module that
owns floating parameters: the module's own parameters are converted to the compute dtype
just before it runs and dropped right after, so at most one module's weights exist in both
dtypes at a time. Converting bf16 or fp16 to float32 is exact, so the results equal a float32
copy of the model's. Two cases avoid converting a whole large matrix: embeddings convert only
the rows a batch looks up, and large `nn.Linear` weights (vocabulary projections) are
converted and applied in row blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Dtype names prunec uses (torch attribute names), by bytes per element.
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
#: Most elements converted at once: larger linear weights are upcast in row blocks of this
#: many, and module subtrees up to this size are converted as one unit.
BLOCK_ELEMENTS = 1 << 24
#: Parameters this small (norms, biases) are held in the compute dtype.
SMALL_ELEMENTS = 1 << 18
_CPU_FLAGS = {
    "bfloat16": ("avx512_bf16", "amx_bf16"),
    "float16": ("avx512_fp16", "amx_fp16"),
}
_ATTR = "_prunec_compute_dtype"
_WRAPPED = "_prunec_upcast_forward"
_HELD = "_prunec_held_dtype"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def fast_half(dtype: str, device: str) -> bool:
    """Whether `device` computes in `dtype` (bfloat16 / float16) at least as fast as float32."""
    if dtype not in _CPU_FLAGS:
        return True
    if device.startswith("cuda"):
        import torch

        return dtype == "float16" or bool(
            torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        )
    if device.startswith("mps"):
        return True
    return any(flag in _cpu_flags() for flag in _CPU_FLAGS[dtype])


def resolve_dtypes(spec_dtype: str, storage: str, device: str) -> tuple[str, str]:
    """(dtype to load the weights in, dtype to compute in) for a checkpoint stored in
    `storage`; see the module docstring for the rule."""
    compute = spec_dtype
    if spec_dtype == "auto":
        compute = storage if fast_half(storage, device) else "float32"
    if ITEMSIZE.get(compute, 4) > ITEMSIZE.get(storage, 4):
        return storage, compute
    return compute, compute


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype `model` computes in: the installed upcast's, else its parameters' dtype."""
    import torch

    installed = getattr(model, _ATTR, None)
    if installed is not None:
        return installed  # type: ignore[no-any-return]
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def held_dtype(model: nn.Module, storage: str) -> str:
    """The dtype `model`'s weights are held in: `storage` under an installed upcast (small
    parameters aside), else the parameters' own dtype."""
    if getattr(model, _ATTR, None) is not None:
        return storage
    return str(compute_dtype(model)).removeprefix("torch.")


@contextmanager
def hold_small_parameters(model: nn.Module) -> Iterator[None]:
    """Within the block, the parameters `install_upcast` converted up front are back in the
    held dtype (what a checkpoint written from memory must contain)."""
    dtype = getattr(model, _ATTR, None)
    held = getattr(model, _HELD, None)
    if dtype is None or held is None:
        yield
        return
    converted = [p for p in _held_in_compute_dtype(model) if p.dtype == dtype]
    for param in converted:
        param.data = param.data.to(held)
    try:
        yield
    finally:
        for param in converted:
            param.data = param.data.to(dtype)


def install_upcast(model: nn.Module, dtype: torch.dtype) -> int:
    """Make every module with floating parameters of another dtype compute in `dtype`,
    converting its parameters just in time. Returns how many modules were wrapped.

    Small parameters and each transformers model's first parameter are converted once, here
    (exactly: the conversion widens): model code reads `self.dtype` to cast pixel values and
    image features, and must see the compute dtype there.

    Every module that owns parameters converts them around its forward. A subtree small
    enough (at most `BLOCK_ELEMENTS` parameters) whose root has a forward of its own converts
    all its parameters around that forward, because model code reads children's weights
    directly (`self.patch_embedding.weight.dtype` in CLIP, `out_proj.weight` in
    `nn.MultiheadAttention`); a module of torch itself with parameters and children is always
    such a unit.
    """
    held = {p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != dtype}
    setattr(model, _HELD, held.pop() if len(held) == 1 else None)
    for param in _held_in_compute_dtype(model):
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)

    def converted(owners: list[nn.Module]) -> list[tuple[dict[str, Any], str]]:
        return [
            (owner._parameters, name)
            for owner in owners
            for name, param in owner._parameters.items()
            if param is not None and param.is_floating_point() and param.dtype != dtype
        ]

    count = 0
    in_unit: set[int] = set()
    for module in model.modules():  # parents before children
        if hasattr(module, _WRAPPED):
            continue
        subtree = list(module.modules())
        params = converted(subtree)
        unit = bool(params) and len(subtree) > 1 and _is_unit(module, params)
        if unit and id(module) not in in_unit:
            in_unit.update(id(m) for m in subtree)
        else:
            params = converted([module])
        if params:
            original = module.forward
            module.forward = _wrapper(module, params, dtype, original)
            setattr(module, _WRAPPED, original)
            count += 1
    setattr(model, _ATTR, dtype)
    return count


def _is_unit(module: nn.Module, params: list[tuple[dict[str, Any], str]]) -> bool:
    from torch import nn

    if type(module).forward is nn.Module.forward:  # containers: their forward never runs
        return False
    if type(module).__module__.startswith("torch.nn.") and module._parameters:
        return True
    return sum(table[name].numel() for table, name in params) <= BLOCK_ELEMENTS


def _held_in_compute_dtype(model: nn.Module) -> list[torch.nn.Parameter]:
    """Small parameters, and the first parameter of every transformers model inside `model`
    when it is not large: `PreTrainedModel.dtype` is its first parameter's dtype, and model
    code casts pixel values and image features to it."""
    from transformers import PreTrainedModel

    chosen = {id(p): p for p in model.parameters() if p.numel() <= SMALL_ELEMENTS}
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            first = next((p for p in module.parameters() if p.is_floating_point()), None)
            if first is not None and first.numel() <= BLOCK_ELEMENTS:
                chosen[id(first)] = first
    return list(chosen.values())


def remove_upcast(model: nn.Module) -> None:
    """Undo `install_upcast` (the weights stay in their held dtype)."""
    for module in model.modules():
        if hasattr(module, _WRAPPED):
            del module.forward  # the instance attribute; the class's forward shows again
            delattr(module, _WRAPPED)
    for attr in (_ATTR, _HELD):
        if hasattr(model, attr):
            delattr(model, attr)


def materialize(model: nn.Module) -> None:
    """Convert the held weights to the compute dtype for consumers that need a plain model
    (exporters); costs the weights in the compute dtype."""
    dtype = getattr(model, _ATTR, None)
    if dtype is None:
        return
    remove_upcast(model)
    model.to(dtype)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    import torch

    half = (torch.float16, torch.bfloat16)
    if isinstance(value, torch.Tensor) and value.dtype in half and value.dtype != dtype:
        return value.to(dtype)
    return value


def _wrapper(
    module: nn.Module,
    params: list[tuple[dict[str, Any], str]],
    dtype: torch.dtype,
    original: Callable[..., Any],
) -> Callable[..., Any]:
    from torch import nn

    own = module._parameters
    if isinstance(module, nn.Embedding) and params == [(own, "weight")]:
        return _embedding_forward(module, dtype, original)
    weight = own.get("weight")
    if type(module) is nn.Linear and weight is not None and weight.numel() > BLOCK_ELEMENTS:
        return _blocked_linear_forward(own, dtype)

    def forward(*args: Any, **kwargs: Any) -> Any:
        held = [(table, name, table[name]) for table, name in params]
        try:
            for table, name, value in held:
                table[name] = value.to(dtype)
            args = tuple(_cast(a, dtype) for a in args)
            kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
            return original(*args, **kwargs)
        finally:
            for table, name, value in held:
                table[name] = value

    return forward


def _embedding_forward(
    module: nn.Embedding, dtype: torch.dtype, original: Callable[..., Any]
) -> Callable[..., Any]:
    """Look up through a table of only the rows this batch uses, converted: exact, and the
    vocabulary-sized matrix is never converted (subclasses' scaling still applies).
    `padding_idx` only shapes gradients; it is lifted because it may index past the table."""
    import torch

    params = module._parameters

    def forward(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        weight, padding_idx = params["weight"], module.padding_idx
        assert weight is not None
        rows, inverse = torch.unique(input_ids, return_inverse=True)
        params["weight"] = weight[rows].to(dtype)  # type: ignore[assignment]
        module.padding_idx = None
        try:
            return original(inverse, *args, **kwargs)
        finally:
            params["weight"] = weight
            module.padding_idx = padding_idx

    return forward


def _blocked_linear_forward(params: Mapping[str, Any], dtype: torch.dtype) -> Callable[..., Any]:
    import torch
    import torch.nn.functional as F

    def forward(x: torch.Tensor) -> torch.Tensor:
        weight, bias = params["weight"], params["bias"]
        x = _cast(x, dtype)
        step = max(1, BLOCK_ELEMENTS // weight.shape[1])
        parts = [
            F.linear(
                x,
                weight[i : i + step].to(dtype),
                None if bias is None else bias[i : i + step].to(dtype),
            )
            for i in range(0, weight.shape[0], step)
        ]
        return torch.cat(parts, dim=-1)

    return forward
