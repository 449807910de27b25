"""JSON Lines and JSON array files, read with the line of every record, and format hints.

A file whose first non-blank character is `[` is one JSON array of records (whatever its
extension); any other file has one JSON value per line. A UTF-8 byte-order mark and CRLF
line ends are accepted. Lines are split on "\\n" only: JSON strings may hold U+2028 and other
characters that `str.splitlines` would treat as line breaks.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunec.errors import Diagnostic, Span, SpecError, source_lines


@dataclass
class JsonRows:
    """What a JSON(L) file holds.

    text: the decoded text (no byte-order mark), to quote lines in diagnostics.
    rows: (1-based line where the value starts, the value), in file order.
    problems: lines that are not valid JSON.
    hint: a sentence saying what else the file looks like, for every diagnostic about it.
    array: True when the file is one JSON array.
    """

    text: str
    rows: list[tuple[int, Any]] = field(default_factory=list)
    problems: list[Diagnostic] = field(default_factory=list)
    hint: str | None = None
    array: bool = False


def line_span(path: Path, lines: list[str], line: int, col: int = 1) -> Span:
    """The span of a whole line (from `col`), for a diagnostic about one record."""
    raw = lines[line - 1] if 1 <= line <= len(lines) else ""
    return Span(str(path), line, col, line, max(len(raw), col) + 1)


def read_json_rows(path: Path) -> JsonRows:
    """Parse a JSONL or JSON-array file; SpecError (E320) when it cannot be read as text."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise SpecError([Diagnostic("E320", f"cannot read data file {path}: {reason}")]) from None
    hint = sniff(raw)
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, raw, err, hint) from None
    lines = source_lines(text)
    first = text.lstrip()
    if first.startswith("["):
        return _read_array(path, text, lines, hint or "the file is one JSON array")
    result = JsonRows(text, hint=hint)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            result.rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            message = f"invalid JSON: {err.msg}"
            span = line_span(path, lines, number, err.colno)
            result.problems.append(Diagnostic("E323", message, span, help=result.hint))
    if result.problems and result.hint is None:
        whole = _whole_object_hint(text)
        if whole is not None:  # one pretty-printed object: one error, not one per line
            message = f"the file is one JSON object over {len(lines)} lines, not JSON Lines"
            span = line_span(path, lines, 1)
            result.rows, result.problems = [], [Diagnostic("E324", message, span, help=whole)]
    return result


def _not_utf8(path: Path, raw: bytes, err: UnicodeDecodeError, hint: str | None) -> SpecError:
    """E320 at the line and column of the first byte that is not UTF-8 (the line itself is
    not quoted: it may be binary)."""
    line = raw.count(b"\n", 0, err.start) + 1
    start = raw.rfind(b"\n", 0, err.start) + 1
    col = len(raw[start : err.start].decode("utf-8", errors="replace")) + 1
    span = Span(str(path), line, col, line, col + 1)
    message = f"data file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x})"
    return SpecError([Diagnostic("E320", message, span, help=hint)])


def _read_array(path: Path, text: str, lines: list[str], hint: str) -> JsonRows:
    """Each element of a top-level JSON array, with the line it starts on."""
    result = JsonRows(text, hint=hint, array=True)
    starts = [0]
    for i, char in enumerate(text):
        if char == "\n":
            starts.append(i + 1)

    def line_of(offset: int) -> int:
        return bisect.bisect_right(starts, offset)

    try:
        for offset, value in _array_elements(text):
            result.rows.append((line_of(offset), value))
    except json.JSONDecodeError as err:
        span = line_span(path, lines, err.lineno, err.colno)
        diag = Diagnostic("E323", f"invalid JSON: {err.msg}", span, help=hint)
        result.problems.append(diag)
    return result


def _array_elements(text: str) -> Iterator[tuple[int, Any]]:
    """(offset, value) of each element of the JSON array `text` holds.

    Uses the decoder's `raw_decode` element by element so that every record keeps its
    position; raises JSONDecodeError (with line and column) at the first syntax error.
    """
    decoder = json.JSONDecoder()
    ws = " \t\n\r"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    i = skip(0) + 1  # past "["
    i = skip(i)
    if i < len(text) and text[i] == "]":
        i += 1
    else:
        while True:
            value, end = decoder.raw_decode(text, i)
            yield i, value
            i = skip(end)
            if i < len(text) and text[i] == ",":
                i = skip(i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i += 1
                break
            raise json.JSONDecodeError("expected `,` or `]` after an array element", text, i)
    if skip(i) != len(text):
        raise json.JSONDecodeError("extra data after the JSON array", text, skip(i))


def sniff(raw: bytes) -> str | None:
    """What a file that should be JSON looks like instead, from its first bytes."""
    head = raw[:4096]
    if head.startswith(b"PAR1"):
        return "the file is Parquet (it starts with `PAR1`): give it the `.parquet` extension"
    if head.startswith(b"\x1f\x8b"):
        return "the file is gzip-compressed: decompress it first"
    if head.startswith(b"PK\x03\x04"):
        return "the file is a ZIP archive (an .xlsx workbook is one): export it as CSV or JSONL"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "the file is UTF-16 text: save it as UTF-8"
    text = head.decode("utf-8", errors="replace").removeprefix("\ufeff")
    first = next((line.strip() for line in text.split("\n") if line.strip()), "")
    if first and first[0] not in "{[" and ("," in first or "\t" in first):
        kind, suffix = ("TSV", ".tsv") if "\t" in first else ("CSV", ".csv")
        shown = first if len(first) <= 60 else first[:57] + "..."
        return (
            f"the file looks like {kind} (first line `{shown}`): give it the `{suffix}` extension"
        )
    return None


def _whole_object_hint(text: str) -> str | None:
    """A hint for one JSON object spread over several lines (a pretty-printed `.json`)."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(whole, dict):
        return None
    lists = [k for k, v in whole.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
    if lists:
        key = lists[0]
        return (
            f"the file is one JSON object whose `{key}` holds {len(whole[key])} records: "
            "make the file that list (a JSON array), or write one record per line"
        )
    return "write one record per line (JSONL), or put the records in a JSON array"
