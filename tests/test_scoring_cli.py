"""`prunec score` and `prunec plan` end to end on a tiny real model, through the score cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunec.cli import main
from prunec.errors import ExitCode

SPEC = """\
model "{model}" {{
  dtype float32
}}

domain math {{
  data    "math.jsonl"
  weight  2
}}

domain general {{
  data    "general.jsonl"
  samples 3
}}

prune {{
  budget   2 layers
  keep     first 1
  strategy {strategy}
}}
"""


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


@pytest.fixture
def spec(tiny_model, tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    rows = [
        {"text": f"two plus {w} equals", "answer": "five"} for w in ("three", "two", "w1", "w2")
    ]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"text": f"what is the {w} circle"} for w in ("red", "blue", "green", "w3")]
    (tmp_path / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "tiny.prune"
    path.write_text(SPEC.format(model=tiny_model("llama", num_layers=5), strategy="domain"))
    return path


def test_score_then_plan(spec, tmp_path, capsys):
    out_file = tmp_path / "scores.json"
    code, _, err = run_cli(["score", str(spec), "-o", str(out_file)], capsys)
    assert code == 0, err
    written = json.loads(out_file.read_text())
    assert written["num_layers"] == 5 and written["domains"]["general"]["samples"] == 3
    assert len(written["domains"]["math"]["importance"]) == 5
    code, out, err = run_cli(["plan", str(spec), "--json"], capsys)  # served by the cache
    assert code == 0, err
    from_cache = json.loads(out)
    code, out, _ = run_cli(["plan", str(spec), "--scores", str(out_file), "--json"], capsys)
    assert json.loads(out)["removed"] == from_cache["removed"]
    assert len(from_cache["removed"]) == 2 and 0 not in from_cache["removed"]
    assert len(list((tmp_path / "cache" / "scores").glob("*.json"))) == 1


def test_bad_data_line_is_a_spec_error(spec, tmp_path, capsys):
    (tmp_path / "math.jsonl").write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    code, _, err = run_cli(["score", str(spec)], capsys)
    assert code == ExitCode.SPEC
    assert f"{tmp_path / 'math.jsonl'}:2:1" in err and "Traceback" not in err
