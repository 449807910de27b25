"""Syntax errors in words: Lark's errors -> Diagnostics, and recovery to report several."""

from __future__ import annotations

import re
from collections.abc import Iterable

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from prunec.errors import Diagnostic, Span, did_you_mean, source_lines
from prunec.syntax.grammar import BLOCKS as _BLOCKS
from prunec.syntax.grammar import TOP_LEVEL as _TOP_LEVEL
from prunec.syntax.grammar import lark_parser, token_span

#: The one table from grammar terminals to words. Keywords and punctuation are not listed:
#: they are shown as themselves (`budget`, `}`).
TERMINAL_WORDS: dict[str, str] = {
    "NUMBER": "a number",
    "STRING": 'a quoted string ("...")',
    "NAME": "a name",
    "$END": "the end of the file",
}

#: Which block the parser is in, recognised by a keyword only that block accepts.
_CONTEXT_BY_KEYWORD: tuple[tuple[str, str], ...] = (
    ("BUDGET", "`prune`"),
    ("DTYPE", "`model`"),
    ("DATA", "`domain`"),
    ("SAMPLES", "`verify`"),
    ("MODEL", "the file"),
)


#: Where each setting belongs, for "`budget` belongs in a `prune` block" hints.
_HOME_BLOCK: dict[str, str] = {
    **dict.fromkeys(("revision", "dtype", "device", "trust_remote_code"), "model"),
    **dict.fromkeys(
        ("data", "weight", "max_length", "eval", "seed", "fields", "split", "eval_split", "config"),
        "domain",
    ),
    **dict.fromkeys(
        [
            "budget",
            "spacing",
            "keep",
            "protect",
            "remove",
            "strategy",
            "spacing_weight",
            "search",
            "batch_size",
            "tokens",
            "heal",
        ],
        "prune",
    ),
}


def _home_block(setting: str) -> str | None:
    """The block a setting belongs in; target options come from the registered kinds."""
    if setting in _HOME_BLOCK:
        return _HOME_BLOCK[setting]
    from prunec.plan.registry import target_kinds

    for backend in target_kinds().all().values():
        if setting in backend.Options.model_fields:
            return "target"
    return None


def first_syntax_error(text: str, filename: str) -> Diagnostic:
    try:
        lark_parser().parse(text)
    except UnexpectedInput as err:
        return syntax_diagnostic(err, text, filename)
    raise AssertionError("the text parses without recovery but failed with it")


_BETWEEN_TOKENS = re.compile(r"(?:\s|#[^\n]*)*")


class Recovery:
    """Decides which syntax errors after the first one are worth reporting.

    Lark resumes after an error by dropping the offending token. What follows is parsed in
    whatever state the error left, so later errors may be mere echoes of the first. Only
    an error in a *later* top-level block whose keyword starts a line is reported (at most
    one per block); errors right after a dropped token, or inside the block that already
    failed, are dropped too. The result: no invented errors, at the price of sometimes
    missing a second error in the same block.
    """

    MAX_ERRORS = 10

    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.diagnostics: list[Diagnostic] = []
        self.last_end = -1  # end offset of the last token that caused an error
        self.last_item: int | None = None  # start offset of the block of the last report

    def on_error(self, err: UnexpectedInput) -> bool:
        start, end = _error_offsets(err)
        item = _current_item(err)
        if self._trusted(start, item):
            self.diagnostics.append(syntax_diagnostic(err, self.text, self.filename))
            self.last_item = item.start_pos if item is not None else start
        self.last_end = max(self.last_end, end)
        at_end = isinstance(err, UnexpectedEOF) or (
            isinstance(err, UnexpectedToken) and err.token.type == "$END"
        )
        if at_end or len(self.diagnostics) >= self.MAX_ERRORS:
            return False
        if isinstance(err, UnexpectedToken) and item is not None:
            _restart_at_block_keyword(err, item)
        return True

    def _trusted(self, start: int, item: Token | None) -> bool:
        if not self.diagnostics:
            return True
        gap = self.text[self.last_end : start] if start >= self.last_end else ""
        if start <= self.last_end or _BETWEEN_TOKENS.fullmatch(gap):
            return False  # nothing was parsed since the last error
        anchor = item.start_pos if item is not None else start
        column = item.column if item is not None else _column(self.text, start)
        return (
            column == 1
            and self.last_item is not None
            and anchor is not None
            and anchor > self.last_item
        )


def _restart_at_block_keyword(err: UnexpectedToken, item: Token) -> None:
    """When a block keyword starts a line inside a broken block, abandon the broken block.

    The stacks are cut back to just before the broken block's keyword (Lark keeps one more
    state than values), and the keyword is fed again as a keyword: the contextual lexer
    handed it over as a plain name, since no block may start where the error happened.
    """
    token = err.token
    if str(token) not in _TOP_LEVEL or token.column != 1:
        return
    state = err.interactive_parser.parser_state
    index = next((i for i, v in enumerate(state.value_stack) if v is item), None)
    if index is None:
        return
    del state.value_stack[index:]
    del state.state_stack[index + 1 :]
    # A block keyword is always valid between blocks, so feeding it cannot fail.
    err.interactive_parser.feed_token(Token.new_borrow_pos(str(token).upper(), str(token), token))


def _column(text: str, offset: int) -> int:
    return offset - (text.rfind("\n", 0, offset) + 1) + 1


def _error_offsets(err: UnexpectedInput) -> tuple[int, int]:
    if isinstance(err, UnexpectedToken):
        token = err.token
        start = token.start_pos if token.start_pos is not None else 1 << 30
        end = token.end_pos if token.end_pos is not None else start
        return start, end
    position = getattr(err, "pos_in_stream", None) or 0
    return position, position + 1


def _current_item(err: UnexpectedInput) -> Token | None:
    """The keyword of the top-level block being parsed when the error happened, if any."""
    interactive = getattr(err, "interactive_parser", None)
    if interactive is None:
        return None
    for value in interactive.parser_state.value_stack:
        if isinstance(value, Token) and value.type in _BLOCKS:
            return value
    return None


# ------------------------------------------------------------------ syntax errors


def _terminal_word(name: str) -> str:
    if name in TERMINAL_WORDS:
        return TERMINAL_WORDS[name]
    for terminal in lark_parser().terminals:
        if terminal.name == name:
            return f"`{terminal.pattern.value}`" if terminal.pattern.type == "str" else name
    return name


def _keyword_text(name: str) -> str | None:
    for terminal in lark_parser().terminals:
        if terminal.name == name and terminal.pattern.type == "str":
            value = str(terminal.pattern.value)
            return value if value.replace("_", "").isalpha() else None
    return None


def expected_words(names: Iterable[str]) -> str:
    """'`a`', '`a` or `b`', 'one of `a`, `b`, `c`': keywords first, then kinds of value."""
    names = set(names)
    keywords = sorted(w for n in names if (w := _keyword_text(n)) is not None)
    others = sorted(
        _terminal_word(n) for n in names if _keyword_text(n) is None and n not in ("RBRACE",)
    )
    words = [f"`{k}`" for k in keywords] + others
    if "RBRACE" in names:
        words.append("`}`")
    if len(words) == 1:
        return words[0]
    if len(words) == 2:
        return f"{words[0]} or {words[1]}"
    return "one of " + ", ".join(words)


def _accepts(err: UnexpectedInput) -> set[str]:
    interactive = getattr(err, "interactive_parser", None)
    if interactive is not None:
        try:
            return {n for n in interactive.accepts() if n != "COMMENT"}
        except Exception:  # accepts() replays the parser; fall back to the lexer's view
            pass
    expected = getattr(err, "expected", None) or getattr(err, "allowed", None) or ()
    return set(expected)


def _context(accepts: set[str]) -> str | None:
    for keyword, context in _CONTEXT_BY_KEYWORD:
        if keyword in accepts:
            return context
    return None


def _eof_span(text: str, filename: str) -> Span:
    lines = source_lines(text)
    return Span.point(filename, len(lines), len(lines[-1]) + 1)


def syntax_diagnostic(err: UnexpectedInput, text: str, filename: str) -> Diagnostic:
    accepts = _accepts(err)
    expected = expected_words(accepts) if accepts else None
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(err, text, filename, expected, accepts)
    if isinstance(err, UnexpectedEOF) or (
        isinstance(err, UnexpectedToken) and err.token.type == "$END"
    ):
        message = "unexpected end of file"
        notes: tuple[str, ...] = ()
        opened = _open_block(err)
        if opened is not None:
            keyword, brace = opened
            message += f"; the `{keyword}` block is not closed"
            notes = (f"the block opens at line {brace.line}, column {brace.column}",)
        elif "RBRACE" in accepts:
            message += "; a `{` block is not closed"
        return Diagnostic("E104", message, _eof_span(text, filename), expected, notes=notes)
    assert isinstance(err, UnexpectedToken)
    token = err.token
    span = token_span(token, filename)
    help_text = _token_help(token, accepts)
    if token.type == "NAME":
        context = _context(accepts)
        if context == "the file":
            message = f"unknown statement `{token}`"
        elif str(token) in _TOP_LEVEL and (item := _current_item(err)) is not None:
            message = f"`{token}` starts a new block, but the `{item}` block is not closed"
            if "RBRACE" not in accepts:
                help_text = f"the statement before `{token}` is incomplete"
        elif context is not None:
            message = f"unknown setting `{token}` in {context}"
        else:
            message = f"unexpected word `{token}`"
        return Diagnostic("E102", message, span, expected, help_text)
    return Diagnostic("E102", f"unexpected {_describe(token)}", span, expected, help_text)


def _token_help(token: Token, accepts: set[str]) -> str | None:
    """A hint for the usual causes of an unexpected token, most specific first."""
    text = str(token)
    keywords = [k for n in accepts if (k := _keyword_text(n)) is not None]
    if "COMMA" in accepts and (token.type == "NUMBER" or text in ("first", "last")):
        return f"is a `,` missing before `{text}`?"
    if text in _TOP_LEVEL and "RBRACE" in accepts:
        return f"is a `}}` missing before this `{text}`?"
    if token.type == "NAME":
        guess = did_you_mean(text, keywords)
        if guess:
            return f"did you mean `{guess}`?"
        home = _home_block(text)
        context = _context(accepts)
        if home and context and context != f"`{home}`":
            return f"`{text}` belongs in a `{home}` block"
        if "STRING" in accepts:
            return 'paths and model ids are written in double quotes: `"..."`'
    if token.type == "STRING" and "NAME" in accepts:
        return f"write it without quotes: `{text[1:-1]}`"
    return None


def _open_block(err: UnexpectedInput) -> tuple[str, Token] | None:
    """The keyword and `{` of the innermost block still open when the input ended."""
    interactive = getattr(err, "interactive_parser", None)
    if interactive is None:
        return None
    stack = list(interactive.parser_state.value_stack)
    for index in range(len(stack) - 1, -1, -1):
        value = stack[index]
        if isinstance(value, Token) and value.type == "LBRACE":
            keyword = next(
                (v for v in reversed(stack[:index]) if isinstance(v, Token) and v.type in _BLOCKS),
                None,
            )
            return (str(keyword) if keyword is not None else "{", value)
        if isinstance(value, Token) and value.type == "RBRACE":
            return None
    return None


def _describe(token: Token) -> str:
    if token.type == "NUMBER":
        return f"number `{token}`"
    if token.type == "STRING":
        return f"string {token}"
    return f"`{token}`"


def _bad_character(
    err: UnexpectedCharacters,
    text: str,
    filename: str,
    expected: str | None,
    expected_names: set[str],
) -> Diagnostic:
    line_text = source_lines(text)[err.line - 1]
    char = err.char
    if char == '"':
        span = Span(filename, err.line, err.column, err.line, len(line_text) + 1)
        return Diagnostic("E103", "unterminated string", span, None, 'close it with `"`')
    span = Span.point(filename, err.line, err.column)
    shown = repr(char) if not char.isprintable() or char.isspace() else f"`{char}`"
    help_text = None
    if char in "<>=" and "__ANON_0" in expected_names:
        help_text = "thresholds are written `>= 90%`"
    elif char == ";":
        help_text = "settings need no separator; write them on separate lines"
    return Diagnostic("E101", f"unexpected character {shown}", span, expected, help_text)
