"""Record layouts: one row (a JSON object or a table row) -> a `Record`, whatever its shape.

Three layouts, recognised per file from its first record (or its columns):

- flat (documented): `{"image": ..., "text": ..., "answer": ...}`; other fields are ignored, and
  a domain's `fields` mapping renames the three (and forces this layout);
- LLaVA: `{"image": ..., "conversations": [{"from": "human", "value": "<image>\\n..."},
  {"from": "gpt", "value": ...}, ...]}`;
- chat: `{"messages": [{"role": "user", "content": [{"type": "image", "path": ...},
  {"type": "text", "text": ...}]}, {"role": "assistant", "content": ...}]}` (transformers'
  multimodal chat format; `content` may also be a plain string).

In a conversation the last assistant turn is the answer, the user turn before it is the
record's text, and the turns before that are kept as `Record.history`, so they reach the
chat template as real turns. A one-turn conversation gives exactly the flat record.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prunec.data.record import ImageBytes, ImageRef, ImageURL, Record, Role, Turn
from prunec.plan.model import FieldNames

Layout = Literal["flat", "llava", "chat"]

#: LLaVA's image placeholder; the image goes before the text of the turn that holds it.
IMAGE_PLACEHOLDER = "<image>"
_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_LLAVA_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
_CHAT_ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class RowProblem(Exception):
    """A record that cannot be used; `code` is its diagnostic code."""

    def __init__(self, code: str, message: str, help: str | None = None):
        super().__init__(message)
        self.code = code
        self.help = help


class _Pending:
    """Stands for an image whose bytes are not read yet (a table's first, validating pass)."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING = _Pending()
_PENDING_IMAGE = ImageBytes(b"", "pending")


@dataclass(frozen=True)
class Origin:
    """Where a row is.

    file: the data file or folder, or the hub dataset's label.
    number: 1-based line (JSON) or 0-based row (tables).
    base: directory that relative image paths resolve against; None for hub datasets.
    """

    file: Path | str
    number: int
    unit: Literal["line", "row"]
    base: Path | None


def detect_layout(keys: Iterable[str], fields: FieldNames | None) -> Layout:
    """The layout of a file whose first record (or table) has `keys`."""
    if fields is not None:
        return "flat"
    names = set(keys)
    if "conversations" in names:
        return "llava"
    if "messages" in names:
        return "chat"
    return "flat"


def to_record(row: Mapping[str, Any], layout: Layout, fields: FieldNames, at: Origin) -> Record:
    """The record a row holds; RowProblem when it cannot be used."""
    if layout == "llava":
        return _llava(row, at)
    if layout == "chat":
        return _chat(row, at)
    return _flat(row, fields, at)


# ------------------------------------------------------------------ values


def image_ref(value: Any, at: Origin, what: str = '"image"') -> ImageRef | None:
    """The image a field's value names: a path (relative to the data file), an http(s)
    URL, a `data:` URI, bytes, a datasets Image feature `{bytes, path}`, or a list of one."""
    if value is None or value == "":
        return None
    if value is PENDING:
        return _PENDING_IMAGE
    if isinstance(value, str):
        return _image_from_string(value, at)
    if isinstance(value, bytes | bytearray):
        return ImageBytes.of(bytes(value))
    if isinstance(value, Mapping) and set(value) <= {"bytes", "path"}:
        if value.get("bytes"):
            return ImageBytes.of(bytes(value["bytes"]), str(value.get("path") or ""))
        return image_ref(value.get("path"), at, what)
    if isinstance(value, list | tuple):
        present = [v for v in value if v is not None]
        if len(present) > 1:
            raise RowProblem(
                "E334",
                f"{len(present)} images in one record; prunec uses one image per record",
                help="split the record into one record per image",
            )
        return image_ref(present[0], at, what) if present else None
    raise RowProblem(
        "E327",
        f"{what} must be a path or URL string, not {_kind(value)}",
    )


def _image_from_string(value: str, at: Origin) -> ImageRef:
    if value.startswith(("http://", "https://")):
        return ImageURL(value)
    if value.startswith("data:"):
        return _data_uri(value)
    if at.base is None:
        raise RowProblem(
            "E328",
            f"image path `{value}` in a hub dataset: only URLs and embedded images can be read",
        )
    return (at.base / os.path.expanduser(value)).resolve()


def _data_uri(value: str) -> ImageBytes:
    header, _, payload = value.partition(",")
    if not header.endswith(";base64"):
        raise RowProblem("E329", "a `data:` image URI must be base64 (`data:image/png;base64,...`)")
    try:
        return ImageBytes.of(base64.b64decode(payload, validate=True), header + ",...")
    except (binascii.Error, ValueError) as err:
        raise RowProblem("E329", f"invalid base64 in a `data:` image URI: {err}") from err


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number"}
    return names.get(type(value), type(value).__name__)


def _answer(value: Any, what: str) -> str | None:
    """The answer's text. Integers are read as their decimal text (counting datasets)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowProblem("E327", f"{what} must be a string, not {_kind(value)}")


def _record(
    at: Origin,
    text: str,
    image: ImageRef | None,
    answer: str | None,
    history: tuple[Turn, ...] = (),
) -> Record:
    return Record(at.file, at.number, text, image, answer, history, at.unit)


# ------------------------------------------------------------------ flat


def _flat(row: Mapping[str, Any], fields: FieldNames, at: Origin) -> Record:
    text_key, image_key, answer_key = (fields.name(p) for p in ("text", "image", "answer"))
    text = row.get(text_key)
    if not isinstance(text, str) or not text.strip():
        raise RowProblem("E326", f'missing or empty "{text_key}" (a string)', _mapping_hint(row))
    image = image_ref(row.get(image_key), at, f'"{image_key}"')
    answer = _answer(row.get(answer_key), f'"{answer_key}"')
    return _record(at, text, image, answer)


def _mapping_hint(row: Mapping[str, Any]) -> str | None:
    strings = [k for k, v in row.items() if isinstance(v, str) and v.strip()]
    if not strings:
        return None
    listed = ", ".join(f"`{k}`" for k in strings[:6])
    return f'the record has {listed}: name the text field with `fields text "{strings[0]}"`'


# ------------------------------------------------------------------ conversations


@dataclass
class _Turn:
    role: Role
    text: str
    image: bool


def _conversation(turns: list[_Turn], image: ImageRef | None, at: Origin) -> Record:
    """Answer = the last turn when it is the assistant's; text = the user turn before it."""
    answer: str | None = None
    if turns and turns[-1].role == "assistant":
        if turns[-1].image:
            raise RowProblem("E333", "an image in an assistant turn; images go in user turns")
        answer = turns[-1].text
        turns = turns[:-1]
    if not turns or turns[-1].role != "user":
        raise RowProblem("E333", "the conversation has no user turn before its answer")
    flagged = [t for t in turns if t.image]
    if any(t.role != "user" for t in flagged):
        raise RowProblem("E333", "an image in a non-user turn; images go in user turns")
    if flagged and image is None:
        raise RowProblem("E333", "a turn shows an image but the record has none")
    final = turns[-1]
    if not final.text.strip():
        raise RowProblem("E326", "the last user turn has no text")
    history = tuple(Turn(t.role, t.text, t.image) for t in turns[:-1])
    return _record(at, final.text, image, answer, history)


def _missing(key: str, layout: str) -> RowProblem:
    return RowProblem(
        "E333",
        f'no "{key}": the file is read as {layout} records (its first record has "{key}")',
        help="write every record of a file in one layout",
    )


def _llava(row: Mapping[str, Any], at: Origin) -> Record:
    if "conversations" not in row:
        raise _missing("conversations", "LLaVA")
    turns_raw = row.get("conversations")
    if not isinstance(turns_raw, list) or not turns_raw:
        raise RowProblem("E333", '"conversations" must be a non-empty list of turns')
    turns: list[_Turn] = []
    placeholders = 0
    for position, turn in enumerate(turns_raw, start=1):
        if not isinstance(turn, Mapping):
            raise RowProblem("E333", f"conversation turn {position} is not an object")
        speaker, value = turn.get("from"), turn.get("value")
        role = _LLAVA_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RowProblem(
                "E333",
                f'conversation turn {position}: unknown "from" {speaker!r}',
                help='use "human" or "gpt" (or "system")',
            )
        if not isinstance(value, str):
            raise RowProblem("E333", f'conversation turn {position}: "value" must be a string')
        count = value.count(IMAGE_PLACEHOLDER)
        placeholders += count
        turns.append(
            _Turn(role, _PLACEHOLDER.sub(" ", value).strip() if count else value, count > 0)
        )
    if placeholders > 1:
        raise RowProblem(
            "E334", f"{placeholders} `<image>` placeholders; prunec uses one image per record"
        )
    image = image_ref(row.get("image"), at)
    if image is not None and not placeholders:
        # LLaVA's text-only turns never show the image: without a placeholder it belongs to
        # the first user turn, where LLaVA's own preprocessing puts it.
        first_user = next((t for t in turns if t.role == "user"), None)
        if first_user is not None:
            first_user.image = True
    return _conversation(turns, image, at)


def _chat(row: Mapping[str, Any], at: Origin) -> Record:
    if "messages" not in row:
        raise _missing("messages", "chat")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RowProblem("E333", '"messages" must be a non-empty list of messages')
    # Images given beside the messages (TRL's `images` column) fill image parts without a source.
    shared = row.get("images", row.get("image"))
    turns: list[_Turn] = []
    images: list[ImageRef] = []
    for position, message in enumerate(messages, start=1):
        if not isinstance(message, Mapping):
            raise RowProblem("E333", f"message {position} is not an object")
        role = message.get("role")
        if role not in _CHAT_ROLES:
            raise RowProblem(
                "E333",
                f"message {position}: unknown role {role!r}",
                help="use `system`, `user` or `assistant`",
            )
        text, found = _content(message.get("content"), position, shared, at)
        images += found
        turns.append(_Turn(role, text, bool(found)))
    if len(images) > 1:
        raise RowProblem(
            "E334", f"{len(images)} images in one record; prunec uses one image per record"
        )
    if not images:
        # An image beside messages that show none: the first user turn shows it (as LLaVA).
        beside = image_ref(shared, at)
        first_user = next((t for t in turns if t.role == "user"), None)
        if beside is not None and first_user is not None:
            images, first_user.image = [beside], True
    return _conversation(turns, images[0] if images else None, at)


def _content(content: Any, position: int, shared: Any, at: Origin) -> tuple[str, list[ImageRef]]:
    """(text, images) of one message; text parts are joined by newlines."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RowProblem(
            "E333", f"message {position}: `content` must be a string or a list of parts"
        )
    texts: list[str] = []
    images: list[ImageRef] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image":
            source = next(
                (part[k] for k in ("path", "url", "image") if part.get(k) not in (None, "")),
                None,
            )
            ref = image_ref(source if source is not None else shared, at, "an image part")
            if ref is None:
                raise RowProblem(
                    "E333",
                    f"message {position}: an image part with no `path`, `url` or `image`",
                )
            images.append(ref)
        else:
            raise RowProblem(
                "E333",
                f"message {position}: unsupported content part {_describe(part)}",
                help='parts are {"type": "text", "text": ...} or {"type": "image", "path": ...}',
            )
    return "\n".join(texts), images


def _describe(part: Any) -> str:
    if isinstance(part, Mapping) and isinstance(part.get("type"), str):
        return f"of type `{part['type']}`"
    return _kind(part)
