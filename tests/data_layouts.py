"""The same records written in every data layout prunec reads, for equivalence tests.

A record here is `{"text", "image" (a file name under img/, or None), "answer" (or None)}`.
`write_layout(kind, directory, records)` writes them in one layout and returns how a domain
reads them (`Source`); every layout must give the records of the documented JSONL.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.plan.model import FieldNames

LAYOUTS = (
    "jsonl",
    "jsonl-bom-crlf-extra",
    "json-array",
    "fields",
    "llava",
    "chat",
    "chat-embedded",
    "parquet-embedded",
    "parquet-paths",
    "parquet-chat",
    "csv",
    "tsv",
    "folder",
    "urls",
)

RECORDS: list[dict[str, Any]] = [
    {"text": "how many dots are there ?", "image": "a.png", "answer": "two"},
    {"text": "two plus three equals", "image": None, "answer": "five"},
    {"text": "what is the red circle", "image": "b.png", "answer": "a square"},
    {"text": "blue square", "image": None, "answer": None},
    {"text": "how many dots", "image": "a.png", "answer": "three"},
]


@dataclass(frozen=True)
class Source:
    """How a domain reads a layout: its data path and settings."""

    data: Path
    fields: FieldNames | None = None
    split: str | None = None


def write_images(directory: Path) -> None:
    """img/a.png and img/b.png: two small deterministic images."""
    from tiny_models import sample_image

    (directory / "img").mkdir(parents=True, exist_ok=True)
    sample_image(32, seed=1).save(directory / "img" / "a.png")
    sample_image(32, seed=2).save(directory / "img" / "b.png")


def _image_bytes(directory: Path, name: str) -> bytes:
    return (directory / "img" / name).read_bytes()


def _data_uri(directory: Path, name: str) -> str:
    return "data:image/png;base64," + base64.b64encode(_image_bytes(directory, name)).decode()


def _flat(record: dict[str, Any], image: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"text": record["text"]}
    if record["image"]:
        row["image"] = image
    if record["answer"] is not None:
        row["answer"] = record["answer"]
    return row


def _llava(record: dict[str, Any]) -> dict[str, Any]:
    text = record["text"]
    row: dict[str, Any] = {"id": text[:8]}
    if record["image"]:
        row["image"] = f"img/{record['image']}"
        text = f"<image>\n{text}"
    turns = [{"from": "human", "value": text}]
    if record["answer"] is not None:
        turns.append({"from": "gpt", "value": record["answer"]})
    row["conversations"] = turns
    return row


def _chat(record: dict[str, Any], image: Any) -> dict[str, Any]:
    content: Any = record["text"]
    if record["image"]:
        content = [image, {"type": "text", "text": record["text"]}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if record["answer"] is not None:
        messages.append(
            {"role": "assistant", "content": [{"type": "text", "text": record["answer"]}]}
        )
    return {"messages": messages}


def _dump_lines(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path: Path, rows: list[dict[str, Any]], features: Any = None) -> Path:
    from datasets import Dataset

    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


def _image_features(directory: Path, records: list[dict[str, Any]]) -> tuple[list[Any], Any]:
    from datasets import Features, Image, Value

    rows = [
        {
            "text": r["text"],
            "image": {"bytes": _image_bytes(directory, r["image"]), "path": None}
            if r["image"]
            else None,
            "answer": r["answer"],
        }
        for r in records
    ]
    return rows, Features({"text": Value("string"), "image": Image(), "answer": Value("string")})


def write_layout(
    kind: str, directory: Path, records: list[dict[str, Any]], base_url: str = ""
) -> Source:
    """Write `records` in layout `kind` under `directory` (images in directory/img)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_images(directory)
    if kind == "jsonl":
        return Source(
            _dump_lines(directory / "d.jsonl", [_flat(r, f"img/{r['image']}") for r in records])
        )
    if kind == "jsonl-bom-crlf-extra":
        rows = [
            {"id": i, "source": "synthetic", **_flat(r, f"img/{r['image']}"), "meta": {"k": [1]}}
            for i, r in enumerate(records)
        ]
        path = directory / "d.jsonl"
        path.write_bytes(("\ufeff" + "".join(json.dumps(r) + "\r\n" for r in rows)).encode())
        return Source(path)
    if kind == "json-array":
        path = directory / "d.json"
        path.write_text(json.dumps([_flat(r, f"img/{r['image']}") for r in records], indent=2))
        return Source(path)
    if kind == "fields":
        rows = [
            {
                "question": r["text"],
                **({"picture": f"img/{r['image']}"} if r["image"] else {}),
                **({"label": r["answer"]} if r["answer"] is not None else {}),
                "text": "a decoy: `fields` reads `question`",
            }
            for r in records
        ]
        fields = FieldNames(text="question", image="picture", answer="label")
        return Source(_dump_lines(directory / "d.jsonl", rows), fields)
    if kind == "llava":
        return Source(_dump_lines(directory / "d.jsonl", [_llava(r) for r in records]))
    if kind == "chat":
        rows = [_chat(r, {"type": "image", "path": f"img/{r['image']}"}) for r in records]
        return Source(_dump_lines(directory / "d.jsonl", rows))
    if kind == "chat-embedded":
        rows = [
            _chat(r, {"type": "image", "image": _data_uri(directory, r["image"])})
            if r["image"]
            else _chat(r, None)
            for r in records
        ]
        return Source(_dump_lines(directory / "d.jsonl", rows))
    if kind == "parquet-embedded":
        rows, features = _image_features(directory, records)
        return Source(_parquet(directory / "d.parquet", rows, features))
    if kind == "parquet-paths":
        rows = [
            {
                "text": r["text"],
                "image": f"img/{r['image']}" if r["image"] else None,
                "answer": r["answer"],
            }
            for r in records
        ]
        return Source(_parquet(directory / "d.parquet", rows))
    if kind == "parquet-chat":
        # TRL's layout: image parts without a source, the images in an `images` column.
        from datasets import Features, Image, List, Value

        rows = []
        for r in records:
            chat = _chat(r, {"type": "image", "text": None})
            for message in chat["messages"]:
                if isinstance(message["content"], str):
                    message["content"] = [{"type": "text", "text": message["content"]}]
            image = (
                [{"bytes": _image_bytes(directory, r["image"]), "path": None}] if r["image"] else []
            )
            rows.append({"messages": chat["messages"], "images": image})
        part = {"type": Value("string"), "text": Value("string")}
        features = Features(
            {
                "messages": List({"role": Value("string"), "content": List(part)}),
                "images": List(Image()),
            }
        )
        return Source(_parquet(directory / "d.parquet", rows, features))
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        lines = [sep.join(["text", "image", "answer"])]
        for r in records:
            cells = [r["text"], f"img/{r['image']}" if r["image"] else "", r["answer"] or ""]
            lines.append(sep.join(cells))
        path = directory / f"d.{kind}"
        path.write_text("\n".join(lines) + "\n")
        return Source(path)
    if kind == "folder":
        folder = directory / "d"
        folder.mkdir()
        rows, features = _image_features(directory, records)
        half = len(rows) // 2
        _parquet(folder / "train-00000-of-00002.parquet", rows[:half], features)
        _parquet(folder / "train-00001-of-00002.parquet", rows[half:], features)
        _parquet(folder / "test-00000-of-00001.parquet", rows[:1], features)  # another split
        return Source(folder)
    if kind == "urls":
        assert base_url, "the urls layout needs a server"
        rows = [_flat(r, f"{base_url}/img/{r['image']}") for r in records]
        return Source(_dump_lines(directory / "d.jsonl", rows))
    raise ValueError(kind)


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """An HTTP server for `directory` on localhost, for image URLs; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(directory), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
