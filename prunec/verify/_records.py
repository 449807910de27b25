"""Evaluation records (JSONL lines of image, question, answer) and their model inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.errors import BuildError


@dataclass(frozen=True)
class Record:
    """One JSONL line: `image` is absolute (resolved against the JSONL file's folder)."""

    image: Path
    text: str
    answer: str


def read_records(path: Path, limit: int | None = None) -> list[Record]:
    """The first `limit` records of a JSONL file (all when None)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise BuildError(f"cannot read evaluation data {path}: {err.strerror}") from None
    records: list[Record] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            records.append(
                Record(Path(path).parent / row["image"], str(row["text"]), str(row["answer"]))
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BuildError(f"{path}:{number}: not an image/text/answer record ({err})") from None
        if limit is not None and len(records) >= limit:
            break
    return records


def prompt_inputs(processor: Any, record: Record) -> dict[str, Any]:
    """Batch-of-one model inputs for the record's image and question, ready for generation."""
    from PIL import Image

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": record.text}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    with Image.open(record.image) as image:
        inputs = processor(images=[image.convert("RGB")], text=[prompt], return_tensors="pt")
    return dict(inputs)
