"""The `genai` target kind: a folder that onnxruntime-genai loads (`og.Model(DIR)`).

The pruned model is written as a Hugging Face checkpoint into a scratch folder inside the
staging directory, and onnxruntime-genai's own model builder (`onnxruntime_genai.models.builder`,
used as a library, not re-implemented) turns it into `model.onnx` + `genai_config.json` +
tokenizer files. For vision-language models (see `arch.GENAI_TYPES`) the builder writes the
decoder only; prunec adds the vision and embedding graphs and their config sections
(`vision.py`). The folder then checks itself (`check.py`): it loads in `og.Model`, its tokenizer
encodes like the Hugging Face one, and its greedy tokens are transformers' greedy tokens on the
pruned model (teacher-forced agreement, 100% for fp32, at least `agreement` otherwise).

This module imports light (no torch, onnx or onnxruntime_genai): `prunec check` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from prunec.backends.base import Backend, EmitJob, TargetOptions
from prunec.backends.genai.arch import GENAI_TYPES, NOT_SUPPORTED, VERIFIED, unsupported_reason

if TYPE_CHECKING:
    from prunec.backends.genai.report import GenaiReport

__all__ = [
    "BACKEND",
    "GENAI_TYPES",
    "NOT_SUPPORTED",
    "VERIFIED",
    "GenaiBackend",
    "GenaiOptions",
    "GenaiReport",
    "emit_genai",
]

#: The precision / execution-provider pairs onnxruntime-genai 0.18's builder writes a working
#: model for. fp16 on CPU gives a graph whose attention fails at run time; fp32 for CUDA a
#: graph with its key/value outputs left unconnected (both measured; see docs/genai.md).
VALID_PAIRS: dict[str, tuple[str, ...]] = {"cpu": ("fp32", "int4"), "cuda": ("fp16", "int4")}


class GenaiOptions(TargetOptions):
    """`target genai "DIR" { precision int4  execution cpu  agreement 0.5 }`.

    precision: weights of the decoder: `fp32`, `fp16` (CUDA) or `int4` (weight-only,
        block-wise, onnxruntime's MatMulNBits). Vision and embedding graphs stay float32.
    execution: the execution provider the graphs are built for (`cpu` or `cuda`).
    agreement: for fp16 and int4, the smallest fraction of transformers' greedy tokens the
        folder must reproduce (teacher-forced, over every checked prompt) to be published;
        fp32 must reproduce all of them.
    """

    precision: Literal["fp32", "fp16", "int4"] = "fp32"
    execution: Literal["cpu", "cuda"] = "cpu"
    agreement: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _valid_pair(self) -> GenaiOptions:
        allowed = VALID_PAIRS[self.execution]
        if self.precision not in allowed:
            choices = " or ".join(f"`{p}`" for p in allowed)
            raise ValueError(
                f"precision `{self.precision}` is not built for execution `{self.execution}` "
                f"(use {choices})"
            )
        return self


class GenaiBackend(Backend):
    """`target genai "DIR"`: an onnxruntime-genai folder built by its own model builder."""

    name = "genai"
    summary = "an onnxruntime-genai folder (genai_config.json, model.onnx, tokenizer)"
    Options = GenaiOptions
    needs_samples = True

    def unsupported(self, config: Mapping[str, Any]) -> str | None:
        return unsupported_reason(config)

    def emit(self, job: EmitJob) -> GenaiReport:
        from prunec.backends.genai.emit import emit_genai

        return emit_genai(job)


BACKEND: Any = GenaiBackend()


def __getattr__(name: str) -> Any:
    if name == "emit_genai":
        from prunec.backends.genai.emit import emit_genai

        return emit_genai
    if name == "GenaiReport":
        from prunec.backends.genai.report import GenaiReport

        return GenaiReport
    raise AttributeError(name)
