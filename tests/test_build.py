"""`prunec build` end to end on a briefly trained testbed VLM: gates, lockfile, atomic targets."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from prunec.errors import ExitCode
from prunec.testbed import TrainConfig

#: Trained just enough that removing layers measurably hurts the answers' likelihood.
QUICK = TrainConfig(
    steps=40, batch_size=8, num_layers=6, hidden_size=32, calib_samples=8, eval_samples=8
)

SPEC = """\
model "{model}"

domain math {{
  data "{data}/math_calib.jsonl"
  eval "{data}/math_eval.jsonl"
  weight 0.7
}}

domain general {{
  data "{data}/general_calib.jsonl"
  weight 0.3
}}

prune {{
  {selection}
  keep first 1, last 1
}}

verify {{
  {gate}
}}

target hf "out/hf"
"""


@pytest.fixture(scope="module")
def testbed(quick_testbed: Any) -> Any:
    assert quick_testbed.info["config"] == asdict(QUICK)  # the shared session testbed
    return quick_testbed


def _spec(tmp_path: Path, testbed: Any, selection: str, gate: str) -> Path:
    spec = tmp_path / "tutor.prune"
    spec.write_text(
        SPEC.format(model=testbed.model, data=testbed.data, selection=selection, gate=gate)
    )
    return spec


def _run(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_build_scores_plans_publishes_and_locks(
    testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(tmp_path, testbed, "budget 2 layers\n  strategy domain", "math nll >= 1%")
    assert _run("build", str(spec)) == ExitCode.OK
    err = capsys.readouterr().err
    assert "verify: retention" in err and "Traceback" not in err

    config = json.loads((tmp_path / "out" / "hf" / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == QUICK.num_layers - 2
    # Scored and gated, yet streamed from the source's shards, then fully reloaded.
    manifest = json.loads((tmp_path / "out" / "hf" / "prunec-manifest.json").read_text())
    assert manifest["mode"] == "streaming" and "streamed, reload max |Δlogit|" in err
    lock = json.loads((tmp_path / "tutor.prune.lock").read_text())
    removed = lock["selection"]["removed"]
    assert len(removed) == 2 and 0 not in removed and QUICK.num_layers - 1 not in removed

    # The same inputs pass --locked; a changed budget is named and nothing is rebuilt.
    stamp = (tmp_path / "out" / "hf" / "prunec-manifest.json").stat().st_mtime_ns
    spec.write_text(spec.read_text().replace("budget 2 layers", "budget 3 layers"))
    assert _run("build", str(spec), "--locked") == ExitCode.LOCK
    assert "no longer match" in capsys.readouterr().err
    assert (tmp_path / "out" / "hf" / "prunec-manifest.json").stat().st_mtime_ns == stamp


def test_failed_gate_publishes_nothing_and_keeps_the_earlier_target(
    testbed: Any, tmp_path: Path, capsys: Any
) -> None:
    earlier = tmp_path / "out" / "hf"
    earlier.mkdir(parents=True)
    (earlier / "config.json").write_text('{"earlier": true}')
    (earlier / "prunec-manifest.json").write_text('{"prunec_version": "0.1.0"}')  # ours
    # Removing four of six layers cannot keep 100% of the answers' likelihood.
    spec = _spec(tmp_path, testbed, "remove 1, 2, 3, 4", "math nll >= 100%")
    assert _run("build", str(spec), "--no-lock") == ExitCode.VERIFY
    err = capsys.readouterr().err
    assert "error[verify]" in err and "fail" in err and "Traceback" not in err
    assert json.loads((earlier / "config.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in earlier.parent.iterdir()) == ["hf"]  # no staging leftovers
    assert not (tmp_path / "tutor.prune.lock").exists()


def test_missing_data_is_a_spec_error_before_loading(
    testbed: Any, tmp_path: Path, capsys: Any
) -> None:
    spec = _spec(tmp_path, testbed, "budget 1 layer", "math >= 50%")
    spec.write_text(spec.read_text().replace("general_calib.jsonl", "missing.jsonl"))
    assert _run("build", str(spec)) == ExitCode.SPEC
    err = capsys.readouterr().err
    assert "error[E310]: data file" in err and "missing.jsonl" in err and "^" in err
    assert "loaded" not in err  # failed before the model was loaded
