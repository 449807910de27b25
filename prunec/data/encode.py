"""Encoding records through the model's processor and chat template into model inputs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from prunec.data.images import ImageProblem, NetworkUnavailable, open_rgb
from prunec.data.record import Record
from prunec.errors import BuildError

if TYPE_CHECKING:
    import torch


def load_image(record: Record) -> Any:
    """The record's image as an upright RGB PIL image; BuildError naming file:line when it
    cannot load."""
    assert record.image is not None
    try:
        return open_rgb(record.image)
    except (ImageProblem, NetworkUnavailable) as err:
        raise BuildError(f"{record.where}: cannot load image {record.image}: {err}") from err


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _has_chat_template(processor: Any) -> bool:
    return bool(
        getattr(processor, "chat_template", None)
        or getattr(_tokenizer(processor), "chat_template", None)
    )


def _is_multimodal(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None


def _turn(role: str, text: str, image: bool, multimodal: bool) -> dict[str, Any]:
    if not multimodal:
        return {"role": role, "content": text}
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image:
        content.insert(0, {"type": "image"})
    return {"role": role, "content": content}


def _messages(record: Record, multimodal: bool, with_answer: bool) -> list[dict[str, Any]]:
    """The chat: earlier turns as they were, then the user turn (image first, then text),
    then the answer as the assistant turn."""
    messages = [_turn(t.role, t.text, t.image, multimodal) for t in record.history]
    image_here = record.image is not None and not record.image_in_history
    messages.append(_turn("user", record.text, image_here, multimodal))
    if with_answer:
        messages.append(_turn("assistant", record.answer or "", False, multimodal))
    return messages


def _plain_prompt(record: Record, image_token: str | None) -> str:
    """The prompt without a chat template: one line per earlier turn, then the text; the
    image token goes before the text of the turn that shows the image."""
    parts = [(t.text, t.image) for t in record.history]
    parts.append((record.text, record.image is not None and not record.image_in_history))
    shown = [f"{image_token} {text}" if image and image_token else text for text, image in parts]
    return "\n".join(shown)


def _prompt_text(processor: Any, record: Record, with_answer: bool) -> tuple[str, str]:
    """(full text, the part of it that is the answer turn) for one record."""
    multimodal = _is_multimodal(processor)
    if record.image is not None and not multimodal:
        raise BuildError(f"{record.where}: the record has an image but the model takes text only")
    if _has_chat_template(processor):
        templater = (
            processor if hasattr(processor, "apply_chat_template") else _tokenizer(processor)
        )
        prompt = str(
            templater.apply_chat_template(
                _messages(record, multimodal, False), add_generation_prompt=True, tokenize=False
            )
        )
        if not with_answer:
            return prompt, ""
        full = str(
            templater.apply_chat_template(
                _messages(record, multimodal, True), add_generation_prompt=False, tokenize=False
            )
        )
        if full.startswith(prompt):
            return full, full[len(prompt) :]
        return prompt + (record.answer or ""), record.answer or ""  # template rewrote history
    prompt = _plain_prompt(record, getattr(processor, "image_token", None))
    if not with_answer:
        return prompt, ""
    answer = " " + (record.answer or "")
    return prompt + answer, answer


@contextmanager
def _right_padding(processor: Any) -> Iterator[None]:
    """Pad on the right, with EOS as the pad token when the tokenizer has none (Llama's);
    padded positions are masked everywhere, so the pad id itself never matters."""
    tokenizer = _tokenizer(processor)
    side = getattr(tokenizer, "padding_side", "right")
    borrowed = getattr(tokenizer, "pad_token", None) is None and getattr(
        tokenizer, "eos_token", None
    )
    tokenizer.padding_side = "right"
    if borrowed:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if borrowed:
            tokenizer.pad_token = None


def _run_processor(processor: Any, texts: list[str], records: Sequence[Record]) -> dict[str, Any]:
    if not _is_multimodal(processor):
        return dict(processor(texts, padding=True, return_tensors="pt"))
    if len(texts) == 1:
        return _process_one(processor, texts[0], records[0])
    try:
        return _process_batch(processor, texts, records)
    except TypeError:  # a processor that cannot batch: encode one by one, pad ourselves
        parts = [_process_one(processor, t, r) for t, r in zip(texts, records, strict=True)]
        return _pad_and_stack(processor, parts)
    except (ValueError, KeyError) as err:
        raise _rejected(records, err) from err


def _rejected(records: Sequence[Record], err: Exception) -> BuildError:
    where = records[0].where if len(records) == 1 else f"the batch starting at {records[0].where}"
    return BuildError(f"{where}: the model's processor rejected the sample: {err}")


def _process_batch(processor: Any, texts: list[str], records: Sequence[Record]) -> dict[str, Any]:
    images = [[load_image(r)] if r.image is not None else [] for r in records]
    kwargs: dict[str, Any] = {"text": texts, "padding": True}
    if any(images):
        kwargs["images"] = images
    out = dict(processor(**kwargs, return_tensors="pt"))
    out.pop("labels", None)  # PaliGemma adds labels for training; forward would compute a loss
    return out


def _process_one(processor: Any, text: str, record: Record) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"text": text}
    if record.image is not None:
        kwargs["images"] = load_image(record)
    try:
        out = dict(processor(**kwargs, return_tensors="pt"))
    except (TypeError, ValueError, KeyError) as err:
        raise _rejected([record], err) from err
    out.pop("labels", None)
    return out


def _pad_and_stack(processor: Any, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Right-pad per-sample sequence tensors [1, S_i] and concatenate everything on dim 0.

    Image tensors (pixel values, grids) concatenate as the model's own batched processor
    would: one image after another.
    """
    import torch

    pad_id = getattr(_tokenizer(processor), "pad_token_id", None) or 0
    width = max(int(p["input_ids"].shape[1]) for p in parts)
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts if key in p]
        if len(values) != len(parts) and key != "pixel_values" and "image" not in key:
            raise BuildError(f"cannot batch `{key}`: only some samples have it")
        is_sequence = (
            all(
                isinstance(v, torch.Tensor)
                and v.dim() == 2
                and v.shape[1] == p["input_ids"].shape[1]
                for v, p in zip(values, parts, strict=False)
            )
            and len(values) == len(parts)
            and key != "image_grid_thw"
        )
        if is_sequence:
            fill = pad_id if key == "input_ids" else 0
            values = [
                torch.nn.functional.pad(v, (0, width - v.shape[1]), value=fill) for v in values
            ]
        out[key] = torch.cat(values, dim=0)
    return out


def _sequence_keys(batch: dict[str, Any], length: int) -> list[str]:
    import torch

    return [
        k
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
        and v.dim() == 2
        and v.shape[1] == length
        and k != "image_grid_thw"
    ]


def image_token_ids(processor: Any) -> list[int]:
    """The token ids that stand for image features in this processor's prompts."""
    ids = []
    for attr in ("image_token_id", "image_token_index"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            ids.append(value)
    token = getattr(processor, "image_token", None)
    if isinstance(token, str):
        tid = _tokenizer(processor).convert_tokens_to_ids(token)
        if isinstance(tid, int):
            ids.append(tid)
    return sorted(set(ids))


def encode(
    processor: Any, records: Sequence[Record], max_length: int, with_answer: bool = False
) -> dict[str, torch.Tensor]:
    """A right-padded batch for the model's forward, through its processor and chat template.

    The user turn is the image (if any) then the text. With `with_answer`, the answer is the
    assistant turn and the batch also holds `answer_mask` [B, S] (1 on answer tokens, for NLL).
    Samples longer than `max_length` tokens are cut at the end; a cut through image tokens is a
    BuildError (raise `max_length`). Mixed text-only and image records may share a batch only
    when the processor accepts that; scoring batches them separately.
    """
    import torch

    if not records:
        raise ValueError("encode needs at least one record")
    pairs = [_prompt_text(processor, r, with_answer) for r in records]
    with _right_padding(processor):
        batch = _run_processor(processor, [full for full, _ in pairs], records)
    input_ids: torch.Tensor = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
        batch["attention_mask"] = mask
    lengths = mask.sum(dim=1)
    if with_answer:
        tokenizer = _tokenizer(processor)
        answer_mask = torch.zeros_like(input_ids)
        for row, (_, answer) in enumerate(pairs):
            count = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else 0
            end = int(lengths[row])
            answer_mask[row, max(end - count, 0) : end] = 1
        batch["answer_mask"] = answer_mask
    if input_ids.shape[1] > max_length:
        _truncate(batch, processor, records, max_length)
    return batch


def _truncate(
    batch: dict[str, Any], processor: Any, records: Sequence[Record], max_length: int
) -> None:
    full = batch["input_ids"]
    for key in _sequence_keys(batch, full.shape[1]):
        batch[key] = batch[key][:, :max_length].contiguous()
    for token_id in image_token_ids(processor):
        before = (full == token_id).sum(dim=1)
        after = (batch["input_ids"] == token_id).sum(dim=1)
        for row in range(len(records)):
            if int(before[row]) != int(after[row]):
                raise BuildError(
                    f"{records[row].where}: max_length {max_length} cuts through the image "
                    f"tokens ({int(before[row])} image tokens); raise the domain's max_length"
                )


def prompt_inputs(processor: Any, record: Record, max_length: int) -> dict[str, torch.Tensor]:
    """One unpadded prompt ending with the generation prompt, for greedy generation.

    A prompt longer than `max_length` tokens is a BuildError (cutting it would drop the
    generation prompt).
    """
    text, _ = _prompt_text(processor, record, with_answer=False)
    batch = _run_processor(processor, [text], [record])
    if "attention_mask" not in batch:
        import torch

        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    length = int(batch["input_ids"].shape[1])
    if length > max_length:
        raise BuildError(
            f"{record.where}: the prompt has {length} tokens, over max_length {max_length}"
        )
    return batch
