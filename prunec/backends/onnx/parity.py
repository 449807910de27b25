"""onnxruntime vs PyTorch on the same inputs: per-graph max abs diff and greedy-token agreement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunec.runtime.generate import OnnxGenerator, positions_from_mask


@dataclass(frozen=True)
class Sample:
    """One parity input in numpy: ids [batch, seq], mask [batch, seq], optional pixels.

    extra: the processor's other outputs (image_grid_thw, mm_token_type_ids, ...), passed
    to PyTorch as they are.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray | None
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(value)


def to_sample(inputs: dict[str, Any]) -> Sample:
    """Normalise a processor output (torch or numpy tensors) into a Sample."""
    raw_ids = _array(inputs["input_ids"])
    ids = raw_ids.astype(np.int64).reshape(-1, raw_ids.shape[-1])
    mask = np.ones_like(ids)
    if inputs.get("attention_mask") is not None:
        mask = _array(inputs["attention_mask"]).astype(np.int64).reshape(ids.shape)
    pixels = inputs.get("pixel_values")
    known = {"input_ids", "attention_mask", "pixel_values"}
    extra = {k: _array(v) for k, v in inputs.items() if k not in known and v is not None}
    pixel_array = None if pixels is None else _array(pixels).astype(np.float32)
    return Sample(ids, mask, pixel_array, extra)


def vision_module(model: nn.Module, sample: Sample) -> nn.Module:
    """The torch module the vision graph was exported from, for this sample's images."""
    from prunec.backends.onnx.export import _Vision, _VisionGrid

    if "image_grid_thw" in sample.extra:
        return _VisionGrid(model, torch.from_numpy(sample.extra["image_grid_thw"][0]))
    return _Vision(model)


def vision_reference(model: nn.Module, sample: Sample) -> list[np.ndarray]:
    """PyTorch's vision outputs for this sample: features, then deepstack features if any."""
    assert sample.pixel_values is not None
    with torch.no_grad():
        out = vision_module(model, sample)(torch.from_numpy(sample.pixel_values))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.float().numpy() for o in outs]


def _token_types(gen: OnnxGenerator, ids: np.ndarray, with_image: bool) -> np.ndarray | None:
    if not gen.manifest.token_type_ids:
        return None
    if not with_image:
        return np.zeros_like(ids)
    return (ids == gen.manifest.image_token_id).astype(np.int64)


def _ort_positions(gen: OnnxGenerator, sample: Sample) -> np.ndarray:
    """What the runner feeds as position_ids for this sample."""
    positions = positions_from_mask(sample.attention_mask)
    if gen.manifest.position_ids != "mrope":
        return positions
    if sample.pixel_values is not None:  # image prompts come unpadded, one per sample
        return gen.prompt_positions(sample.input_ids[0], with_image=True)[0]
    return np.broadcast_to(positions[None], (3, *positions.shape)).copy()


def _torch_logits(
    model: nn.Module, sample: Sample, types: np.ndarray | None, mrope: bool
) -> np.ndarray:
    kwargs: dict[str, Any] = {k: torch.from_numpy(v) for k, v in sample.extra.items()}
    kwargs["input_ids"] = torch.from_numpy(sample.input_ids)
    kwargs["attention_mask"] = torch.from_numpy(sample.attention_mask)
    if not (mrope and sample.pixel_values is not None):  # M-RoPE with images: the model's own
        kwargs["position_ids"] = torch.from_numpy(positions_from_mask(sample.attention_mask))
    if types is not None:
        kwargs["token_type_ids"] = torch.from_numpy(types)
    if sample.pixel_values is not None:
        kwargs["pixel_values"] = torch.from_numpy(sample.pixel_values)
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()  # type: ignore[no-any-return]


def _masked_max(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    keep = mask.astype(bool)
    return float(np.abs(a[keep] - b[keep]).max()) if keep.any() else 0.0


def decoder_diffs(
    model: nn.Module, gen: OnnxGenerator, sample: Sample
) -> tuple[float, np.ndarray, np.ndarray]:
    """Max diff of prefill and cached decode logits; also the ORT and torch logits."""
    types = _token_types(gen, sample.input_ids, sample.pixel_values is not None)
    ref = _torch_logits(model, sample, types, gen.manifest.position_ids == "mrope")
    embeds, deepstack = gen.prompt_inputs(sample.input_ids, sample.pixel_values)
    mask = sample.attention_mask
    positions = _ort_positions(gen, sample)
    logits, _ = gen.decode(embeds, mask, positions, token_type_ids=types, deepstack=deepstack)
    worst = _masked_max(logits, ref, mask)
    split = max(1, sample.input_ids.shape[1] - 2)
    if gen.manifest.kv_cache and split < sample.input_ids.shape[1]:
        # prefill the head, then feed the last tokens against the cache: exercises past > 0
        head_types = None if types is None else types[:, :split]
        tail_types = None if types is None else types[:, split:]
        head_ds = None if deepstack is None else deepstack[:, :, :split]
        tail_ds = None if deepstack is None else deepstack[:, :, split:]
        _, past = gen.decode(
            embeds[:, :split],
            mask[:, :split],
            positions[..., :split],
            None,
            None,
            head_types,
            head_ds,
        )
        tail, _ = gen.decode(
            embeds[:, split:], mask, positions[..., split:], past, None, tail_types, tail_ds
        )
        worst = max(worst, _masked_max(tail, ref[:, split:], mask[:, split:]))
    return worst, logits, ref


def embed_diff(model: nn.Module, gen: OnnxGenerator, sample: Sample) -> float:
    with torch.no_grad():
        ref = model.get_input_embeddings()(torch.from_numpy(sample.input_ids)).float().numpy()  # type: ignore[operator]
    return float(np.abs(gen.embed(sample.input_ids) - ref).max())


def vision_diff(model: nn.Module, gen: OnnxGenerator, sample: Sample) -> float:
    assert sample.pixel_values is not None
    refs = vision_reference(model, sample)
    got = gen.vision_outputs(sample.pixel_values)
    if len(got) != len(refs):
        return float("inf")
    return max(float(np.abs(a - b).max()) for a, b in zip(got, refs, strict=True))


def top1_agreement(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    keep = mask.astype(bool)
    return float((a.argmax(-1)[keep] == b.argmax(-1)[keep]).mean())


def _longest_row(sample: Sample) -> int:
    return int(sample.attention_mask.sum(axis=1).argmax())


def _row_pixels(sample: Sample, index: int) -> np.ndarray | None:
    # batched image samples carry one image per row (what processors produce for a batch)
    if sample.pixel_values is None or sample.input_ids.shape[0] == 1:
        return sample.pixel_values
    return sample.pixel_values[index : index + 1]


def torch_greedy(
    model: nn.Module,
    sample: Sample,
    max_new_tokens: int,
    token_types: bool = False,
    image_token_id: int | None = None,
) -> list[int]:
    """PyTorch's greedy tokens for the longest row of `sample` (padding stripped)."""
    index = _longest_row(sample)
    row = sample.attention_mask[index].astype(bool)
    ids = torch.from_numpy(sample.input_ids[index : index + 1, row])
    kwargs: dict[str, Any] = {}
    if sample.input_ids.shape[0] == 1:
        kwargs.update({k: torch.from_numpy(v) for k, v in sample.extra.items()})
    kwargs["attention_mask"] = torch.ones_like(ids)
    pixels = _row_pixels(sample, index)
    if pixels is not None:
        kwargs["pixel_values"] = torch.from_numpy(pixels)
        if token_types:
            kwargs["token_type_ids"] = torch.eq(ids, int(image_token_id or 0)).long()
    with torch.no_grad():
        out = model.generate(  # type: ignore[operator]
            ids, do_sample=False, max_new_tokens=max_new_tokens, **kwargs
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


def greedy_agreement(
    model: nn.Module, gen: OnnxGenerator, sample: Sample, max_new_tokens: int = 8
) -> float:
    """Fraction of torch's greedy tokens the runner reproduces, position by position."""
    m = gen.manifest
    expected = torch_greedy(model, sample, max_new_tokens, m.token_type_ids, m.image_token_id)
    index = _longest_row(sample)
    row = sample.attention_mask[index].astype(bool)
    got = gen.generate(
        sample.input_ids[index, row], _row_pixels(sample, index), max_new_tokens=len(expected)
    ).tokens
    same = sum(a == b for a, b in zip(expected, got, strict=False))
    return same / max(len(expected), 1)
