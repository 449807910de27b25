"""The canonical formatter: one layout for every spec, every comment kept, meaning unchanged."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from prunec.errors import source_lines
from prunec.syntax.ast import Comment, Item, Setting, SpecFile, Tok
from prunec.syntax.parser import parse_tree

INDENT = "  "
_NO_SPACE_BEFORE = {"PERCENT", "COMMA", "COLON"}


@dataclass
class _Unit:
    """One output line-producing element, positioned in the source by (line, col)."""

    line: int
    col: int
    end_line: int
    text: str
    indent: str
    leading: list[Comment] = field(default_factory=list)
    trailing: Comment | None = None
    #: True: always a blank line before; False: never; None: keep the source's choice.
    blank: bool | None = None
    #: For a `target` line, its kind and the text after the kind, so that adjacent target
    #: lines can align their paths once it is known where blank lines fall.
    target: tuple[str, str] | None = None


def format_text(text: str, filename: str = "<string>") -> str:
    """The canonical form of `text`. Raises SpecError when `text` does not parse.

    Every comment is kept: a comment on its own line stays before the statement that follows
    it, a comment after code stays at the end of that statement's line. Blank lines are
    collapsed to one; top-level blocks are separated by one blank line. Values are aligned
    in a column within each block.
    """
    text = text.removeprefix("\ufeff")
    spec = parse_tree(text, filename)
    units = _units(spec)
    tail = _attach(units, list(spec.comments))
    lines = source_lines(text)
    _align_targets(units, lines)
    return _render(units, tail, lines)


# ------------------------------------------------------------------ statements -> units


def _join_tokens(tokens: tuple[Tok, ...]) -> str:
    out = ""
    for i, tok in enumerate(tokens):
        text = tok.text
        if tok.kind in ("LAYER", "LAYERS"):
            text = "layer" if tokens[i - 1].text == "1" else "layers"
        if out and tok.kind not in _NO_SPACE_BEFORE and not out.endswith(":"):
            out += " "
        out += text
    return out


def _head_and_rest(setting: Setting) -> tuple[str, str]:
    tokens = setting.tokens
    split = 1
    if setting.rule == "gate" and tokens[1].kind == "NAME":
        split = 2
    return _join_tokens(tokens[:split]), _join_tokens(tokens[split:])


def _inline_options(settings: tuple[Setting, ...]) -> str:
    return "  ".join(_join_tokens(s.tokens) for s in settings)


def _comments_inside(item: Item, comments: list[Comment]) -> bool:
    if item.close is None:
        return False
    start, end = (item.span.line, item.span.col), (item.close.line, item.close.col)
    return any(start < (c.line, c.col) < end for c in comments)


def _units(spec: SpecFile) -> list[_Unit]:
    units: list[_Unit] = []
    comments = list(spec.comments)
    previous_block = False
    for index, item in enumerate(spec.items):
        body = item.body or ()
        inline = item.rule == "target" or (item.rule == "model" and not body)
        inline = inline and not _comments_inside(item, comments)
        blank: bool | None = None if index else False
        if index and (previous_block or not inline):
            blank = True
        head = _join_tokens(item.head)
        if inline:
            text = head + (f" {{ {_inline_options(body)} }}" if body else "")
            units.append(_unit(item.span.line, item.span.col, item.span.end_line, text, ""))
            units[-1].blank = blank
            if item.rule == "target":
                units[-1].target = (item.head[1].text, text[len(head) - len(item.head[2].text) :])
        else:
            units.append(_unit(item.span.line, item.span.col, item.span.line, head + " {", ""))
            units[-1].blank = blank
            units += _body_units(body)
            close = item.close or item.span
            units.append(_unit(close.line, close.col, close.line, "}", INDENT))
            units[-1].text, units[-1].blank = "}", False
        previous_block = not inline
    return units


def _blank_before(unit: _Unit, lines: list[str]) -> bool:
    """Whether the output has a blank line before `unit` or its leading comments."""
    checks = [comment.line for comment in unit.leading] + [unit.line]
    first_rule = unit.blank
    if first_rule is True:
        return True
    return any(
        _source_blank_above(lines, line)
        for position, line in enumerate(checks)
        if not (position == 0 and first_rule is False)
    )


def _align_targets(units: list[_Unit], lines: list[str]) -> None:
    """Adjacent one-line `target`s (no blank line between) align their paths in a column."""
    groups: list[list[_Unit]] = []
    previous: _Unit | None = None
    for unit in units:
        if unit.target is None:
            previous = None
            continue
        if previous is None or _blank_before(unit, lines):
            groups.append([])
        groups[-1].append(unit)
        previous = unit
    for group in groups:
        width = max(len(u.target[0]) for u in group if u.target is not None)
        for unit in group:
            assert unit.target is not None
            kind, rest = unit.target
            unit.text = f"target {kind.ljust(width)} {rest}"


def _body_units(body: tuple[Setting, ...]) -> list[_Unit]:
    pairs = [_head_and_rest(s) for s in body]
    width = max((len(h) for h, rest in pairs if rest), default=0)
    units = []
    for position, (setting, (head, rest)) in enumerate(zip(body, pairs, strict=True)):
        text = f"{head.ljust(width)} {rest}" if rest else head
        unit = _unit(setting.span.line, setting.span.col, setting.span.end_line, text, INDENT)
        unit.blank = False if position == 0 else None
        units.append(unit)
    return units


def _unit(line: int, col: int, end_line: int, text: str, indent: str) -> _Unit:
    return _Unit(line, col, end_line, text, indent)


# ------------------------------------------------------------------ comments


def _attach(units: list[_Unit], comments: list[Comment]) -> list[Comment]:
    """Give each comment to a unit; returns the comments after the last statement."""
    ordered = sorted(units, key=lambda u: (u.line, u.col))
    keys = [(u.line, u.col) for u in ordered]
    tail: list[Comment] = []
    for comment in comments:
        position = (comment.line, comment.col)
        if comment.own_line:
            after = bisect.bisect_right(keys, position)
            if after < len(ordered):
                ordered[after].leading.append(comment)
            else:
                tail.append(comment)
            continue
        # A comment after code always has a statement (or brace) before it on its line.
        owner = ordered[bisect.bisect_left(keys, position) - 1]
        if owner.trailing is None:
            owner.trailing = comment
        else:
            owner.leading.append(comment)
    return tail


# ------------------------------------------------------------------ output


def _source_blank_above(lines: list[str], line: int) -> bool:
    return line >= 2 and not lines[line - 2].strip()


def _render(units: list[_Unit], tail: list[Comment], lines: list[str]) -> str:
    # Each output line is (code, trailing comment); "" code with no comment is a blank line.
    out: list[tuple[str, str | None]] = []

    def emit(text: str, blank: bool, comment: str | None = None) -> None:
        if blank and out and out[-1] != ("", None):
            out.append(("", None))
        out.append((text, comment))

    for unit in units:
        comment_indent = INDENT if unit.text == "}" and unit.indent else unit.indent
        first = True
        for comment in unit.leading:
            blank = _choose(unit.blank if first else None, lines, comment.line)
            emit(comment_indent + comment.text, blank)
            first = False
        blank = _choose(unit.blank if first else None, lines, unit.line)
        if unit.text == "}":
            blank = False
        text = unit.indent[: len(unit.indent) - len(INDENT)] if unit.text == "}" else unit.indent
        trailing = unit.trailing.text if unit.trailing is not None else None
        emit(text + unit.text, blank, trailing)
    for comment in tail:
        emit(comment.text, _source_blank_above(lines, comment.line))
    return "".join(line + "\n" for line in _align_trailing(out))


def _align_trailing(out: list[tuple[str, str | None]]) -> list[str]:
    """Trailing comments on adjacent lines start in one column, two spaces after the code."""
    lines: list[str] = []
    index = 0
    while index < len(out):
        end = index
        while end < len(out) and out[end][1] is not None:
            end += 1
        if end == index:
            lines.append(out[index][0])
            index += 1
            continue
        width = max(len(code) for code, _ in out[index:end])
        lines += [f"{code.ljust(width)}  {comment}" for code, comment in out[index:end]]
        index = end
    return lines


def _choose(rule: bool | None, lines: list[str], line: int) -> bool:
    return _source_blank_above(lines, line) if rule is None else rule
