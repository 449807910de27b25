"""The `onnx-manifest.json` format: what each graph takes and returns, and what a runner needs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "onnx-manifest.json"
FORMAT = "prunec-onnx/1"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. shape: ints for fixed axes, strings for symbolic ones."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file of the artifact, relative to the artifact directory."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Manifest:
    """Everything the runner needs besides the graphs and tokenizer files.

    graphs: role ("embed_tokens", "vision_encoder", "decoder") -> graph.
    kv_cache: True when the decoder takes `past_key_values.{i}.key|value` and returns
        `present.{i}.key|value`, each [batch, num_kv_heads, seq, head_dim]; a zero-length
        past is valid (prefill). False: the decoder recomputes the whole sequence each step.
    position_ids: "1d" = [batch, seq] positions of non-padding tokens, counted from 0.
    image_token_id: placeholder id that image features replace, in order (VLMs; else None).
    image_tokens_per_image: features per image = placeholders per image (VLMs; else None).
    image_size: [height, width] the vision graph was exported for (VLMs; else None).
    image_placeholder_ids / image_expansion_ids: the ids the chat template writes for one
        image, and the ids the model's processor puts in their place (e.g. boundary tokens
        around `image_tokens_per_image` placeholders); None = repeat `image_token_id`.
    pixel_values_shape: the vision graph's input shape for one image (4-D, or 5-D with an
        images axis for processors such as Idefics3's).
    token_type_ids: the decoder takes `token_type_ids` [batch, seq] (1 where the token is
        `image_token_id`).
    deepstack_layers: Qwen3-VL: the vision graph also returns `deepstack_features`
        [layers, tokens, hidden] and the decoder takes `deepstack_embeds`
        [layers, batch, seq, hidden], those features scattered onto the image positions
        (zeros elsewhere, and for every decode step).
    eos_token_ids: generation stops after emitting any of these.
    quantize: "none" or "int8" (dynamic int8 weights on MatMul/Gemm).
    """

    model_type: str
    graphs: dict[str, GraphSpec]
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    kv_cache: bool = True
    position_ids: str = "1d"
    image_token_id: int | None = None
    image_tokens_per_image: int | None = None
    image_size: tuple[int, int] | None = None
    image_placeholder_ids: tuple[int, ...] | None = None
    image_expansion_ids: tuple[int, ...] | None = None
    pixel_values_shape: tuple[int, ...] | None = None
    token_type_ids: bool = False
    deepstack_layers: int = 0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    quantize: str = "none"
    dtype: str = "float32"
    kv_layout: str = "[batch, num_kv_heads, sequence, head_dim] per layer, key then value"
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        data = json.loads((Path(directory) / MANIFEST_FILE).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported manifest format {data.get('format')!r}")
        graphs = {
            role: GraphSpec(
                file=g["file"],
                inputs=tuple(_tensor(t) for t in g["inputs"]),
                outputs=tuple(_tensor(t) for t in g["outputs"]),
            )
            for role, g in data.pop("graphs").items()
        }
        for key in (
            "eos_token_ids",
            "image_size",
            "image_placeholder_ids",
            "image_expansion_ids",
            "pixel_values_shape",
        ):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(graphs=graphs, **data)


def _tensor(data: dict[str, Any]) -> TensorSpec:
    return TensorSpec(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))
