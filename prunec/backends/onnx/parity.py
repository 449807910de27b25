"""onnxruntime vs PyTorch on the same inputs: per-graph max abs diff and greedy-token agreement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunec.runtime.generate import OnnxGenerator, positions_from_mask


@dataclass(frozen=True)
class Sample:
    """One parity input in numpy: ids [batch, seq], mask [batch, seq], optional pixels."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray | None


def to_sample(inputs: dict[str, Any]) -> Sample:
    """Normalise a processor output (torch or numpy tensors) into a Sample."""

    def arr(value: Any) -> np.ndarray:
        return (
            value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        )

    ids = arr(inputs["input_ids"]).astype(np.int64).reshape(-1, arr(inputs["input_ids"]).shape[-1])
    mask = (
        arr(inputs["attention_mask"]).astype(np.int64)
        if "attention_mask" in inputs
        else np.ones_like(ids)
    )
    pixels = inputs.get("pixel_values")
    return Sample(
        ids, mask.reshape(ids.shape), None if pixels is None else arr(pixels).astype(np.float32)
    )


def _token_types(gen: OnnxGenerator, ids: np.ndarray, with_image: bool) -> np.ndarray | None:
    if not gen.manifest.token_type_ids:
        return None
    if not with_image:
        return np.zeros_like(ids)
    return (ids == gen.manifest.image_token_id).astype(np.int64)


def _torch_logits(model: nn.Module, sample: Sample, types: np.ndarray | None) -> np.ndarray:
    kwargs: dict[str, Any] = {
        "input_ids": torch.from_numpy(sample.input_ids),
        "attention_mask": torch.from_numpy(sample.attention_mask),
        "position_ids": torch.from_numpy(positions_from_mask(sample.attention_mask)),
    }
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
    ref = _torch_logits(model, sample, types)
    embeds = gen.prompt_embeds(sample.input_ids, sample.pixel_values)
    mask = sample.attention_mask
    positions = positions_from_mask(mask)
    logits, _ = gen.decode(embeds, mask, positions, token_type_ids=types)
    worst = _masked_max(logits, ref, mask)
    split = max(1, sample.input_ids.shape[1] - 2)
    if gen.manifest.kv_cache and split < sample.input_ids.shape[1]:
        # prefill the head, then feed the last tokens against the cache: exercises past > 0
        head_types = None if types is None else types[:, :split]
        tail_types = None if types is None else types[:, split:]
        _, past = gen.decode(
            embeds[:, :split], mask[:, :split], positions[:, :split], token_type_ids=head_types
        )
        tail, _ = gen.decode(
            embeds[:, split:], mask, positions[:, split:], past, token_type_ids=tail_types
        )
        worst = max(worst, _masked_max(tail, ref[:, split:], mask[:, split:]))
    return worst, logits, ref


def embed_diff(model: nn.Module, gen: OnnxGenerator, sample: Sample) -> float:
    with torch.no_grad():
        ref = model.get_input_embeddings()(torch.from_numpy(sample.input_ids)).float().numpy()  # type: ignore[operator]
    return float(np.abs(gen.embed(sample.input_ids) - ref).max())


def vision_diff(model: nn.Module, gen: OnnxGenerator, sample: Sample) -> float:
    from prunec.backends.onnx.export import _Vision

    assert sample.pixel_values is not None
    with torch.no_grad():
        ref = _Vision(model)(torch.from_numpy(sample.pixel_values)).float().numpy()
    return float(np.abs(gen.image_features(sample.pixel_values) - ref).max())


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
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids)}
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
