"""The lockfile: stable text, round trip, and `--locked` change detection."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from prunec.errors import LockError
from prunec.lock import check_lock, dumps, lock_data, lock_path_for, read_lock, write_lock
from prunec.plan.model import Budget, DomainSpec, ModelSpec, Plan, PruneSpec
from prunec.planning import solve
from prunec.scoring import LayerScores


def make_plan(tmp_path: Path, budget: int = 2, text: str = "spec") -> Plan:
    return Plan(
        spec_path=tmp_path / "tutor.prune",
        spec_text=text,
        model=ModelSpec(source="/models/tiny", local=True),
        domains=(DomainSpec(name="math", data=tmp_path / "m.jsonl", weight=2.0),),
        prune=PruneSpec(budget=Budget(layers=budget), strategy="domain"),
    )


def make_scores(data_fp: str = "d1", model_fp: str = "m1") -> LayerScores:
    base = LayerScores.from_importance({"math": [0.5, 0.1, 0.3, 0.05, 0.4, 0.6]})
    return dataclasses.replace(
        base,
        fingerprints={"model": model_fp, "data.math": data_fp, "settings": "s", "code": "1"},
    )


def test_path_beside_spec(tmp_path):
    assert lock_path_for(make_plan(tmp_path)) == tmp_path / "tutor.prune.lock"


def test_write_read_is_stable(tmp_path):
    plan, scores = make_plan(tmp_path), make_scores()
    selection = solve(plan, scores, 6)
    path = write_lock(lock_path_for(plan), plan, None, scores, selection)
    text = path.read_text()
    assert text == dumps(json.loads(text))  # canonical: sorted keys, fixed indent
    data = read_lock(path)
    assert data["selection"]["removed"] == list(selection.removed)
    assert data["inputs"]["data"] == {"math": "d1"} and data["inputs"]["model"] == "m1"
    assert set(data["versions"]) == {"prunec", "torch", "transformers"}
    assert data["scores"]["math"] == pytest.approx([0.5, 0.1, 0.3, 0.05, 0.4, 0.6])
    write_lock(path, plan, None, scores, selection)
    assert path.read_text() == text
    check_lock(path, plan, None, scores, selection)  # unchanged inputs pass


def test_spec_formatting_does_not_count(tmp_path):
    plan = make_plan(tmp_path)
    reformatted = make_plan(tmp_path, text="spec   # a comment")
    scores = make_scores()
    assert (
        lock_data(plan, None, scores, solve(plan, scores, 6))["inputs"]
        == lock_data(reformatted, None, scores, solve(reformatted, scores, 6))["inputs"]
    )


def test_check_lists_every_change(tmp_path):
    plan, scores = make_plan(tmp_path), make_scores()
    path = write_lock(lock_path_for(plan), plan, None, scores, solve(plan, scores, 6))
    changed_plan = make_plan(tmp_path, budget=3)
    changed_scores = make_scores(data_fp="d2", model_fp="m2")
    with pytest.raises(LockError) as err:
        check_lock(path, changed_plan, None, changed_scores, solve(changed_plan, changed_scores, 6))
    message = str(err.value)
    for part in (
        "spec: prune.budget.layers changed: 2 -> 3",
        "model weights",
        "calibration data of `math`",
        "selected layers",
    ):
        assert part in message


def test_missing_or_foreign_lock(tmp_path):
    with pytest.raises(LockError, match="does not exist"):
        read_lock(tmp_path / "nope.lock")
    (tmp_path / "x.lock").write_text("{}")
    with pytest.raises(LockError, match="not a version"):
        read_lock(tmp_path / "x.lock")


def test_heal_is_part_of_the_spec_and_recorded(tmp_path):
    from prunec.plan.model import HealSpec
    from prunec.planning.heal import HealRecord, RunHealing

    plan, scores = make_plan(tmp_path), make_scores()
    selection = solve(plan, scores, 6)
    assert not any(
        k.startswith("prune.heal") for k in lock_data(plan, None, scores, selection)["spec"]
    )
    path = write_lock(lock_path_for(plan), plan, None, scores, selection)
    healed_plan = plan.model_copy(
        update={"prune": plan.prune.model_copy(update={"heal": HealSpec(method="linear")})}
    )
    record = HealRecord(
        method="linear",
        ridge=1e-3,
        projection="mlp.down_proj",
        part="held_out",
        before=2.0,
        after=1.5,
        runs=(RunHealing((0,), None, "not healed"), RunHealing((3,), 2, "healed", 2.0, 1.5)),
    )
    healed = dataclasses.replace(selection, healing=record)
    with pytest.raises(LockError, match=re.escape("prune.heal.method changed: None -> 'linear'")):
        check_lock(path, healed_plan, None, scores, healed)
    data = lock_data(healed_plan, None, scores, healed)
    assert data["healing"]["runs"][1] == {
        "layers": [3],
        "corrected": 2,
        "status": "healed",
        "before": 2.0,
        "after": 1.5,
    }
    assert HealRecord.from_json(data["healing"]) == record
    assert type(healed).from_json(healed.to_json()) == healed
