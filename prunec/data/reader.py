"""`read_records`: a data source in any supported layout -> checked, sampled records.

Every source goes through the same steps, so that the same records in any layout give the
same list: read and check every record (problems collected, the first `MAX_SHOWN` shown),
choose `samples` of them by `seed` keeping their order, then check the chosen records'
images (URLs are downloaded) and, for evaluation data, their answers.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prunec.data.images import (
    DataUnavailable,
    ImageProblem,
    NetworkUnavailable,
    image_digest,
    verify_image,
)
from prunec.data.jsonfile import line_span, read_json_rows
from prunec.data.layouts import Layout, Origin, RowProblem, detect_layout, to_record
from prunec.data.record import ImageURL, Record
from prunec.data.tables import is_table, load_table
from prunec.errors import BuildError, Diagnostic, SourceMap, Span, SpecError, source_lines
from prunec.plan.model import DataSource, DomainSpec, FieldNames, HubDataset

#: Diagnostics shown per data file; the rest are summed up in one `E339` line.
MAX_SHOWN = 10


def read_records(
    source: DataSource | str,
    samples: int | None = None,
    seed: int = 0,
    *,
    fields: FieldNames | None = None,
    split: str | None = None,
    config: str | None = None,
    require_answer: bool = False,
    check_all: bool = False,
) -> list[Record]:
    """Read, check and sample a data source; keep `samples` records chosen by `seed`.

    source: a JSONL / JSON-array file (any other extension is read as JSON too), a Parquet,
        CSV or TSV file, a folder of data files, or a hub dataset (also as a string
        "hf://datasets/org/name").
    fields: the domain's field mapping (forces the flat layout); None = detect the layout.
    split / config: for folders and hub datasets.
    require_answer: every checked record needs an answer (evaluation data).
    check_all: check images and answers of every record, not only the chosen ones
        (`check --deep`).

    The chosen records keep their order in the source. Raises SpecError listing the problems
    (each naming file:line or row), an empty source, or fewer records than `samples`;
    BuildError when the network is needed (hub dataset, image URL) and unreachable.
    """
    if isinstance(source, str):
        source = HubDataset.parse(source) or Path(source)
    if is_table(source):
        return _read_table(source, samples, seed, fields, split, config, require_answer, check_all)
    assert isinstance(source, Path)
    return _read_json(source, samples, seed, fields, require_answer, check_all)


def choose(count: int, samples: int | None, seed: int) -> list[int]:
    """The indices of the records `samples` and `seed` pick, in source order."""
    if samples is None or samples >= count:
        return list(range(count))
    return sorted(random.Random(seed).sample(range(count), samples))


def read_calibration(
    domain: DomainSpec, samples: int | None = None, *, check_all: bool = False
) -> list[Record]:
    """A domain's calibration records (`samples`: override the domain's own count)."""
    return read_records(
        domain.data,
        domain.samples if samples is None else samples,
        domain.seed,
        fields=domain.fields,
        split=domain.split,
        config=domain.config,
        check_all=check_all,
    )


def read_evaluation(
    domain: DomainSpec | None,
    source: DataSource | None = None,
    samples: int | None = None,
    *,
    check_all: bool = False,
) -> list[Record]:
    """Evaluation records of a domain: `source` (a gate's `on` data) or the domain's `eval`,
    read with the domain's field mapping, `eval_split` and `config`; answers required."""
    source = source if source is not None else (domain.eval if domain else None)
    if source is None:
        raise BuildError(f"domain `{domain.name if domain else '?'}` has no evaluation data")
    return read_records(
        source,
        samples,
        0,
        fields=domain.fields if domain else None,
        split=domain.eval_split if domain else None,
        config=domain.config if domain else None,
        require_answer=True,
        check_all=check_all,
    )


def source_fields(
    source: DataSource, split: str | None = None, config: str | None = None
) -> set[str]:
    """The field names a source's records have: a table's columns, or every key of a JSON
    file's objects. Empty when the source cannot be read (reading it reports why)."""
    try:
        if is_table(source):
            return set(load_table(source, split, config).columns)
        assert isinstance(source, Path)
        parsed = read_json_rows(source)
    except (SpecError, DataUnavailable):
        return set()
    return set().union(*(v.keys() for _, v in parsed.rows if isinstance(v, dict)))


def records_digest(records: Iterable[Record], file_digest: Callable[[Path], str]) -> str:
    """sha256 of what the records feed the model: texts, turns, answers and image bytes.

    Independent of the layout and of where each record sits, so equal data in another
    layout is the same calibration input; any change of content (an image's bytes, a
    field mapping that picks another column) changes it.
    """
    sha = hashlib.sha256()
    for r in records:
        image = image_digest(r.image, file_digest) if r.image is not None else None
        turns = [[t.role, t.text, t.image] for t in r.history]
        sha.update(json.dumps([r.text, r.answer, turns, image]).encode() + b"\n")
    return sha.hexdigest()


# ------------------------------------------------------------------ problems


def _cap(problems: list[Diagnostic], label: Path | str) -> list[Diagnostic]:
    if len(problems) <= MAX_SHOWN:
        return problems
    hidden = len(problems) - MAX_SHOWN
    summary = Diagnostic(
        "E339",
        f"and {hidden} more {'problem' if hidden == 1 else 'problems'} in {label}",
        notes=(f"only the first {MAX_SHOWN} are shown",),
        count=hidden,
    )
    return [*problems[:MAX_SHOWN], summary]


def _absent_fields(
    layout: Layout, fields: FieldNames | None, keys: set[str], label: Path | str, answers: bool
) -> list[Diagnostic]:
    """E337 for the text field, or (evaluation data) the answer field, that no record has.

    One error instead of one per record. An image field may be absent: a source can be text
    only (`check --deep` checks that a mapped one exists in some source of the domain).
    """
    if layout != "flat":
        return []
    names = fields or FieldNames()
    out = []
    for part in ("text", "answer") if answers else ("text",):
        mapped = fields is not None and getattr(fields, part) is not None
        name = names.name(part)  # type: ignore[arg-type]
        if name in keys:
            continue
        found = ", ".join(f"`{k}`" for k in sorted(keys)[:12]) or "none"
        by = f" (named by `fields {part}`)" if mapped else ""
        hint = None if mapped else f'name the {part} field with `fields {part} "..."` in the domain'
        message = f"no record of {label} has the field `{name}`{by}; fields found: {found}"
        out.append(Diagnostic("E337", message, help=hint))
    return out


def _raise(problems: list[Diagnostic], label: Path | str, sources: SourceMap) -> None:
    if problems:
        raise SpecError(_cap(problems, label), sources)


def _counts(
    count: int, samples: int | None, label: Path | str, span: Span | None
) -> list[Diagnostic]:
    if count == 0:
        return [Diagnostic("E321", f"data file {label} has no records", span)]
    if samples is not None and samples > count:
        message = f"{samples} samples requested but {label} has only {count} records"
        return [Diagnostic("E322", message, span)]
    return []


def _check_records(
    records: Sequence[Record],
    require_answer: bool,
    span_of: Callable[[Record], Span | None],
) -> list[Diagnostic]:
    """Problems of the images and answers of `records`; BuildError when offline."""
    problems = []
    for position, record in enumerate(records):
        span = span_of(record)
        prefix = "" if span is not None else f"{record.where}: "
        if require_answer and record.answer is None:
            message = f"{prefix}an evaluation record needs an answer"
            problems.append(Diagnostic("E338", message, span))
        if record.image is None:
            continue
        try:
            verify_image(record.image)
        except ImageProblem as err:
            problems.append(Diagnostic(err.code, f"{prefix}{err}", span))
        except NetworkUnavailable as err:
            raise _offline_error(record, err, records[position + 1 :]) from None
    return problems


def _offline_error(record: Record, err: Exception, rest: Sequence[Record]) -> DataUnavailable:
    others = sum(isinstance(r.image, ImageURL) for r in rest)
    more = f"; {others} more records name image URLs" if others else ""
    return DataUnavailable(
        "E335",
        f"{record.where}: cannot download image {record.image}: no answer from the network "
        f"({err}){more}; run once while online (downloads are cached) or use local files",
    )


# ------------------------------------------------------------------ JSON


def _read_json(
    path: Path,
    samples: int | None,
    seed: int,
    fields: FieldNames | None,
    require_answer: bool,
    check_all: bool,
) -> list[Record]:
    parsed = read_json_rows(path)
    lines = source_lines(parsed.text)
    sources = SourceMap()
    sources.add(str(path), parsed.text)
    objects = [(line, v) for line, v in parsed.rows if isinstance(v, dict)]
    layout = detect_layout(objects[0][1] if objects else (), fields)
    keys: set[str] = set().union(*(v.keys() for _, v in objects))
    absent = _absent_fields(layout, fields, keys, path, require_answer) if objects else []
    names = fields or FieldNames()
    text_absent = layout == "flat" and bool(objects) and names.name("text") not in keys
    base, resolved = path.parent, path.resolve()
    records: list[Record] = []
    problems = list(parsed.problems)
    for line, value in parsed.rows:
        span = line_span(path, lines, line)
        if not isinstance(value, dict):
            what = "an array element" if parsed.array else "a line"
            message = f"expected a JSON object, but {what} holds {type(value).__name__}"
            problems.append(Diagnostic("E324", message, span, help=parsed.hint))
            continue
        try:
            records.append(to_record(value, layout, names, Origin(resolved, line, "line", base)))
        except RowProblem as err:
            if not (text_absent and err.code == "E326"):  # already said once, as E337
                problems.append(Diagnostic(err.code, str(err), span, help=err.help))
    problems.sort(key=lambda d: d.span.line if d.span else 0)
    first = line_span(path, lines, 1)
    if not problems and not absent:
        problems = _counts(len(records), samples, path, first)
    _raise(absent + problems, path, sources)
    indices = choose(len(records), samples, seed)
    chosen = [records[i] for i in indices]

    def span_of(record: Record) -> Span:
        return line_span(path, lines, record.line)

    checked = records if check_all else chosen
    _raise(_check_records(checked, require_answer, span_of), path, sources)
    return chosen


# ------------------------------------------------------------------ tables


def _read_table(
    source: Path | HubDataset,
    samples: int | None,
    seed: int,
    fields: FieldNames | None,
    split: str | None,
    config: str | None,
    require_answer: bool,
    check_all: bool,
) -> list[Record]:
    table = load_table(source, split, config)
    label = table.label
    layout = detect_layout(table.columns, fields)
    names = fields or FieldNames()
    sources = SourceMap()
    absent = _absent_fields(layout, fields, set(table.columns), label, require_answer)
    _raise(absent, label, sources)

    def record(index: int, row: dict[str, object]) -> Record:
        return to_record(row, layout, names, Origin(label, index, "row", table.base))

    problems: list[Diagnostic] = []
    count = 0
    for index, row in enumerate(table.light_rows()):  # validates without reading image bytes
        count += 1
        try:
            record(index, row)
        except RowProblem as err:
            where = f"{label} row {index}"
            problems.append(Diagnostic(err.code, f"{where}: {err}", help=err.help))
    _raise(problems or _counts(count, samples, label, None), label, sources)
    indices = choose(count, samples, seed)
    wanted = range(count) if check_all else indices
    records: list[Record] = []
    for index, row in zip(wanted, table.rows(list(wanted)), strict=True):
        try:
            records.append(record(index, row))
        except RowProblem as err:
            where = f"{label} row {index}"
            problems.append(Diagnostic(err.code, f"{where}: {err}", help=err.help))
    _raise(problems, label, sources)
    chosen = [records[i] for i in indices] if check_all else records
    _raise(_check_records(records, require_answer, lambda _: None), label, sources)
    return chosen
