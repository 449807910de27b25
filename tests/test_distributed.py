"""Scaling out and up: data-parallel builds over torch.distributed, and `device auto` offload.

`python -m torch.distributed.run --nproc_per_node 2 -m prunec build SPEC` (two real processes
on the gloo backend, CPU) must give the scores and the measured search of one process (same
candidates, same values within float tolerance), written once, by rank 0; a failure on one
rank must stop both with a message naming it. A model that does not fit the memory it is
given (`device auto`, `$PRUNEC_MAX_MEMORY`) runs with part of its layers on disk and scores
and measures as if held whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prunec.lock import lock_path_for, read_lock

SPEC = """\
model "{model}" {{
  dtype float32
}}

domain math {{
  data    "math.jsonl"
  weight  0.6
}}

domain general {{
  data    "general.jsonl"
  weight  0.4
}}

prune {{
  budget     1 layer
  keep       first 1
  batch_size 2
  search     6
}}

target hf "out/hf"
"""

WORDS = ("three", "two", "four", "one", "six", "five", "nine")


def _torchrun(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]),
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PRUNEC_CACHE_DIR": str(cwd / "cache"),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def spec(tiny_model: Any, tmp_path: Path) -> Path:
    # 7 + 6 records in batches of 2: both parts of both domains shard unevenly over 2 ranks.
    rows = [{"text": f"two plus {w} equals", "answer": "five"} for w in WORDS]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"text": f"what is the {w} red circle {w}"} for w in WORDS[:6]]
    (tmp_path / "general.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "tiny.prune"
    path.write_text(SPEC.format(model=tiny_model("llama", num_layers=5)))
    return path


def test_two_processes_score_and_search_like_one(spec: Path, tmp_path: Path) -> None:
    from prunec.arch.loading import load_model
    from prunec.planning import SearchContext, solve
    from prunec.scoring import score
    from prunec.syntax import load_spec

    run = _torchrun(["-m", "prunec", "build", str(spec)], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    # Rank 0 alone reports and publishes; it says the work was shared.
    assert run.stderr.count("over 2 processes") == 1, run.stderr
    assert run.stderr.count("selected layers to remove") == 1
    assert run.stderr.count("built 5 -> 4 decoder layers") == 1
    assert (tmp_path / "out" / "hf" / "config.json").is_file()
    lock = read_lock(lock_path_for(load_spec(spec)))

    # The same spec in this one process, computed afresh in another cache.
    plan = load_spec(spec)
    loaded = load_model(plan.model)
    single = score(plan, loaded, cache_dir=tmp_path / "single")
    (written,) = (tmp_path / "cache" / "scores").iterdir()  # one entry, by rank 0
    stamp = written.stat().st_mtime_ns
    shared = score(plan, loaded, cache_dir=tmp_path / "cache")  # read back, not recomputed
    assert written.stat().st_mtime_ns == stamp and len(list(written.parent.iterdir())) == 1
    assert shared.fingerprints == single.fingerprints
    for name, stats in single.domains.items():
        other = shared.domains[name]
        assert (other.tokens, other.samples) == (stats.tokens, stats.samples)
        for field in ("cos_all", "cos_last", "angular_all", "angular_last"):
            assert getattr(other, field) == pytest.approx(getattr(stats, field), rel=1e-6), field
        got = [v for row in other.pair_angular_last for v in row]
        want = [v for row in stats.pair_angular_last for v in row]
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)

    context = SearchContext(plan, loaded, cache_dir=tmp_path / "single", progress=False)
    selection = solve(plan, single, loaded.num_layers, context=context)
    assert selection.search is not None
    expected = selection.search.to_json()
    searched = lock["search"]
    assert list(lock["selection"]["removed"]) == list(selection.removed)
    assert [c["removed"] for c in searched["candidates"]] == [
        c["removed"] for c in expected["candidates"]
    ]
    for got, want in zip(searched["candidates"], expected["candidates"], strict=True):
        assert got["complete"] == want["complete"]
        if want["complete"]:  # an incomplete value is only a lower bound above the best
            assert got["search"] == pytest.approx(want["search"], rel=1e-5)
        if want.get("held_out") is not None:
            assert got["held_out"] == pytest.approx(want["held_out"], rel=1e-5)
    assert searched["unpruned"] == pytest.approx(expected["unpruned"], abs=1e-6)


WORKER = """\
from prunec.distributed import group
from prunec.errors import BuildError

g = group()
total = g.run_and_sum("adding", 2, lambda: [g.rank + 1.0, 0.5])
print(f"sum on rank {g.rank}:", total.tolist())


def share():
    if g.rank == 1:
        raise BuildError("the batch at calib.jsonl:3 is broken")
    return [1.0]


try:
    g.run_and_sum("scoring", 1, share)
except BuildError as err:
    print(f"error on rank {g.rank}: {err}")
    raise SystemExit(3)
"""


def test_a_failure_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run = _torchrun(["--tee", "3", str(script)], tmp_path, timeout=60)
    out = run.stdout
    assert run.returncode != 0
    assert "sum on rank 0: [3.0, 1.0]" in out and "sum on rank 1: [3.0, 1.0]" in out, out
    assert "error on rank 1: the batch at calib.jsonl:3 is broken" in out, out
    assert "error on rank 0: scoring failed on rank 1 of 2" in out, out


def test_device_auto_offloads_to_disk_and_measures_the_same(
    spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prunec.arch.loading import load_model
    from prunec.planning import MeasuredObjective
    from prunec.scoring import score
    from prunec.syntax import load_spec

    plan = load_spec(spec)
    size = sum(p.stat().st_size for p in Path(plan.model.source).glob("*.safetensors"))
    held = load_model(plan.model)
    offloaded_plan = plan.model_copy(
        update={"model": plan.model.model_copy(update={"device": "auto"})}
    )
    monkeypatch.setenv("PRUNEC_OFFLOAD_DIR", str(tmp_path))
    monkeypatch.setenv("PRUNEC_MAX_MEMORY", f"cpu={size // 2000}KB")  # half the weights
    offloaded = load_model(offloaded_plan.model)
    placement = offloaded.model.hf_device_map
    assert "cpu" in placement.values() and "disk" in placement.values(), placement

    want = score(plan, held, cache_dir=tmp_path / "held")
    got = score(offloaded_plan, offloaded, cache_dir=tmp_path / "offloaded")
    for name, stats in want.domains.items():
        assert got.domains[name].cos_all == pytest.approx(stats.cos_all, rel=1e-5)
        assert got.domains[name].angular_last == pytest.approx(stats.angular_last, rel=1e-5)
    for removed in [(), (2,), (1, 3)]:
        a = MeasuredObjective.from_plan(plan, held).evaluate(removed)
        b = MeasuredObjective.from_plan(offloaded_plan, offloaded).evaluate(removed)
        assert b.value == pytest.approx(a.value, rel=1e-5, abs=1e-7), removed


def test_max_memory_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunec.arch.loading import max_memory
    from prunec.errors import BuildError

    monkeypatch.setenv("PRUNEC_MAX_MEMORY", "0=20GiB, cpu=64GiB")
    assert max_memory() == {0: "20GiB", "cpu": "64GiB"}
    monkeypatch.setenv("PRUNEC_MAX_MEMORY", "gpu0=20GiB")
    with pytest.raises(BuildError, match="not DEVICE=SIZE"):
        max_memory()
