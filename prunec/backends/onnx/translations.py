"""Exporter fixes: aten ops whose stock ONNX translation disagrees with PyTorch.

Passed to `torch.onnx.export(custom_translation_table=...)` for every dynamo export.

`aten::arange` with non-integer bounds: torch sizes the result as
`ceil((end - start) / step)` in float64, while the stock translation (onnxscript's torchlib)
casts the bounds to float32 and emits `Range`, whose length ONNX computes in float32. The
two lengths differ whenever the float32 rounding lands on the other side of an integer:
`torch.arange(1 / 6, 1.0, 1 / 6)` has 6 elements in PyTorch and 5 in the graph. Idefics3's
vision embeddings build their position buckets exactly like that (`1 / num_patches_per_side`
steps), and the traced `bucketize` keeps torch's length (6) as its search bound, so
onnxruntime indexes past the 5-element constant: "GatherND ... invalid index" for towers
with 3, 6, 7, 14, 19, 24, 27, 28, ... patches per side. Here bounds known at export time are
evaluated by torch itself (the graph gets torch's exact values as a constant), and
symbolic ones use a float64 `Range`, which has torch's length and values.
"""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
import torch
from onnxscript.function_libs.torch_lib.ops.core import aten_arange_start_step
from onnxscript.onnx_opset import opset18

#: Untyped: onnxscript's op stubs do not type-check traced (eager-built) graphs.
op: Any = opset18

_TORCH_DTYPES: dict[ir.DataType, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
}


def _integral(value: Any) -> bool | None:
    """Whether an arange bound is an integer (None: a graph value of unknown type)."""
    if isinstance(value, (bool, int, float)):
        return not isinstance(value, float)
    dtype = getattr(value, "dtype", None)
    return None if dtype is None else bool(dtype.is_integer())


def arange_start_step(
    start: Any,
    end: Any,
    step: Any = 1,
    dtype: int = -1,
    layout: str = "",
    device: str = "",
    pin_memory: bool = False,
) -> Any:
    """arange.start_step(Scalar start, Scalar end, Scalar step=1, *, ScalarType? dtype=None, ...)"""
    static = all(isinstance(v, (int, float)) for v in (start, end, step))
    torch_dtype = None if dtype == -1 else _TORCH_DTYPES.get(ir.DataType(dtype))
    if static and (dtype == -1 or torch_dtype is not None):
        values = torch.arange(start, end, step, dtype=torch_dtype)
        return op.Constant(value=ir.tensor(values))
    kinds = [_integral(v) for v in (start, end, step)]
    floating_out = dtype == -1 or ir.DataType(dtype).is_floating_point()
    if None in kinds or all(kinds) or not floating_out:
        # integer bounds are exact in the stock translation; values of unknown type and
        # integer results of symbolic float bounds are left to it as well
        return aten_arange_start_step(start, end, step, dtype)
    bounds = [op.Cast(v, to=ir.DataType.DOUBLE) for v in (start, end, step)]
    out = ir.DataType.FLOAT if dtype == -1 else ir.DataType(dtype)
    return op.Cast(op.Range(*bounds), to=out)


def arange_start(
    start: Any,
    end: Any,
    dtype: int = -1,
    layout: str = "",
    device: str = "",
    pin_memory: bool = False,
) -> Any:
    """arange.start(Scalar start, Scalar end, *, ScalarType? dtype=None, ...)"""
    return arange_start_step(start, end, 1, dtype)


def arange(
    end: Any,
    dtype: int = -1,
    layout: str = "",
    device: str = "",
    pin_memory: bool = False,
) -> Any:
    """arange(Scalar end, *, ScalarType? dtype=None, ...)"""
    return arange_start_step(0, end, 1, dtype)


def translation_table() -> dict[Any, Any]:
    """The custom translations every prunec export uses."""
    aten = torch.ops.aten
    return {
        aten.arange.start_step: arange_start_step,
        aten.arange.start: arange_start,
        aten.arange.default: arange,
    }
