"""Which model types the `genai` target converts, and how (data, not code).

onnxruntime-genai's model builder (`onnxruntime_genai.models.builder`, 0.18) dispatches on
config.json's `architectures[0]`. `GENAI_TYPES` maps each Hugging Face `model_type` whose
architecture that builder converts to how prunec builds it: text models go through the builder
alone; `vision` types also get a vision graph and an embedding graph from prunec's ONNX exporter
(the builder writes only their decoder). `tests/test_genai.py` checks that every architecture
named here is one the installed builder dispatches on, and builds the `VERIFIED` ones in CI.

`NOT_SUPPORTED` names the builder's other architectures with the reason prunec does not offer
them, so `prunec check` can say why instead of just "no".
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GenaiArch:
    """How one model type becomes an onnxruntime-genai folder.

    architectures: the config.json `architectures[0]` values the builder converts for it.
    vision: images too: prunec adds `vision.onnx` (pixel patches -> image features) and
        `embedding.onnx` (token ids + image features -> input embeddings) and their
        genai_config.json sections; the builder writes the decoder without its embeddings.
    """

    architectures: tuple[str, ...]
    vision: bool = False


GENAI_TYPES: dict[str, GenaiArch] = {
    # built and checked against transformers in CI (tests/test_genai.py)
    "llama": GenaiArch(("LlamaForCausalLM",)),
    "mistral": GenaiArch(("MistralForCausalLM",)),
    "qwen2": GenaiArch(("Qwen2ForCausalLM",)),
    "qwen3": GenaiArch(("Qwen3ForCausalLM",)),
    "phi3": GenaiArch(("Phi3ForCausalLM",)),
    "gemma2": GenaiArch(("Gemma2ForCausalLM",)),
    "gemma3_text": GenaiArch(("Gemma3ForCausalLM",)),
    "qwen2_5_vl": GenaiArch(("Qwen2_5_VLForConditionalGeneration",), vision=True),
    # converted by the builder, not built in CI; every build still checks itself against
    # transformers' greedy tokens before anything is published
    "ernie4_5": GenaiArch(("Ernie4_5ForCausalLM",)),
    "gemma": GenaiArch(("GemmaForCausalLM",)),
    "gpt_oss": GenaiArch(("GptOssForCausalLM",)),
    "granite": GenaiArch(("GraniteForCausalLM",)),
    "granitemoehybrid": GenaiArch(("GraniteMoeHybridForCausalLM",)),
    "hunyuan_v1_dense": GenaiArch(("HunYuanDenseV1ForCausalLM",)),
    "lfm2": GenaiArch(("Lfm2ForCausalLM",)),
    "lfm2_moe": GenaiArch(("Lfm2MoeForCausalLM",)),
    "nemotron": GenaiArch(("NemotronForCausalLM",)),
    "olmo": GenaiArch(("OlmoForCausalLM",)),
    "phi": GenaiArch(("PhiForCausalLM",)),
    "smollm3": GenaiArch(("SmolLM3ForCausalLM",)),
}

#: The model types built in CI (tests/test_genai.py), text and vision.
VERIFIED: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma2",
    "gemma3_text",
    "qwen2_5_vl",
)

#: Model types the builder knows that prunec does not offer, and why.
NOT_SUPPORTED: dict[str, str] = {
    "gemma3": (
        "onnxruntime-genai's Gemma 3 decoder attends causally over image tokens, where "
        "transformers lets the tokens of one image attend to each other both ways, so image "
        "prompts would not give transformers' tokens"
    ),
    "qwen3_vl": (
        "onnxruntime-genai's Qwen3-VL decoder takes no deepstack features, which transformers "
        "adds to the first decoder layers, so image prompts would not give transformers' tokens"
    ),
    "mistral3": "vision graphs for Pixtral's variable image sizes are not written yet",
    "qwen3_5": "the builder writes its text decoder only and prunec has no vision graphs for it",
    "qwen3_5_moe": "the builder writes its text decoder only and prunec has no vision graphs for it",
    "gemma4": "the builder writes its text decoder only (no vision or audio)",
    "lfm2_vl": "the builder writes its text decoder only and prunec has no vision graphs for it",
    "phimoe": "the builder converts it for CUDA int4 only",
    "whisper": "an encoder-decoder speech model, not a decoder prunec prunes",
    "chatglm": "it needs remote code, which the builder does not run",
    "internlm2": "it needs remote code, which the builder does not run",
    "phi3small": "it needs remote code, which the builder does not run",
    "phi3_v": "it needs remote code, which the builder does not run",
    "phi4mm": "it needs remote code, which the builder does not run",
}


#: The decoder's attention kernel (GroupQueryAttention) rejects other head sizes at run time.
HEAD_SIZE_MULTIPLE = 16


def builder_installed() -> bool:
    """Whether onnxruntime-genai is importable (checked without importing it)."""
    return importlib.util.find_spec("onnxruntime_genai") is not None


def genai_type(config: Mapping[str, Any]) -> str:
    return str(config.get("model_type", ""))


def unsupported_reason(config: Mapping[str, Any]) -> str | None:
    """Why the `genai` target cannot convert the model whose config.json is `config`."""
    if not builder_installed():
        return "onnxruntime-genai is not installed (pip install 'onnxruntime-genai>=0.18')"
    model_type = genai_type(config)
    supported = ", ".join(sorted(GENAI_TYPES))
    entry = GENAI_TYPES.get(model_type)
    if entry is None:
        why = NOT_SUPPORTED.get(model_type, "onnxruntime-genai's model builder does not convert it")
        return f"model type `{model_type}` is not supported ({why}); supported: {supported}"
    head_size = _head_size(config.get("text_config") or config)
    if head_size is not None and head_size % HEAD_SIZE_MULTIPLE:
        return (
            f"onnxruntime's GroupQueryAttention takes head sizes that are multiples of "
            f"{HEAD_SIZE_MULTIPLE}; this model's is {head_size}"
        )
    architectures = config.get("architectures") or []
    if architectures and architectures[0] not in entry.architectures:
        wanted = " or ".join(entry.architectures)
        return (
            f"architecture `{architectures[0]}` is not converted by onnxruntime-genai's "
            f"model builder (for `{model_type}` it converts {wanted})"
        )
    return None


def _head_size(text: Mapping[str, Any]) -> int | None:
    head_dim = text.get("head_dim")
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    hidden, heads = text.get("hidden_size"), text.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


def arch_for(config: Mapping[str, Any]) -> GenaiArch:
    """The entry of a supported config (callers checked `unsupported_reason` first)."""
    return GENAI_TYPES[genai_type(config)]
