"""Calibration / evaluation data: JSONL records, and encoding them through the model's processor.

A data file has one JSON object per line: `{"image": "img/1.png", "text": "...",
"answer": "..."}`. `image` (relative to the JSONL file) and `answer` are optional; `text` is
required. Blank lines are skipped. Every problem in a file is reported at once, as a SpecError
whose diagnostics name `file:line`, before any model work starts.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.errors import BuildError, Diagnostic, SourceMap, Span, SpecError

if TYPE_CHECKING:
    import torch

_FIELDS = frozenset({"image", "text", "answer"})


@dataclass(frozen=True)
class Record:
    """One data line.

    file / line: where it came from (1-based line), for error messages.
    image: absolute image path, or None for a text-only sample.
    answer: the expected answer (evaluation, NLL); None when the line has none.
    """

    file: Path
    line: int
    text: str
    image: Path | None = None
    answer: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def read_records(path: Path, samples: int | None = None, seed: int = 0) -> list[Record]:
    """Read and check a JSONL data file; keep `samples` lines chosen deterministically by `seed`.

    The chosen lines keep their file order. Raises SpecError listing every bad line (bad JSON,
    wrong or missing fields, missing or unreadable images), an empty file, or a file with fewer
    lines than `samples`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([Diagnostic("E320", f"cannot read data file {path}: {err}")]) from err
    sources = SourceMap()
    sources.add(str(path), text)
    records: list[Record] = []
    problems: list[Diagnostic] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            record = _parse_line(path, number, raw, problems)
            if record is not None:
                records.append(record)
    if not records and not problems:
        problems.append(Diagnostic("E321", f"data file {path} has no records", _at(path, 1, "")))
    if samples is not None and not problems and samples > len(records):
        message = f"{samples} samples requested but {path} has only {len(records)} records"
        problems.append(Diagnostic("E322", message, _at(path, 1, "")))
    if problems:
        raise SpecError(problems, sources)
    if samples is not None and samples < len(records):
        chosen = sorted(random.Random(seed).sample(range(len(records)), samples))
        records = [records[i] for i in chosen]
    image_problems = [d for r in records if (d := _check_image(r, text)) is not None]
    if image_problems:
        raise SpecError(image_problems, sources)
    return records


def _at(path: Path, line: int, raw: str) -> Span:
    return Span(str(path), line, 1, line, max(len(raw), 1) + 1)


def _parse_line(path: Path, number: int, raw: str, problems: list[Diagnostic]) -> Record | None:
    span = _at(path, number, raw)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as err:
        problems.append(Diagnostic("E323", f"invalid JSON: {err.msg}", span))
        return None
    if not isinstance(obj, dict):
        problems.append(Diagnostic("E324", "expected a JSON object", span))
        return None
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        problems.append(
            Diagnostic(
                "E325",
                f"unknown field {', '.join(map(repr, unknown))}",
                span,
                expected="image, text, answer",
            )
        )
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append(Diagnostic("E326", 'missing or empty "text" (a string)', span))
    for key in ("image", "answer"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            problems.append(Diagnostic("E327", f'"{key}" must be a string', span))
    if len(problems) and problems[-1].span == span:
        return None
    image = (path.parent / obj["image"]).resolve() if obj.get("image") else None
    return Record(path.resolve(), number, text, image, obj.get("answer"))  # type: ignore[arg-type]


def _check_image(record: Record, text: str) -> Diagnostic | None:
    if record.image is None:
        return None
    raw = text.splitlines()[record.line - 1]
    span = _at(record.file, record.line, raw)
    if not record.image.is_file():
        return Diagnostic("E328", f"image not found: {record.image}", span)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(record.image) as img:
            img.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        return Diagnostic("E329", f"unreadable image {record.image}: {err}", span)
    return None


def load_image(record: Record) -> Any:
    """The record's image as RGB PIL image; BuildError naming file:line when it cannot load."""
    from PIL import Image

    assert record.image is not None
    try:
        with Image.open(record.image) as img:
            return img.convert("RGB")
    except OSError as err:
        raise BuildError(f"{record.where}: cannot load image {record.image}: {err}") from err


# -- encoding ---------------------------------------------------------------------------------


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def _has_chat_template(processor: Any) -> bool:
    return bool(
        getattr(processor, "chat_template", None)
        or getattr(_tokenizer(processor), "chat_template", None)
    )


def _is_multimodal(processor: Any) -> bool:
    return getattr(processor, "image_processor", None) is not None


def _messages(record: Record, multimodal: bool, with_answer: bool) -> list[dict[str, Any]]:
    if multimodal:
        content: Any = [{"type": "text", "text": record.text}]
        if record.image is not None:
            content.insert(0, {"type": "image"})
    else:
        content = record.text
    messages = [{"role": "user", "content": content}]
    if with_answer:
        answer = record.answer or ""
        reply: Any = [{"type": "text", "text": answer}] if multimodal else answer
        messages.append({"role": "assistant", "content": reply})
    return messages


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
    prompt = record.text
    image_token = getattr(processor, "image_token", None)
    if record.image is not None and image_token:
        prompt = f"{image_token} {prompt}"
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


def _image_token_ids(processor: Any) -> list[int]:
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
    for token_id in _image_token_ids(processor):
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
