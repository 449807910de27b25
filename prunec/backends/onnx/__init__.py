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

from typing import TYPE_CHECKING, Any

from prunec.backends.onnx.arch import ARCHITECTURES, check_onnx_supported

if TYPE_CHECKING:
    from prunec.backends.onnx.emit import emit_onnx
    from prunec.backends.onnx.report import OnnxReport

__all__ = ["ARCHITECTURES", "OnnxReport", "check_onnx_supported", "emit_onnx"]


def __getattr__(name: str) -> Any:
    if name == "emit_onnx":
        from prunec.backends.onnx.emit import emit_onnx

        return emit_onnx
    if name == "OnnxReport":
        from prunec.backends.onnx.report import OnnxReport

        return OnnxReport
    raise AttributeError(name)
