"""Per-domain evaluation of a VLM: greedy exact-match accuracy and mean answer NLL."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunec.verify._records import Record, prompt_inputs


@dataclass(frozen=True)
class DomainEval:
    """How a model does on one domain's evaluation records.

    n: number of records evaluated (0 only for an empty file).
    accuracy: fraction whose greedy answer equals the reference after strip/lower.
    nll: mean negative log-likelihood per answer token, teacher-forced (nats; lower is better).
    """

    n: int
    accuracy: float
    nll: float


def _stack(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-pad per-sample inputs into one batch (left, so every row ends at its prompt end).

    Keys shaped like `input_ids` are padded (ids with `pad_id`, masks and the rest with 0);
    other tensors (pixel values, image sizes) are concatenated along the batch dimension.
    """
    import torch

    width = max(int(it["input_ids"].shape[-1]) for it in items)
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key == "input_ids" or values[0].shape == items[0]["input_ids"].shape:
            fill = pad_id if key == "input_ids" else 0
            padded = [
                torch.nn.functional.pad(v, (width - v.shape[-1], 0), value=fill) for v in values
            ]
            out[key] = torch.cat(padded, dim=0)
        else:
            out[key] = torch.cat(values, dim=0)
    return out


def _positions(mask: Any) -> Any:
    # Left padding would shift RoPE positions; count only real tokens, as in training.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _batch_nll(
    model: Any, prompts: Sequence[Mapping[str, Any]], answers: Sequence[Any], pad_id: int
) -> tuple[float, int]:
    """Summed answer-token NLL of a batch (teacher forcing) and the answer-token count."""
    import torch

    joined, lengths = [], []
    for inputs, ans in zip(prompts, answers, strict=True):
        item = dict(inputs)
        item["input_ids"] = torch.cat([inputs["input_ids"], ans[None]], dim=-1)
        item["attention_mask"] = torch.ones_like(item["input_ids"])
        for key, value in inputs.items():
            if (
                key not in ("input_ids", "attention_mask")
                and value.shape == inputs["input_ids"].shape
            ):
                item[key] = torch.cat([value, torch.zeros_like(ans[None])], dim=-1)
        joined.append(item)
        lengths.append(int(ans.shape[-1]))
    batch = _stack(joined, pad_id)
    logits = model(
        **batch, position_ids=_positions(batch["attention_mask"]), use_cache=False
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    total = 0.0
    for row, n in enumerate(lengths):
        targets = batch["input_ids"][row, -n:]
        predicted = logprobs[row, -n - 1 : -1]
        total -= float(predicted.gather(-1, targets[:, None]).sum())
    return total, sum(lengths)


def _batch_greedy(
    model: Any,
    prompts: Sequence[Mapping[str, Any]],
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
) -> list[list[int]]:
    """Greedy continuations without a KV cache, so any in-memory layer surgery is safe."""
    import torch

    batch = _stack(prompts, pad_id)
    ids, mask = batch.pop("input_ids"), batch.pop("attention_mask")
    extra_seq = {k: v for k, v in batch.items() if v.shape == ids.shape}
    rest = {k: v for k, v in batch.items() if k not in extra_seq}
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    generated: list[list[int]] = [[] for _ in range(ids.shape[0])]
    for _ in range(max_new_tokens):
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=_positions(mask),
            use_cache=False,
            **extra_seq,
            **rest,
        ).logits
        nxt = logits[:, -1].argmax(-1)
        for row, tok in enumerate(nxt.tolist()):
            if not done[row]:
                if tok in eos_ids:
                    done[row] = True
                else:
                    generated[row].append(tok)
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=-1)
        mask = torch.cat([mask, torch.ones_like(nxt[:, None])], dim=-1)
        extra_seq = {
            k: torch.cat([v, torch.zeros_like(nxt[:, None])], dim=-1) for k, v in extra_seq.items()
        }
    return generated


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list | tuple):
            ids.update(int(e) for e in eos)
    return ids


def normalize_answer(text: str) -> str:
    """The exact-match normal form: surrounding whitespace stripped, lower case."""
    return text.strip().lower()


def evaluate(
    model: Any,
    processor: Any,
    records: Sequence[Record],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 32,
) -> DomainEval:
    """Greedy exact-match accuracy and mean answer NLL of `model` on `records`."""
    import torch

    if not records:
        return DomainEval(n=0, accuracy=0.0, nll=math.nan)
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = _eos_ids(model, tokenizer)
    correct, nll_sum, nll_tokens = 0, 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(records), batch_size):
                chunk = records[start : start + batch_size]
                prompts = [prompt_inputs(processor, r) for r in chunk]
                answers = [
                    torch.tensor(
                        tokenizer(" " + r.answer.strip(), add_special_tokens=False)["input_ids"]
                    )
                    for r in chunk
                ]
                total, count = _batch_nll(model, prompts, answers, pad_id)
                nll_sum, nll_tokens = nll_sum + total, nll_tokens + count
                outputs = _batch_greedy(model, prompts, pad_id, eos_ids, max_new_tokens)
                for rec, out in zip(chunk, outputs, strict=True):
                    text = tokenizer.decode(out, skip_special_tokens=True)
                    correct += normalize_answer(text) == normalize_answer(rec.answer)
    finally:
        model.train(was_training)
    return DomainEval(
        n=len(records),
        accuracy=correct / len(records),
        nll=nll_sum / max(nll_tokens, 1),
    )


def retention(original: DomainEval, pruned: DomainEval) -> dict[str, float]:
    """How much of the original each metric keeps: accuracy pruned/original, NLL original/pruned.

    Both are 1.0 when nothing changed and fall below 1 as the pruned model gets worse. A zero
    original accuracy gives 1.0 when the pruned one is also zero (nothing to lose), else inf.
    """
    return {
        "accuracy": _ratio(pruned.accuracy, original.accuracy),
        "nll": _ratio(original.nll, pruned.nll),
    }


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 1.0 if num == 0 else math.inf
    return num / den
