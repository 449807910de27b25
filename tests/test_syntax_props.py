"""Property and fuzz tests of the front end: fmt is idempotent and meaning-preserving on
generated specs, and no input makes the front end raise anything but SpecError."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prunec.errors import SpecError
from prunec.syntax import analyze, format_text, parse
from prunec.syntax.parser import first_syntax_error, parse_tree, scan_comments

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [p.read_text() for p in sorted((ROOT / "specs").glob("*.prune"))]
BASE = Path("/spec")
PROPS = settings(
    max_examples=int(__import__("os").environ.get("PRUNEC_PROP_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Separators between tokens: spaces, newlines, blank lines, trailing and own-line comments.
# Form feeds and U+2028 catch line counting that disagrees with the parser's (only "\n").
SEPARATORS = st.sampled_from(
    [" ", "  ", "\t", "\n", "\n\n\n", " # note\n", "\n  # own line\n", "\x0c", " # a\u2028b\r\n"]
)
NAMES = st.sampled_from(["math", "general", "charts", "docs", "first", "ocr-2"])


@st.composite
def _spec(draw: st.DrawFn) -> str:
    """A valid spec as a token list, joined by random separators."""
    tokens: list[str] = ["model", '"org/model-1"']
    model_settings = draw(
        st.lists(
            st.sampled_from(
                [
                    ["revision", '"main"'],
                    ["dtype", "bfloat16"],
                    ["device", "cuda", ":", "1"],
                    ["trust_remote_code"],
                ]
            ),
            unique_by=lambda s: s[0],
            max_size=4,
        )
    )
    empty_block: bool = draw(st.booleans())
    if model_settings or empty_block:
        tokens += ["{", *[t for s in model_settings for t in s], "}"]
    domains = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    for name in domains:
        body = [["data", f'"data/{name}.jsonl"'], ["eval", f'"data/{name}_eval.jsonl"']]
        body += draw(
            st.lists(
                st.sampled_from(
                    [["samples", "64"], ["weight", "0.25"], ["max_length", "128"], ["seed", "3"]]
                ),
                unique_by=lambda s: s[0],
            )
        )
        body = draw(st.permutations(body))
        tokens += ["domain", name, "{", *[t for s in body for t in s], "}"]
    tokens += _prune(draw)
    gates = draw(
        st.lists(
            st.tuples(st.sampled_from(domains), st.sampled_from(["", "nll", "accuracy"])),
            unique_by=lambda g: (g[0], g[1] or "accuracy"),
            max_size=4,
        )
    )
    empty_verify: bool = draw(st.booleans())
    if gates or empty_verify:
        tokens += ["verify", "{"]
        for domain, metric in gates:
            percent = draw(st.sampled_from(["90", "85.5", "100"]))
            tokens += [domain, *([metric] if metric else []), ">=", percent, "%"]
            if draw(st.booleans()):
                tokens += ["on", '"data/v.jsonl"']
        tokens += ["}"]
    if draw(st.booleans()):
        tokens += ["target", "hf", '"build/a"']
    if draw(st.booleans()):
        tokens += ["target", "onnx", '"build/b"', "{", "opset", "17", "quantize", "int8", "}"]
    seps = draw(st.lists(SEPARATORS, min_size=len(tokens), max_size=len(tokens)))
    return "".join(t + s for t, s in zip(tokens, seps, strict=True))


def _prune(draw: st.DrawFn) -> list[str]:
    tokens = ["prune", "{"]
    mode = draw(st.sampled_from(["percent", "layers", "remove"]))
    if mode == "percent":
        tokens += ["budget", draw(st.sampled_from(["25", "12.5", "50"])), "%"]
    elif mode == "layers":
        count = draw(st.sampled_from(["1", "3"]))
        tokens += ["budget", count, draw(st.sampled_from(["layer", "layers"]))]
    else:  # manual selection; the strategy is implied or written as `manual`
        tokens += ["remove", "3", ",", "5", ",", "8"]
    if draw(st.booleans()):
        tokens += ["spacing", "max_run", "2", "min_gap", "0"]
    if draw(st.booleans()):
        tokens += ["keep", "first", "1", ",", "last", "2"]
    if draw(st.booleans()):
        tokens += ["protect", "4", ",", "6", ",", "9"]
    strategies = ["manual"] if mode == "remove" else ["auto", "domain", "bi", "uniform"]
    if mode != "remove" or draw(st.booleans()):
        tokens += ["strategy", draw(st.sampled_from(strategies))]
    tokens += ["tokens", draw(st.sampled_from(["all", "last"])), "}"]
    return tokens


def _comments(text: str) -> list[str]:
    return sorted(c.text for c in scan_comments(text))


@PROPS
@given(_spec())
def test_fmt_is_idempotent_keeps_comments_and_meaning(text: str) -> None:
    formatted = format_text(text)
    assert format_text(formatted) == formatted
    assert _comments(formatted) == _comments(text)
    assert parse(formatted, base_dir=BASE).model_dump() == parse(text, base_dir=BASE).model_dump()


def _mutate(text: str, data: st.DataObject) -> str:
    chunk = st.sampled_from(["{", "}", '"', "%", ",", "#", "\n", " 3", "layers", "-1", "é", "\\"])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 12)))
        op = data.draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + data.draw(chunk) + text[i:]
        elif op == "replace":
            text = text[:i] + data.draw(chunk) + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


def _front_end_survives(text: str) -> None:
    result = analyze(text, "fuzz.prune", BASE)
    assert (result.plan is None) == bool(result.errors)
    try:
        parse_tree(text.removeprefix("\ufeff"), "fuzz.prune")
    except SpecError as err:
        # Recovery after a syntax error never changes the first error reported.
        first = first_syntax_error(text.removeprefix("\ufeff"), "fuzz.prune")
        assert err.diagnostics[0] == first == result.errors[0]
        assert all(d.code.startswith("E1") for d in err.diagnostics)
    try:
        plan = parse(text, "fuzz.prune", BASE)
    except SpecError as err:
        assert err.render()
        return
    formatted = format_text(text)
    assert parse(formatted, "fuzz.prune", BASE).model_dump() == plan.model_dump()


@PROPS
@given(st.data())
def test_mutated_examples_only_raise_spec_error(data: st.DataObject) -> None:
    _front_end_survives(_mutate(data.draw(st.sampled_from(EXAMPLES)), data))


@PROPS
@given(st.text(alphabet=st.sampled_from(list('abmodel{}"%#,:>=0123456789 \n\t.-\\')), max_size=80))
def test_random_text_only_raises_spec_error(text: str) -> None:
    _front_end_survives(text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_unicode_only_raises_spec_error(text: str) -> None:
    _front_end_survives(text)
