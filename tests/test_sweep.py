"""`prunec sweep` and failing gates end to end on a tiny, briefly trained testbed."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from prunec.cli import main
from prunec.errors import ExitCode, VerifyError
from prunec.testbed import TrainConfig, ensure_testbed
from prunec.verify.sweep import SweepResult

TINY = TrainConfig(
    steps=20, batch_size=8, num_layers=4, hidden_size=32, calib_samples=8, eval_samples=12, warmup=5
)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return ensure_testbed(tmp_path_factory.mktemp("sweep") / "testbed", config=TINY)


def _spec(testbed: Any, path: Path, *, prune: str, verify: str, targets: str = "") -> Path:
    data = testbed.data
    path.write_text(
        f'model "{testbed.model}" {{\n  dtype float32\n}}\n'
        f'domain math {{\n  data "{data}/math_calib.jsonl"\n  samples 8\n  weight 0.7\n'
        f'  eval "{data}/math_eval.jsonl"\n}}\n'
        f'domain general {{\n  data "{data}/general_calib.jsonl"\n  samples 8\n  weight 0.3\n'
        f'  eval "{data}/general_eval.jsonl"\n}}\n'
        f"prune {{\n{prune}\n}}\nverify {{\n{verify}\n}}\n{targets}",
        encoding="utf-8",
    )
    return path


def _run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as ex:
        main(args)
    return int(ex.value.code or 0)


def test_sweep_writes_json_csv_png_and_a_table(
    testbed: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(
        testbed,
        tmp_path / "s.prune",
        prune="  budget 1 layers\n  strategy domain",
        verify="  math >= 50%",
    )
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--budgets", "1,2", "--strategies", "domain,last", "-o", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert _run(args) == 0
    table = capsys.readouterr().out
    assert "domain" in table and "last" in table and "retention" in table

    result = SweepResult.from_json(json.loads((out / "sweep.json").read_text()))
    assert result.num_layers == TINY.num_layers
    assert result.budgets == (1, 2) and result.strategies == ("domain", "last")
    assert set(result.domains) == {"math", "general"}
    assert len(result.rows) == 2 * 2 * 2
    last_two = result.point(2, "last", "math")
    assert last_two is not None and last_two.removed == (2, 3) and last_two.regime == "high"
    for row in result.rows:
        assert len(row.removed) == row.budget and not row.error
        base = result.original[row.domain]
        if base.accuracy > 0:
            assert row.retention_accuracy == pytest.approx(row.accuracy / base.accuracy)
        assert row.retention_nll == pytest.approx(base.nll / row.nll)
    with (out / "sweep.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert len(lines) == len(result.rows)
    assert {ln["strategy"] for ln in lines} == {"domain", "last"}
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sliced_sweep_reports_accuracy_per_task(testbed: Any, tmp_path: Path) -> None:
    """`slice_by` splits each domain's records (here by task); slices add up to the domain."""
    from prunec.arch.loading import load_model
    from prunec.scoring import score
    from prunec.syntax import load_spec
    from prunec.testbed.synth import task_set
    from prunec.verify.sweep import run_sweep

    spec = _spec(testbed, tmp_path / "s.prune", prune="  budget 1 layers", verify="  math >= 50%")
    plan = load_spec(spec)
    loaded = load_model(plan.model)
    scores = score(plan, loaded, cache_dir=tmp_path / "cache")
    tasks = task_set("demo")
    result = run_sweep(
        plan,
        loaded,
        scores,
        budgets=(1, 2),
        strategies=("last",),
        slice_by=lambda domain, record: tasks.task_of(domain, record.text),
    )
    records = {
        d: [json.loads(x) for x in testbed.eval(d).read_text().splitlines()] for d in tasks.tasks
    }
    for domain, lines in records.items():
        counts = {
            t: sum(tasks.task_of(domain, x["text"]) == t for x in lines)
            for t in tasks.tasks[domain]
        }
        present = {t for t, n in counts.items() if n}
        assert set(result.original_slices[domain]) == present
        for budget in (1, 2):
            row = result.point(budget, "last", domain)
            assert row is not None and set(row.slices) == present
            combined = sum(row.slices[t] * counts[t] for t in present) / len(lines)
            assert combined == pytest.approx(row.accuracy)
    again = SweepResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again.original_slices == result.original_slices and again.rows == result.rows


def test_infeasible_points_are_recorded_not_fatal(testbed: Any, tmp_path: Path) -> None:
    spec = _spec(
        testbed,
        tmp_path / "s.prune",
        prune="  budget 1 layers\n  keep first 1, last 1\n  strategy domain",
        verify="  math >= 50%",
    )
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--budgets", "1,3", "--strategies", "uniform", "-o", str(out)]
    assert _run([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    result = SweepResult.from_json(json.loads((out / "sweep.json").read_text()))
    bad = result.point(3, "uniform", "math")
    assert bad is not None and bad.error and math.isnan(bad.accuracy)
    good = result.point(1, "uniform", "math")
    assert good is not None and not good.error and good.removed[0] not in (0, 3)


def test_unknown_strategy_is_a_usage_error(
    testbed: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(testbed, tmp_path / "s.prune", prune="  budget 1 layers", verify="  math >= 50%")
    assert _run(["sweep", str(spec), "--strategies", "domian"]) == ExitCode.SPEC
    assert "did you mean `domain`" in capsys.readouterr().err


def test_failing_gate_publishes_nothing(testbed: Any, tmp_path: Path) -> None:
    from prunec.pipeline import build

    target = tmp_path / "pruned"
    spec = _spec(
        testbed,
        tmp_path / "g.prune",
        prune="  budget 2 layers\n  strategy last",
        # Cutting half of a 4-layer model raises the answer NLL: a 100% NLL gate must fail.
        verify="  math nll >= 100%",
        targets=f'target hf "{target}"\n',
    )
    with pytest.raises(VerifyError) as err:
        build(spec, write_lock=False, cache_dir=tmp_path / "cache")
    assert "FAIL" in err.value.report and "math" in err.value.report
    assert not target.exists()
    assert not any(p.name.startswith(".pruned") for p in tmp_path.iterdir())


def test_recipe_fingerprint_covers_every_field() -> None:
    base = TINY.fingerprint()
    for field in dataclasses.fields(TINY):
        value = getattr(TINY, field.name)
        changed = dataclasses.replace(TINY, **{field.name: value * 2 if value else 1})
        assert changed.fingerprint() != base, field.name


def test_sweep_compares_heal_none_and_linear(testbed: Any, tmp_path: Path) -> None:
    spec = _spec(testbed, tmp_path / "s.prune", prune="  budget 1 layers", verify="")
    out = tmp_path / "out"
    args = ["sweep", str(spec), "--budgets", "2", "--strategies", "last", "--heal", "-o", str(out)]
    assert _run([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    result = SweepResult.from_json(json.loads((out / "sweep.json").read_text()))
    assert result.strategies == ("last", "last+heal")
    plain, healed = result.point(2, "last", "math"), result.point(2, "last+heal", "math")
    assert plain is not None and healed is not None
    assert plain.removed == healed.removed == (2, 3)
    # Layer 1 carries the correction of run 2-3, kept only if it helped on held-out data:
    # the healed model is a different model, so its answers' likelihood differs.
    assert healed.nll != pytest.approx(plain.nll, rel=1e-6)
