"""Text -> syntax tree: parsing with error recovery, and the tree's translation to the AST."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from prunec.errors import SourceMap, Span, SpecError, source_lines
from prunec.syntax.ast import Comment, Item, Setting, SpecFile, Tok
from prunec.syntax.grammar import grammar_path, lark_parser, token_span
from prunec.syntax.syntax_errors import Recovery, first_syntax_error, syntax_diagnostic

__all__ = ["first_syntax_error", "grammar_path", "lark_parser", "parse_tree", "scan_comments"]


def parse_tree(text: str, filename: str = "<string>") -> SpecFile:
    """Parse `text` into a syntax tree; raises SpecError (E1xx) with the syntax errors found.

    After a syntax error the parser drops tokens and carries on, so that errors in later
    blocks are reported in the same run; see `Recovery` for which ones are trusted.
    """
    recovery = Recovery(text, filename)
    try:
        tree = lark_parser().parse(text, on_error=recovery.on_error)
    except UnexpectedInput as err:
        if not recovery.diagnostics:
            recovery.diagnostics.append(syntax_diagnostic(err, text, filename))
    except Exception:  # recovery is best effort: never let it hide the first error
        recovery.diagnostics = [first_syntax_error(text, filename)]
    if recovery.diagnostics:
        sources = SourceMap()
        sources.add(filename, text)
        raise SpecError(recovery.diagnostics, sources)
    items = tuple(_item(child, filename) for child in tree.children if isinstance(child, Tree))
    return SpecFile(filename, text, items, tuple(scan_comments(text)))


# ------------------------------------------------------------------ tree -> AST


def _tok(token: Token, filename: str) -> Tok:
    return Tok(token.type, str(token), token_span(token, filename))


def _leaves(tree: Tree[Any]) -> Iterator[Token]:
    for child in tree.children:
        if isinstance(child, Token):
            yield child
        else:
            yield from _leaves(child)


def _join(first: Span, last: Span) -> Span:
    return Span(first.file, first.line, first.col, last.end_line, last.end_col)


def _item(tree: Tree[Any], filename: str) -> Item:
    head: list[Tok] = []
    body: list[Setting] | None = None
    close: Span | None = None
    for child in tree.children:
        if isinstance(child, Tree) and child.data in ("model_body", "target_body"):
            body, close = _body(child, filename)
        elif isinstance(child, Tree):
            body = body if body is not None else []
            body.append(_setting(child, filename))
        elif child.type == "LBRACE":
            body = body if body is not None else []
        elif child.type == "RBRACE":
            close = token_span(child, filename)
        else:
            head.append(_tok(child, filename))
    end = close if close is not None else head[-1].span
    return Item(
        str(tree.data),
        tuple(head),
        tuple(body) if body is not None else None,
        _join(head[0].span, end),
        close,
    )


def _body(tree: Tree[Any], filename: str) -> tuple[list[Setting], Span | None]:
    settings: list[Setting] = []
    close: Span | None = None
    for child in tree.children:
        if isinstance(child, Tree):
            settings.append(_setting(child, filename))
        elif child.type == "RBRACE":
            close = token_span(child, filename)
    return settings, close


def _setting(tree: Tree[Any], filename: str) -> Setting:
    tokens = tuple(_tok(t, filename) for t in _leaves(tree))
    return Setting(str(tree.data), tokens, _join(tokens[0].span, tokens[-1].span))


def scan_comments(text: str) -> Iterator[Comment]:
    """Every `#` comment outside a string. Strings never span lines, so a line scan suffices."""
    for number, line in enumerate(source_lines(text), start=1):
        in_string = escaped = False
        for index, char in enumerate(line):
            if in_string:
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char == "#":
                own = not line[:index].strip()
                yield Comment(line[index:].rstrip(), number, index + 1, own)
                break
