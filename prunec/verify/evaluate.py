"""Per-domain evaluation of a VLM: greedy exact-match accuracy and mean answer NLL."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunec.data import Record, encode, image_token_ids, prompt_inputs
from prunec.errors import BuildError


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


@dataclass(frozen=True)
class RecordEval:
    """How a model does on one evaluation record.

    correct: the greedy answer equals the reference (after `normalize_answer`).
    nll_sum / nll_tokens: summed answer-token NLL (teacher-forced, nats) and the token count.
    """

    correct: bool
    nll_sum: float
    nll_tokens: int


def summarize(results: Sequence[RecordEval]) -> DomainEval:
    """The DomainEval of per-record results (accuracy over records, NLL over answer tokens)."""
    if not results:
        return DomainEval(n=0, accuracy=0.0, nll=math.nan)
    tokens = sum(r.nll_tokens for r in results)
    return DomainEval(
        n=len(results),
        accuracy=sum(r.correct for r in results) / len(results),
        nll=sum(r.nll_sum for r in results) / max(tokens, 1),
    )


def _row_nll(model: Any, batch: Mapping[str, Any]) -> tuple[Any, Any]:
    """Per row of an `encode(..., with_answer=True)` batch: summed answer-token NLL, tokens."""
    import torch

    batch = dict(batch)
    answer_mask = batch.pop("answer_mask")
    logits = model(**batch, use_cache=False).logits
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = batch["input_ids"][:, 1:]
    picked = logprobs.gather(-1, targets[..., None])[..., 0]
    weights = answer_mask[:, 1:].to(picked.dtype)
    return -(picked * weights).sum(dim=1), weights.sum(dim=1)


def _batch_greedy(
    model: Any,
    prompts: Sequence[Mapping[str, Any]],
    pad_id: int,
    eos_ids: set[int],
    max_new_tokens: int,
    banned: list[int],
) -> list[list[int]]:
    """Greedy continuations without a KV cache, so any in-memory layer surgery is safe.

    No position ids are passed: left padding shifts every real token's RoPE position by the
    same amount, which rotary attention does not see (tests compare with unpadded generate).
    """
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
            use_cache=False,
            **extra_seq,
            **rest,
        ).logits
        last = logits[:, -1].clone()
        # A generated image placeholder would demand image features that do not exist (and is
        # never an answer), so greedy decoding may not pick one.
        last[:, banned] = -torch.inf
        nxt = last.argmax(-1)
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
    max_length: int = 512,
    cache: dict[Any, Any] | None = None,
) -> DomainEval:
    """Greedy exact-match accuracy and mean answer NLL of `model` on `records`.

    cache: a dict to keep the processed inputs in, so evaluating several pruned variants of
    one model on the same records (a sweep) runs the processor only once.
    """
    return summarize(
        evaluate_records(
            model,
            processor,
            records,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            max_length=max_length,
            cache=cache,
        )
    )


def evaluate_records(
    model: Any,
    processor: Any,
    records: Sequence[Record],
    *,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    max_length: int = 512,
    cache: dict[Any, Any] | None = None,
) -> list[RecordEval]:
    """`evaluate`, record by record (same order as `records`), so subsets can be summarised."""
    import torch

    if not records:
        return []
    missing = [r.where for r in records if r.answer is None]
    if missing:
        raise BuildError(f"evaluation records need an answer; none at {', '.join(missing[:3])}")
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = _eos_ids(model, tokenizer)
    cache = {} if cache is None else cache
    results: list[RecordEval | None] = [None] * len(records)
    was_training = model.training
    model.eval()
    from prunec.progress import progress

    try:
        with (
            torch.inference_mode(),
            progress("evaluating", total=len(records), unit="records") as bar,
        ):
            for rows in _modality_batches(records, batch_size):
                chunk = [records[i] for i in rows]
                key = ("batch", max_length, tuple(chunk))
                if key not in cache:
                    cache[key] = encode(processor, chunk, max_length, with_answer=True)
                prompts = []
                for rec in chunk:
                    if ("prompt", max_length, rec) not in cache:
                        cache["prompt", max_length, rec] = prompt_inputs(processor, rec, max_length)
                    prompts.append(cache["prompt", max_length, rec])
                sums, counts = _row_nll(model, cache[key])
                outputs = _batch_greedy(
                    model, prompts, pad_id, eos_ids, max_new_tokens, image_token_ids(processor)
                )
                for row, (i, out) in enumerate(zip(rows, outputs, strict=True)):
                    text = tokenizer.decode(out, skip_special_tokens=True)
                    correct = normalize_answer(text) == normalize_answer(records[i].answer or "")
                    results[i] = RecordEval(correct, float(sums[row]), int(counts[row]))
                bar.advance(len(chunk))
    finally:
        model.train(was_training)
    return [r for r in results if r is not None]


def _modality_batches(records: Sequence[Record], batch_size: int) -> list[list[int]]:
    """Indices of `records` in batches of one modality each (records with an image, then
    text-only ones; file order within each): a processor cannot batch an image record with a
    text-only one (the model would get pixel values for some rows only)."""
    with_image = [i for i, r in enumerate(records) if r.image is not None or r.image_in_history]
    text_only = [
        i for i, r in enumerate(records) if not (r.image is not None or r.image_in_history)
    ]
    return [
        group[start : start + batch_size]
        for group in (with_image, text_only)
        for start in range(0, len(group), batch_size)
    ]


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
