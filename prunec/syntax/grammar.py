"""The grammar file and the Lark parser built from it (once per process, cached on disk)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

from lark import Lark, Token

from prunec.errors import Span

#: Where the grammar is found: inside an installed wheel first, then in a source checkout.
_GRAMMAR_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "_grammar" / "prunec.lark",
    Path(__file__).resolve().parent.parent.parent / "grammar" / "prunec.lark",
)

#: Keywords that start a top-level block, and their terminal names.
TOP_LEVEL = ("model", "domain", "prune", "verify", "target")
BLOCKS = tuple(word.upper() for word in TOP_LEVEL)


class _AlwaysName:
    """A no-op post-lexer that makes NAME acceptable in every parser state.

    Lark's contextual lexer otherwise matches a keyword as a prefix of a longer word
    (`budgett` lexes as `budget` + `t`); with NAME always present, a word is lexed whole and
    only then re-typed as a keyword, so a misspelt keyword arrives as one NAME token.
    """

    always_accept = ("NAME",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return stream


def grammar_path() -> Path:
    """The grammar file in use (installed copy or source checkout)."""
    for candidate in _GRAMMAR_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("prunec.lark not found; the installation is incomplete")


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The LALR parser, built once per process."""
    return Lark(
        grammar_path().read_text(encoding="utf-8"),
        parser="lalr",
        propagate_positions=True,
        keep_all_tokens=True,
        postlex=_AlwaysName(),  # type: ignore[arg-type]
        maybe_placeholders=False,
        cache=_cache_file(),
    )


def _cache_file() -> str | bool:
    """Where Lark keeps the built LALR tables between runs (False: do not cache).

    Loading them is several times faster than building them, which matters for `prunec
    check` in pre-commit hooks. Lark stores a hash of the grammar and options in the file
    and rebuilds on a mismatch. A per-user directory, not the shared temp directory, because
    the file is a pickle.
    """
    import os

    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prunec"
        base.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # no home directory, or a read-only one
        return False
    return str(base / "grammar.lark-cache")


def token_span(token: Token, filename: str) -> Span:
    """Where `token` is in `filename` (Lark columns are 1-based, end exclusive like Span)."""
    line = token.line or 1
    col = token.column or 1
    end_line = token.end_line or line
    end_col = token.end_column or col + len(str(token))
    return Span(filename, line, col, end_line, end_col)
