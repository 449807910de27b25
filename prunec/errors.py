"""One error hierarchy for every stage, source spans, and the single diagnostic formatter."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


class ExitCode(enum.IntEnum):
    """Process exit codes of the `prunec` CLI (documented in the README)."""

    OK = 0
    INTERNAL = 1  # a bug in prunec: reported with a traceback only under --debug
    SPEC = 2  # the spec (or a file it names) is invalid; nothing was built
    BUILD = 3  # loading, scoring, emission or a self-check failed; nothing was published
    VERIFY = 4  # the artifact was built but a `verify` gate failed; nothing was published
    LOCK = 5  # `--locked` and the inputs no longer match the lockfile
    FMT = 6  # `fmt --check` found files that are not canonically formatted
    USAGE = 64  # bad command-line usage (EX_USAGE); click's own default 2 would clash with SPEC
    INTERRUPTED = 130  # Ctrl-C (SIGINT); targets are left as they were
    TERMINATED = 143  # SIGTERM (128 + 15, as shells report it); targets are left as they were


@dataclass(frozen=True, order=True)
class Span:
    """A region of a source file. Lines and columns are 1-based; `end_col` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    @classmethod
    def point(cls, file: str, line: int, col: int) -> Span:
        return cls(file, line, col, line, col + 1)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a user input.

    code: stable identifier (`E1xx` syntax, `E2xx` semantics, `E3xx` model/data checks).
    span: where it is; None when the problem has no position (e.g. a missing file argument).
    expected: what would have been accepted there, in words ("a number, or `first`").
    help: a suggestion ("did you mean `budget`?").
    notes: extra lines of context.
    count: how many problems it stands for: 1, or how many a summary line leaves unshown
        (long lists of data problems show the first few, then "and N more").
    """

    code: str
    message: str
    span: Span | None = None
    expected: str | None = None
    help: str | None = None
    notes: tuple[str, ...] = ()
    severity: str = "error"
    count: int = 1


class PrunecError(Exception):
    """Base of every error prunec raises on purpose. The CLI maps `exit_code` to the process."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def render(self, sources: SourceMap | None = None) -> str:
        return f"error: {self}"


class SpecError(PrunecError):
    """The spec is invalid. Carries every diagnostic found, not only the first."""

    exit_code = ExitCode.SPEC

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: SourceMap | None = None):
        if not diagnostics:
            raise ValueError("SpecError needs at least one diagnostic")
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        self.sources = sources if sources is not None else SourceMap()
        super().__init__(self.diagnostics[0].message)

    def render(self, sources: SourceMap | None = None) -> str:
        src = sources if sources is not None else self.sources
        return format_diagnostics(self.diagnostics, src)


class BuildError(PrunecError):
    """Loading, scoring, emission or a self-check failed. Nothing was published."""

    exit_code = ExitCode.BUILD

    def render(self, sources: SourceMap | None = None) -> str:
        return f"error[build]: {self}"


class VerifyError(PrunecError):
    """A `verify` gate failed. `report` is the rendered gate table."""

    exit_code = ExitCode.VERIFY

    def __init__(self, message: str, report: str = ""):
        super().__init__(message)
        self.report = report

    def render(self, sources: SourceMap | None = None) -> str:
        tail = f"\n{self.report}" if self.report else ""
        return f"error[verify]: {self}{tail}"


class LockError(PrunecError):
    """`--locked` was given and the inputs differ from the lockfile."""

    exit_code = ExitCode.LOCK

    def render(self, sources: SourceMap | None = None) -> str:
        return f"error[lock]: {self}"


@dataclass
class SourceMap:
    """File name -> text, so diagnostics can quote the offending line."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text

    def line(self, file: str, line: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            return None
        lines = source_lines(text)
        return lines[line - 1] if 1 <= line <= len(lines) else None


#: ANSI styles for `color=True` output (rustc's palette).
_STYLES = {
    "error": "\x1b[1;31m",
    "warning": "\x1b[1;33m",
    "bold": "\x1b[1m",
    "gutter": "\x1b[1;34m",
    "help": "\x1b[1;36m",
}
_RESET = "\x1b[0m"


def _paint(text: str, style: str, color: bool) -> str:
    return f"{_STYLES[style]}{text}{_RESET}" if color and text else text


def source_lines(text: str) -> list[str]:
    """The lines of `text` as the parser counts them: split on "\\n" only.

    str.splitlines also splits on form feeds, U+2028 and other separators, which would put
    line numbers out of step with the parser's (and cut comments in two).
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def format_diagnostic(diag: Diagnostic, sources: SourceMap, color: bool = False) -> str:
    """Render one diagnostic, rustc-style; `color` adds ANSI styles for terminals.

    specs/x.prune:12:3: error[E201]: unknown key `budgett` in `prune`
       |
    12 |   budgett 25%
       |   ^^^^^^^ expected one of: budget, spacing, keep, ...
       = help: did you mean `budget`?
    """
    level = "warning" if diag.severity == "warning" else "error"
    head = _paint(f"{diag.span}: ", "bold", color) if diag.span else ""
    kind = _paint(f"{diag.severity}[{diag.code}]", level, color)
    out = [f"{head}{kind}: {_paint(diag.message, 'bold', color)}"]
    src_line = sources.line(diag.span.file, diag.span.line) if diag.span else None
    if diag.span is not None and src_line is not None:
        num = str(diag.span.line)
        pad = " " * len(num)
        shown = src_line.expandtabs(1)
        start = max(diag.span.col - 1, 0)
        if diag.span.end_line == diag.span.line:
            width = max(diag.span.end_col - diag.span.col, 1)
        else:
            width = max(len(shown) - start, 1)
        caret = " " * start + _paint("^" * width, level, color)
        label = f" {_paint('expected ' + diag.expected, level, color)}" if diag.expected else ""
        bar = _paint(f"{pad} |", "gutter", color)
        out += [
            bar,
            f"{_paint(num + ' |', 'gutter', color)} {shown}".rstrip(),
            f"{bar} {caret}{label}",
        ]
    elif diag.expected:
        out.append(f"  = expected {diag.expected}")
    pad = " " * (len(str(diag.span.line)) if diag.span and src_line is not None else 1)
    out += [f"{pad} {_paint('= note:', 'bold', color)} {note}" for note in diag.notes]
    if diag.help:
        out.append(f"{pad} {_paint('= help:', 'help', color)} {diag.help}")
    return "\n".join(out)


def format_diagnostics(diags: Iterable[Diagnostic], sources: SourceMap, color: bool = False) -> str:
    diags = list(diags)
    body = "\n\n".join(format_diagnostic(d, sources, color) for d in diags)
    n = sum(d.count for d in diags if d.severity == "error")
    if n > 1:
        body += "\n\n" + _paint(f"error: {n} problems found", "error", color)
    return body


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest valid choice to a misspelt `word`, or None when nothing is close."""
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None
