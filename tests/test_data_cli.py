"""Broken data through the CLI (`check --deep`, `score`): exit codes, file:line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_layouts import write_images

from prunec.cli import main
from prunec.errors import ExitCode

SPEC = """\
model "{model}" {{
  dtype float32
}}

domain d {{
  data "{data}"
{extra}
}}

prune {{
  budget 1 layer
}}
{tail}"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0), out, err


def write_spec(directory: Path, model: Path, data: str, extra: str = "", tail: str = "") -> Path:
    spec = directory / "s.prune"
    spec.write_text(SPEC.format(model=model, data=data, extra=extra, tail=tail))
    return spec


def _parquet_bytes(tmp: Path) -> bytes:
    from datasets import Dataset

    Dataset.from_list([{"text": "a"}]).to_parquet(str(tmp / "real.parquet"))
    return (tmp / "real.parquet").read_bytes()


def _lines(*rows: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


#: name -> (file name, content (bytes, or a function of the directory), where, code, extra)
CORPUS: dict[str, tuple] = {
    "invalid_json": ("d.jsonl", _lines({"text": "ok"}, "{not json}"), ":2:", "E323", ""),
    "not_an_object": ("d.jsonl", _lines(["a", "list"]), ":1:", "E324", ""),
    "empty_text": ("d.jsonl", _lines({"text": "ok"}, {"text": " "}), ":2:", "E326", ""),
    "answer_type": ("d.jsonl", _lines({"text": "a", "answer": [1]}), ":1:", "E327", ""),
    "image_missing": ("d.jsonl", _lines({"text": "a", "image": "img/no.png"}), ":1:", "E328", ""),
    "image_broken": ("d.jsonl", _lines({"text": "a", "image": "img/bad.png"}), ":1:", "E329", ""),
    "parquet_named_jsonl": ("d.jsonl", _parquet_bytes, ":2:", "E320", ""),
    "csv_named_jsonl": ("d.jsonl", b"text,answer\nhow many,2\n", ":1:", "E323", ""),
    "pretty_json_object": ("d.json", b'{\n  "text": "a"\n}\n', ":1:", "E324", ""),
    "array_syntax": ("d.json", b'[{"text": "a"},\n {"text": "b"}\n {"text": "c"}]', ":3:", "E323", ""),
    "not_utf8": ("d.jsonl", b'{"text": "caf\xe9"}\n', ":1:", "E320", ""),
    "llava_role": ("d.jsonl", _lines({"conversations": [{"from": "bot", "value": "a"}]}), ":1:", "E333", ""),
    "chat_part": ("d.jsonl", _lines({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}), ":1:", "E333", ""),
    "two_images": ("d.jsonl", _lines({"text": "a", "image": ["img/a.png", "img/b.png"]}), ":1:", "E334", ""),
    "empty_file": ("d.jsonl", b"\n\n", ":1:", "E321", ""),
    "too_few": ("d.jsonl", _lines({"text": "a"}), ":1:", "E322", "  samples 5"),
    "unmapped_field": ("d.jsonl", _lines({"text": "a"}), "d.jsonl", "E337", '  fields text "question"'),
    "corrupt_parquet": ("d.parquet", b"PAR1 truncated", "d.parquet", "E336", ""),
    "csv_no_text_column": ("d.csv", b"question\nhow many\n", "d.csv", "E337", ""),
    "csv_empty_cell": ("d.csv", b"text,answer\nok,1\n,2\n", "d.csv row 1", "E326", ""),
    "many_bad_lines": ("d.jsonl", _lines(*[{"text": 3}] * 2000), ":10:", "E339", ""),
}  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_model) -> Path:
    return tiny_model("llava", num_layers=2)


@pytest.mark.parametrize("command", ["check --deep", "score"])
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_broken_data_is_a_spec_error_naming_the_place(
    name, command, tmp_path, model, capsys, monkeypatch
):
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    filename, content, where, code, extra = CORPUS[name]
    write_images(tmp_path)
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    path = tmp_path / filename
    path.write_bytes(content(tmp_path) if callable(content) else content)
    spec = write_spec(tmp_path, model, filename, extra)
    exit_code, _, err = run_cli([*command.split(), str(spec)], capsys)
    assert exit_code == ExitCode.SPEC, err
    assert f"error[{code}]" in err
    located = f"{path}{where}" if where.startswith(":") else str(tmp_path / where)
    assert located in err, err[:2000]
    assert "Traceback" not in err and "internal error" not in err
    assert len(err) < 20_000  # capped: 2,000 bad lines do not print 2,000 errors


def test_deep_check_passes_good_data_and_reads_every_source(tmp_path, model, capsys):
    from datasets import Dataset

    write_images(tmp_path)
    (tmp_path / "d.jsonl").write_bytes(_lines({"text": "a", "image": "img/a.png"}, {"text": "b"}))
    Dataset.from_list([{"q": "x", "a": "1"}, {"q": "y", "a": "2"}]).to_parquet(
        str(tmp_path / "e.parquet")
    )
    # `fields` applies to the domain's every source: here the data has `text`, the eval `q`.
    spec = write_spec(tmp_path, model, "d.jsonl", '  eval "e.parquet"', "verify {\n  d >= 50%\n}\n")
    assert run_cli(["check", "--deep", str(spec)], capsys)[0] == ExitCode.SPEC
    (tmp_path / "d.jsonl").write_bytes(_lines({"q": "a", "image": "img/a.png"}, {"q": "b"}))
    spec = write_spec(
        tmp_path,
        model,
        "d.jsonl",
        '  eval "e.parquet"\n  fields text "q", answer "a"',
        "verify {\n  d >= 50%\n}\n",
    )
    code, out, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert (code, out) == (ExitCode.OK, f"ok  {spec}\n"), err
    # A mapped field that no source of the domain has is a misspelling.
    spec.write_text(spec.read_text().replace('answer "a"', 'answer "a", image "picture"'))
    code, _, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert code == ExitCode.SPEC and "error[E337]" in err and "`picture`" in err
    assert f"{spec}:8:38" in err  # points at the mapping in the spec
    spec.write_text(spec.read_text().replace(', image "picture"', ""))
    # Eval records need answers: the build's evaluation would fail on them.
    Dataset.from_list([{"q": "x", "a": "1"}, {"q": "y", "a": None}]).to_parquet(
        str(tmp_path / "e.parquet")
    )
    code, _, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert code == ExitCode.SPEC and "error[E338]" in err and "e.parquet row 1" in err


def test_deep_check_makes_missing_files_errors(tmp_path, model, capsys):
    spec = write_spec(tmp_path, model, "later.jsonl")
    code, _, err = run_cli(["check", str(spec)], capsys)
    assert code == ExitCode.OK and "warning[W301]" in err
    code, out, err = run_cli(["check", "--deep", "--json", str(spec)], capsys)
    (report,) = json.loads(out)
    assert code == ExitCode.SPEC and not report["ok"]
    assert [(d["code"], d["file"]) for d in report["diagnostics"]] == [("E310", str(spec))]


def test_deep_check_reads_the_model_config(tmp_path, model, capsys):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    (tmp_path / "d.jsonl").write_bytes(_lines({"text": "a"}))
    spec = write_spec(tmp_path, copy, "d.jsonl")
    config = copy / "config.json"
    config.write_text(config.read_text()[:-40])  # truncated
    code, _, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert code == ExitCode.SPEC and "error[E350]" in err and f"{config}:" in err
    assert "Traceback" not in err
    config.write_text(json.dumps({"num_hidden_layers": 2}))
    code, _, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert code == ExitCode.SPEC and "error[E350]" in err and "model_type" in err
    # A hub model that is not cached: a warning, the data is still checked.
    spec.write_text(spec.read_text().replace(str(copy), "prunec-tests/not-cached"))
    code, _, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert code == ExitCode.OK and "warning[W351]" in err


def test_offline_data_is_a_build_error_for_score_and_an_error_for_deep_check(
    tmp_path, model, capsys, monkeypatch
):
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "d.jsonl"
    data.write_bytes(_lines({"text": "a"}, {"text": "b", "image": "https://img.example/1.png"}))
    spec = write_spec(tmp_path, model, "d.jsonl")
    code, _, err = run_cli(["score", str(spec)], capsys)
    assert code == ExitCode.BUILD and f"{data}:2: cannot download image" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["check", "--deep", str(spec)], capsys)
    assert code == ExitCode.SPEC and "error[E335]" in err and f"{data}:2" in err
    spec = write_spec(tmp_path, model, "hf://datasets/prunec-tests/none", '  split "test"')
    code, _, err = run_cli(["score", str(spec)], capsys)
    assert code == ExitCode.BUILD and "cannot load hub dataset" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


_IMPORTS = """
import sys
from prunec.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = ("torch", "transformers", "datasets", "pyarrow", "pandas", "PIL")
print("HEAVY", sorted(m for m in heavy if m in sys.modules), "EXIT", code)
"""


def test_check_without_deep_reads_no_data(tmp_path):
    from datasets import Dataset

    Dataset.from_list([{"text": "a"}]).to_parquet(str(tmp_path / "d.parquet"))
    spec = tmp_path / "s.prune"
    spec.write_text(
        'model "org/m"\ndomain d {\n  data "d.parquet"\n  fields text "text"\n}\n'
        "prune {\n  budget 1 layer\n}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORTS, "check", str(spec)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY [] EXIT 0", proc.stderr
