"""`prunec plan SPEC --scores FILE`: planning from a file alone, no torch, spec-pointing errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prunec.cli import main
from prunec.errors import ExitCode

SPEC = """\
model "./no-model-needed"

domain math {{
  data   "math.jsonl"
  weight 0.7
}}

domain general {{
  data   "general.jsonl"
  weight 0.3
}}

prune {{
  budget   {budget} layers
  spacing  max_run 1
  keep     first 1, last 1
  strategy {strategy}
}}
"""


def write_case(tmp_path: Path, budget: int = 3, strategy: str = "domain") -> tuple[Path, Path]:
    spec = tmp_path / "tiny.prune"
    spec.write_text(SPEC.format(budget=budget, strategy=strategy))
    scores = tmp_path / "scores.json"
    math = [0.9, 0.2, 0.1, 0.8, 0.05, 0.7, 0.3, 0.6, 0.9, 0.95]
    general = [0.9, 0.1, 0.6, 0.5, 0.5, 0.2, 0.4, 0.1, 0.9, 0.95]
    scores.write_text(json.dumps({"domains": {"math": math, "general": general}}))
    return spec, scores


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


def test_plan_json_from_scores_file(tmp_path, capsys):
    spec, scores = write_case(tmp_path)
    code, out, _ = run_cli(["plan", str(spec), "--scores", str(scores), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    # combined = 0.7 math + 0.3 general: 0.17 (1) + 0.185 (4) + 0.33 (6), no two adjacent.
    assert result["removed"] == [1, 4, 6]
    assert result["regime"] == "moderate" and result["num_layers"] == 10
    assert set(result["domains"]) == {"math", "general"}


def test_plan_table(tmp_path, capsys):
    spec, scores = write_case(tmp_path)
    code, out, _ = run_cli(["plan", str(spec), "--scores", str(scores)], capsys)
    assert code == 0
    assert "regime moderate" in out and "removed: [1, 4, 6]" in out
    assert "math" in out and "general" in out and "combined" in out


def test_infeasible_points_at_spec(tmp_path, capsys):
    spec, scores = write_case(tmp_path, budget=6)
    code, _, err = run_cli(["plan", str(spec), "--scores", str(scores)], capsys)
    assert code == ExitCode.SPEC
    assert (
        "budget 6 with max_run 1 needs at least 11 layers between the kept ends (8 there); "
        "the model has 10" in err
    )
    assert f"{spec}:15:" in err and "spacing  max_run 1" in err  # quotes the spec line


def test_bad_scores_file(tmp_path, capsys):
    spec, scores = write_case(tmp_path)
    scores.write_text(json.dumps({"domains": {"math": [0.1, "x"]}}))
    code, _, err = run_cli(["plan", str(spec), "--scores", str(scores)], capsys)
    assert code == ExitCode.SPEC and "domains.math.importance[1]" in err


def test_plan_from_scores_does_not_import_torch(tmp_path):
    spec, scores = write_case(tmp_path)
    script = (
        "import sys\n"
        "from prunec.cli import main\n"
        "try:\n"
        f"    main(['plan', {str(spec)!r}, '--scores', {str(scores)!r}, '--json'])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "NO_TORCH" in proc.stderr
    assert json.loads(proc.stdout)["removed"] == [1, 4, 6]


def test_manual_plan_needs_only_the_config(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": 8}}))
    spec = tmp_path / "manual.prune"
    spec.write_text('model "./model"\n\nprune {\n  remove 2, 5\n}\n')
    code, out, err = run_cli(["plan", str(spec), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["removed"] == [2, 5] and result["num_layers"] == 8
    assert result["strategy"] == "manual" and result["regime"] == "moderate"
