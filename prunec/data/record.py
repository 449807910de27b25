"""The record: one calibration or evaluation sample, whatever layout it was read from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ImageURL:
    """An image named by an http(s) URL; downloaded once into the prunec cache."""

    url: str

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class ImageBytes:
    """An image held in memory: a dataset's Image feature, a binary column or a `data:` URI.

    Records are dict keys in evaluation caches, so equality and hashing go through the
    sha256 `digest` instead of the bytes.
    """

    data: bytes = field(repr=False, compare=False)
    digest: str
    name: str = ""

    @classmethod
    def of(cls, data: bytes, name: str = "") -> ImageBytes:
        return cls(data, hashlib.sha256(data).hexdigest(), name)

    def __str__(self) -> str:
        return self.name or f"embedded image sha256:{self.digest[:12]}"


#: Where a record's image is: a local file (absolute), a URL, or bytes in memory.
ImageRef = Path | ImageURL | ImageBytes

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Turn:
    """An earlier turn of a conversation, before the record's final user turn.

    image: True for the one turn that shows the record's image (before its text).
    """

    role: Role
    text: str
    image: bool = False


@dataclass(frozen=True)
class Record:
    """One sample.

    file: where it came from: the data file or folder (absolute path), or the hub dataset
        ("hf://datasets/org/name [split]").
    line: 1-based line of a JSON/JSONL file, or 0-based row of a table (see `unit`).
    text: the final user turn's text (the prompt).
    image: the image, or None for a text-only sample.
    answer: the expected answer (evaluation, NLL); None when the record has none.
    history: earlier turns of a multi-turn conversation, oldest first; () for one turn. When
        no turn of the history has `image`, the image belongs to the final user turn.
    unit: "line" (JSON files) or "row" (Parquet, CSV, folders and hub datasets).
    """

    file: Path | str
    line: int
    text: str
    image: ImageRef | None = None
    answer: str | None = None
    history: tuple[Turn, ...] = ()
    unit: Literal["line", "row"] = "line"

    @property
    def where(self) -> str:
        if self.unit == "row":
            return f"{self.file} row {self.line}"
        return f"{self.file}:{self.line}"

    @property
    def image_in_history(self) -> bool:
        return any(turn.image for turn in self.history)
