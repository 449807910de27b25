"""The `.prune` front end: text -> syntax tree -> validated Plan, plus the canonical formatter.

Public entry points (none imports torch or transformers):

    parse(text, filename, base_dir) -> Plan       raises SpecError with every diagnostic
    load_spec(path) -> Plan                        the same for a file; paths resolve next to it
    analyze(text, filename, base_dir) -> Analysis  the plan (or None) and all diagnostics
    check_file(path) -> Analysis                   analyze + model, target checks + warnings
    format_text(text, filename) -> str             canonical form, every comment kept
    validate_against_model(plan, num_layers)       checks that need the layer count
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from prunec.errors import Diagnostic, SourceMap, Span, SpecError
from prunec.plan.model import Plan
from prunec.plan.model_info import layer_count, read_config
from prunec.syntax.format import format_text
from prunec.syntax.lower import lower
from prunec.syntax.model_checks import (
    heal_problems,
    missing_file_warnings,
    support_problems,
    target_problems,
    validate_against_model,
)
from prunec.syntax.parser import parse_tree

__all__ = [
    "Analysis",
    "analyze",
    "check_file",
    "format_text",
    "load_spec",
    "parse",
    "read_spec_text",
    "validate_against_model",
]


class Analysis(NamedTuple):
    """The result of checking one spec.

    plan: the validated plan; None when any diagnostic is an error.
    diagnostics: errors and warnings in source order (empty for a clean spec).
    sources: the text of the file, so diagnostics can be rendered with their source line.
    """

    plan: Plan | None
    diagnostics: tuple[Diagnostic, ...]
    sources: SourceMap

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")


def analyze(text: str, filename: str = "<string>", base_dir: Path | None = None) -> Analysis:
    """Parse and validate `text`; never raises for problems in the text itself."""
    text = text.removeprefix("\ufeff")  # editors on Windows may write a byte-order mark
    sources = SourceMap()
    sources.add(filename, text)
    try:
        tree = parse_tree(text, filename)
    except SpecError as err:
        return Analysis(None, err.diagnostics, sources)
    plan, diagnostics = lower(tree, Path(base_dir) if base_dir is not None else Path.cwd())
    return Analysis(plan, tuple(diagnostics), sources)


def parse(text: str, filename: str = "<string>", base_dir: Path | None = None) -> Plan:
    """The validated plan of `text`. Paths resolve against `base_dir` (default: the cwd).

    Raises SpecError carrying every diagnostic found, not only the first.
    """
    result = analyze(text, filename, base_dir)
    if result.errors or result.plan is None:
        raise SpecError(result.errors, result.sources)
    return result.plan


def read_spec_text(path: Path) -> str:
    """A spec file's text; an unreadable file is a SpecError (E100), never a traceback, and
    bytes that are not UTF-8 are E106 at the line and column of the first bad byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise SpecError([Diagnostic("E100", f"cannot read {path}: {reason}")]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(str(path), data, err) from None


def _not_utf8(filename: str, data: bytes, err: UnicodeDecodeError) -> SpecError:
    """E106 pointing at the first byte that is not UTF-8 (columns count characters)."""
    line_start = data.rfind(b"\n", 0, err.start) + 1
    line = data.count(b"\n", 0, err.start) + 1
    line_end = data.find(b"\n", err.start)
    raw_line = data[line_start : line_end if line_end >= 0 else len(data)]
    col = len(data[line_start : err.start].decode("utf-8", errors="replace")) + 1
    shown = raw_line.decode("utf-8", errors="replace")
    sources = SourceMap()
    sources.add(filename, "\n" * (line - 1) + shown)
    byte = data[err.start]
    diag = Diagnostic(
        "E106",
        f"the spec is not valid UTF-8: byte 0x{byte:02x} cannot start or continue a character",
        Span.point(filename, line, col),
        help="save the file as UTF-8 (specs are UTF-8 text)",
    )
    return SpecError([diag], sources)


def load_spec(path: str | Path) -> Plan:
    """The validated plan of a spec file; its paths resolve against the file's directory."""
    spec_path = Path(path)
    text = read_spec_text(spec_path)
    plan = parse(text, str(path), spec_path.resolve().parent)
    return plan.model_copy(update={"spec_path": spec_path.resolve(), "spec_text": text})


def check_file(path: str | Path) -> Analysis:
    """Everything `prunec check` reports for one file.

    Syntax and semantic errors; when the model is a local directory with a readable
    config.json, the checks that need its layer count; and warnings for files that do not
    exist yet (warnings never make the check fail).
    """
    spec_path = Path(path)
    try:
        text = read_spec_text(spec_path)
    except SpecError as err:  # unreadable, or not UTF-8
        return Analysis(None, err.diagnostics, err.sources)
    result = analyze(text, str(path), spec_path.resolve().parent)
    if result.plan is None:
        return result
    plan = result.plan.model_copy(update={"spec_path": spec_path.resolve()})
    extra = missing_file_warnings(plan)
    config = read_config(plan.model)
    num_layers = layer_count(config)
    model_errors = validate_against_model(plan, num_layers) if num_layers else []
    if config is not None:
        model_errors += support_problems(plan, config) + heal_problems(plan, config)
    model_errors += target_problems(plan)
    diagnostics = tuple(sorted(model_errors, key=_position)) + tuple(extra)
    return Analysis(None if model_errors else plan, diagnostics, result.sources)


def _position(diag: Diagnostic) -> tuple[int, int]:
    return (diag.span.line, diag.span.col) if diag.span else (0, 0)
