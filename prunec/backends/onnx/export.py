"""Graph export: thin torch wrappers around a (pruned) HF model and torch.onnx (dynamo) calls.

Why one decoder graph and no `use_cache_branch`: the dynamo exporter on torch 2.13 traces
the decoder with past key/values as ordinary inputs whose sequence axis is symbolic. The
resulting graph is a plain Concat of past and new keys, which onnxruntime runs unchanged
with a zero-length past, so the same graph serves prefill (past length 0) and decode
(past length > 0). Parity is checked for both cases, so this is verified, not assumed.
One graph means the weights are stored once (a prefill + decode pair would duplicate
them, and optimum's If-merge is not available for transformers 5).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The exporter warns once per missing torchvision op (nms, roi_align, ...) at registration;
# prunec exports no torchvision op, so those lines are noise in the build log.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

EMBED_FILE = "embed_tokens.onnx"
VISION_FILE = "vision_encoder.onnx"
DECODER_FILE = "decoder_model_merged.onnx"
DECODER_NO_CACHE_FILE = "decoder_model.onnx"

#: Names of the symbolic axes in every graph (the manifest repeats them).
BATCH, SEQ, PAST, TOTAL = (
    "batch",
    "sequence_length",
    "past_sequence_length",
    "total_sequence_length",
)
LOGITS = "num_logits"


@dataclass(frozen=True)
class KvLayout:
    """The decoder's cache: one key and one value tensor per layer, [batch, heads, seq, dim]."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    def past_names(self) -> list[str]:
        return [
            f"past_key_values.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")
        ]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kv}" for i in range(self.num_layers) for kv in ("key", "value")]


def kv_layout(model: nn.Module) -> KvLayout:
    """Read the cache geometry from the model's text config (after pruning)."""
    text = model.config.get_text_config(decoder=True)  # type: ignore[union-attr,operator]
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return KvLayout(
        num_layers=int(text.num_hidden_layers),
        num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=int(head_dim),
        hidden_size=int(text.hidden_size),
        vocab_size=int(text.vocab_size),
    )


class _Embed(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed = model.get_input_embeddings()  # type: ignore[operator]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)  # type: ignore[no-any-return]


class _Vision(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixel_values)  # type: ignore[operator]
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (list, tuple)):
            feats = torch.stack(list(feats))
        if feats.dim() == 2:  # some towers flatten all images into one token axis
            feats = feats.reshape(pixel_values.shape[0], -1, feats.shape[-1])
        return feats  # type: ignore[no-any-return]


class _VisionGrid(nn.Module):
    """Qwen2-VL style: flattened patches of one image at a fixed grid -> its features."""

    def __init__(self, model: nn.Module, grid_thw: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("grid_thw", grid_thw.reshape(1, 3).clone())

    def forward(self, pixel_values: torch.Tensor) -> Any:
        out = self.model.get_image_features(pixel_values=pixel_values, image_grid_thw=self.grid_thw)  # type: ignore[operator]
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (list, tuple)):
            feats = torch.cat(list(feats))
        feats = feats.reshape(1, -1, feats.shape[-1])
        deepstack = getattr(out, "deepstack_features", None)
        if not deepstack:
            return feats
        # Qwen3-VL: one feature map per deepstack layer -> [layers, tokens, hidden]
        stacked = torch.stack(
            [torch.cat(list(f)) if isinstance(f, (list, tuple)) else f for f in deepstack]
        )
        return feats, stacked


class _Decoder(nn.Module):
    """inputs_embeds, attention_mask, position_ids, logits_indices, [token_type_ids], *past."""

    def __init__(
        self,
        model: nn.Module,
        layout: KvLayout,
        kv_cache: bool,
        token_types: bool = False,
        deepstack: bool = False,
    ):
        super().__init__()
        self.model = model
        self.layout = layout
        self.kv_cache = kv_cache
        self.token_types = token_types
        self.deepstack = deepstack

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        logits_indices: torch.Tensor,
        *rest: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        extra: dict[str, torch.Tensor] = {}
        past = rest
        if self.token_types:
            extra["token_type_ids"], past = rest[0], rest[1:]
        deepstack = None
        if self.deepstack:
            deepstack, past = past[0], past[1:]

        cache = None
        if self.kv_cache:
            # A config-less cache keeps every layer's full history; sliding-window layers
            # are then limited by their attention mask, which gives the same logits.
            cache = DynamicCache()
            for i in range(self.layout.num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
        if deepstack is not None:
            return _deepstack_forward(
                self, inputs_embeds, attention_mask, position_ids, logits_indices, deepstack, cache
            )
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=self.kv_cache,
            # a tensor here selects positions: generation needs only the last one, which
            # skips the vocabulary projection for every other prompt token
            logits_to_keep=logits_indices,
            **extra,
        )
        return _decoder_outputs(self, out, out.logits)


def _dense_deepstack(hidden: torch.Tensor, mask: Any, visual: torch.Tensor) -> torch.Tensor:
    # Qwen3-VL adds deepstack features at the image positions by boolean indexing, which has
    # a data-dependent shape; with features scattered densely (zeros elsewhere) a plain add
    # gives the same result and exports with static shapes.
    return hidden + visual


def _decoder_outputs(self: _Decoder, out: Any, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if not self.kv_cache:
        return (logits,)
    present: list[torch.Tensor] = []
    for layer in out.past_key_values.layers:
        present += [layer.keys, layer.values]
    return (logits, *present)


def _deepstack_forward(
    self: _Decoder,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    logits_indices: torch.Tensor,
    deepstack: torch.Tensor,
    cache: Any,
) -> tuple[torch.Tensor, ...]:
    """Qwen3-VL: the language model with dense deepstack features, then the LM head."""
    model: Any = self.model
    language_model = model.model.language_model
    original = language_model._deepstack_process
    language_model._deepstack_process = _dense_deepstack
    try:
        out = language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=self.kv_cache,
            visual_pos_masks=None,
            deepstack_visual_embeds=list(deepstack.unbind(0)),
        )
    finally:
        language_model._deepstack_process = original
    logits = model.lm_head(out.last_hidden_state[:, logits_indices])
    return _decoder_outputs(self, out, logits)


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    dynamic_shapes: Any,
    input_names: list[str],
    output_names: list[str],
    path: Path,
    opset: int,
    rename: dict[str, list[str | int]] | None = None,
) -> None:
    import onnx_ir as ir

    from prunec.backends.onnx.translations import translation_table

    # transformers' torch-side input checks trace to aten._is_all_true, which dynamo cannot
    # export (see DESIGN.md); they guard user input, not graph semantics.
    os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset,
            verbose=False,
            custom_translation_table=translation_table(),
        )
    assert program is not None
    for value in program.model.graph.inputs:
        if rename and value.name in rename:
            value.shape = ir.Shape(rename[value.name])
    # Over 2 GB the protobuf limit forces external data; save() switches automatically.
    program.save(str(path))


def export_embed(model: nn.Module, path: Path, opset: int) -> None:
    """input_ids [batch, seq] -> inputs_embeds [batch, seq, hidden]."""
    from torch.export import Dim

    ids = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.long)
    shapes = {"input_ids": {0: Dim(BATCH), 1: Dim(SEQ)}}
    _export(_Embed(model), (ids,), shapes, ["input_ids"], ["inputs_embeds"], path, opset)


def export_vision(model: nn.Module, pixel_values: torch.Tensor, path: Path, opset: int) -> None:
    """pixel_values [1, 3, H, W] -> image_features [1, tokens, hidden]: one image per call.

    Fully static: vision towers often specialise the image axis during tracing (CLIP does
    on torch 2.13), and a fixed grid is what edge runtimes optimise best anyway.
    """
    example = pixel_values[:1].float()
    _export(_Vision(model), (example,), None, ["pixel_values"], ["image_features"], path, opset)


def export_vision_fixed_grid(
    model: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor, path: Path, opset: int
) -> None:
    """pixel_values [patches, patch_dim] of one image at `grid_thw` -> [1, tokens, hidden].

    TorchScript tracing (not dynamo): the grid-dependent shapes become constants, which is
    what a fixed grid means; parity against PyTorch checks the result.
    """
    wrapper = _VisionGrid(model, grid_thw).eval()
    with torch.no_grad():
        deepstack = isinstance(wrapper(pixel_values.float()), tuple)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (pixel_values.float(),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["pixel_values"],
            output_names=["image_features", "deepstack_features"][: 2 if deepstack else 1],
        )


def export_decoder(
    model: nn.Module,
    layout: KvLayout,
    path: Path,
    opset: int,
    kv_cache: bool,
    token_types: bool = False,
    mrope: bool = False,
    deepstack_layers: int = 0,
) -> None:
    """The language model with its head; with `kv_cache`, past/present key values too."""
    from torch.export import Dim

    batch, seq, past_len = 2, 3, 4  # example sizes above 1: dynamo specialises 0 and 1
    past_len = past_len if kv_cache else 0
    embeds = torch.randn(batch, seq, layout.hidden_size)
    mask = torch.ones(batch, past_len + seq, dtype=torch.long)
    positions = torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous()
    b, s = Dim(BATCH), Dim(SEQ)
    position_shape: dict[int, Any] = {0: b, 1: s}
    if mrope:  # [3, batch, seq]: temporal, height, width
        positions = positions[None].expand(3, batch, seq).contiguous()
        position_shape = {1: b, 2: s}
    shapes: dict[str, Any] = {
        "inputs_embeds": {0: b, 1: s},
        "attention_mask": {0: b, 1: Dim.AUTO},
        "position_ids": position_shape,
        "logits_indices": {0: Dim(LOGITS)},
    }
    keep = torch.tensor([seq - 2, seq - 1], dtype=torch.long)
    args: tuple[torch.Tensor, ...] = (embeds, mask, positions, keep)
    names = ["inputs_embeds", "attention_mask", "position_ids", "logits_indices"]
    outputs = ["logits"]
    rest: list[dict[int, Any]] = []  # shapes of the *rest varargs, in order
    if token_types:
        args += (torch.tensor([[0, 1, 1], [1, 1, 0]], dtype=torch.long),)
        rest.append({0: b, 1: s})
        names.append("token_type_ids")
    if deepstack_layers:
        args += (torch.zeros(deepstack_layers, batch, seq, layout.hidden_size),)
        rest.append({1: b, 2: s})
        names.append("deepstack_embeds")
    if kv_cache:
        kv_shape = (batch, layout.num_kv_heads, past_len, layout.head_dim)
        args += tuple(torch.randn(kv_shape) for _ in range(2 * layout.num_layers))
        rest += [{0: b, 2: Dim(PAST)} for _ in range(2 * layout.num_layers)]
        names += layout.past_names()
        outputs += layout.present_names()
    if rest:
        shapes["rest"] = tuple(rest)
    wrapper = _Decoder(model, layout, kv_cache, token_types, deepstack_layers > 0).eval()
    rename: dict[str, list[str | int]] = {"attention_mask": [BATCH, TOTAL if kv_cache else SEQ]}
    _export(wrapper, args, shapes, names, outputs, path, opset, rename)
