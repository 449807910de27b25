"""The ONNX backend: a (pruned) HF model -> onnxruntime graphs, a manifest, and parity checks.

Layout of an artifact directory (documented for users in docs/onnx.md):

- `embed_tokens.onnx`: input_ids [batch, sequence_length] -> inputs_embeds [.., hidden].
- `vision_encoder.onnx` (VLMs): one image's pixel_values at the fixed size the processor
  produces -> image_features [1, tokens, hidden], already projected into the text embedding
  space (Qwen3-VL: plus deepstack_features). The runner writes them over the image
  placeholder tokens.
- `decoder_model_merged.onnx`: inputs_embeds, attention_mask [batch, total_sequence_length],
  position_ids [batch, sequence_length] (or [3, batch, sequence_length] for M-RoPE),
  logits_indices [num_logits] (which of this call's
  positions get logits; generation asks only for the last) and `past_key_values.{i}.key|value`
  -> logits [batch, num_logits, vocab] and `present.{i}.key|value`. One graph for prefill (zero-length past) and decode;
  see `export.py` for why. With `kv_cache off` it is `decoder_model.onnx`, without past.
- `onnx-manifest.json` (`prunec.runtime.manifest.Manifest`), config.json,
  generation_config.json and the processor/tokenizer files (tokenizer.json, chat template,
  image-processor config).

Only `check_onnx_supported` is imported eagerly; the exporter (torch) loads on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from prunec.backends.base import Backend, EmitJob, TargetOptions
from prunec.backends.onnx.arch import ARCHITECTURES, check_onnx_supported, unsupported_reason

if TYPE_CHECKING:
    from prunec.backends.onnx.emit import emit_onnx
    from prunec.backends.onnx.report import OnnxReport

__all__ = [
    "ARCHITECTURES",
    "BACKEND",
    "OnnxOptions",
    "OnnxReport",
    "check_onnx_supported",
    "emit_onnx",
]


class OnnxOptions(TargetOptions):
    """`target onnx "DIR" { opset 18  quantize int8  kv_cache on }`.

    opset: ONNX opset of every graph. quantize: `int8` adds dynamic int8 weights to the
    decoder (onnxruntime quantization; vision and embedding graphs stay float). kv_cache: the
    decoder takes and returns past key/values (one merged graph for prefill and decode).
    """

    opset: int = Field(18, ge=14, le=23)
    quantize: Literal["none", "int8"] = "none"
    kv_cache: bool = True


class OnnxBackend(Backend):
    """`target onnx "DIR"`: graphs for onnxruntime, run by `prunec run` (numpy only)."""

    name = "onnx"
    summary = "onnxruntime graphs (embeddings, vision encoder, decoder with KV cache)"
    Options = OnnxOptions
    needs_samples = True

    def unsupported(self, config: Mapping[str, Any]) -> str | None:
        return unsupported_reason(str(config.get("model_type", "")))

    def emit(self, job: EmitJob) -> OnnxReport:
        from prunec.backends.onnx.emit import emit_onnx

        assert job.loaded is not None  # onnx does not stream
        return emit_onnx(
            job.loaded.model,
            job.loaded.processor,
            job.staged,
            target=self.options(job.target),
            sample_inputs=[dict(s) for s in job.samples],
        )


BACKEND: Any = OnnxBackend()


def __getattr__(name: str) -> Any:
    if name == "emit_onnx":
        from prunec.backends.onnx.emit import emit_onnx

        return emit_onnx
    if name == "OnnxReport":
        from prunec.backends.onnx.report import OnnxReport

        return OnnxReport
    raise AttributeError(name)
