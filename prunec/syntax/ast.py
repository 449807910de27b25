"""The syntax tree of a `.prune` file: blocks, settings and tokens, each with its source span."""

from __future__ import annotations

from dataclasses import dataclass

from prunec.errors import Span


@dataclass(frozen=True)
class Tok:
    """One token as written.

    kind: the grammar terminal ("NUMBER", "STRING", "NAME", "PERCENT", "COMMA", or a keyword
        such as "BUDGET").
    text: the exact source text (strings keep their quotes and escapes).
    """

    kind: str
    text: str
    span: Span


@dataclass(frozen=True)
class Setting:
    """One statement inside a block, e.g. `budget 25%` or `math >= 90% on "x"`.

    rule: the grammar rule ("budget", "gate", "target_option", ...).
    tokens: every token of the statement in order, the leading keyword or name included.
    """

    rule: str
    tokens: tuple[Tok, ...]
    span: Span

    @property
    def key(self) -> Tok:
        return self.tokens[0]

    @property
    def args(self) -> tuple[Tok, ...]:
        return self.tokens[1:]


@dataclass(frozen=True)
class Item:
    """A top-level statement: `model`, `domain`, `prune`, `verify` or `target`.

    head: the tokens before the block (keyword, name/kind, string), e.g. `target onnx "x"`.
    body: the settings inside `{ ... }`; None when the item has no braces at all.
    close: the span of the closing `}`; None without braces.
    """

    rule: str
    head: tuple[Tok, ...]
    body: tuple[Setting, ...] | None
    span: Span
    close: Span | None = None

    @property
    def keyword(self) -> Tok:
        return self.head[0]


@dataclass(frozen=True)
class Comment:
    """A `#` comment. `own_line`: nothing but whitespace precedes it on its line."""

    text: str
    line: int
    col: int
    own_line: bool


@dataclass(frozen=True)
class SpecFile:
    """A parsed file: its items in source order and every comment."""

    filename: str
    text: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...]
