"""Targets never destroy what prunec did not write: foreign folders, files and the model's own
folder are refused before any work, builds of one target never overlap, SIGTERM and dead builds
leave nothing behind, and published folders follow the umask."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prunec.backends.atomic import MANIFEST, publish, staging_directory, target_lock
from prunec.errors import BuildError, ExitCode

SPEC = 'model "{model}"\n\nprune {{\n  remove 1, 4\n}}\n\ntarget hf "{target}"\n'


def _run(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _spec(tmp_path: Path, model: Path, target: str = "out") -> Path:
    spec = tmp_path / "s.prune"
    spec.write_text(SPEC.format(model=model, target=target))
    return spec


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def test_foreign_folder_is_refused_by_check_and_build_unless_forced(
    tiny_model: Any, tmp_path: Path, capsys: Any
) -> None:
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "results.csv").write_text("not prunec's\n")
    spec = _spec(tmp_path, tiny_model("llama"))

    assert _run("check", str(spec)) == ExitCode.SPEC
    assert "error[E313]" in capsys.readouterr().err
    assert _run("build", str(spec)) == ExitCode.SPEC
    err = capsys.readouterr().err
    assert "error[E313]" in err and "s.prune:7:" in err and "--force" in err
    assert _tree(foreign) == {"results.csv": b"not prunec's\n"}

    assert _run("build", str(spec), "--force", "--no-lock") == ExitCode.OK
    assert (foreign / MANIFEST).is_file() and not (foreign / "results.csv").exists()
    # What prunec published it may replace again, without --force.
    assert _run("build", str(spec), "--no-lock") == ExitCode.OK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.prune"]  # nothing left over


@pytest.mark.parametrize("where", ["model", "model_parent", "file", "data_folder"])
def test_target_may_not_be_the_model_a_file_or_hold_the_data(
    tiny_model: Any, tmp_path: Path, where: str, capsys: Any
) -> None:
    import shutil

    model = tmp_path / "models" / "llama"
    shutil.copytree(tiny_model("llama"), model)
    (tmp_path / "notes.txt").write_text("mine")
    data = tmp_path / "data"
    data.mkdir()
    (data / "calib.jsonl").write_text('{"text": "hi"}\n')
    target = {
        "model": "models/llama",
        "model_parent": "models",
        "file": "notes.txt",
        "data_folder": "data",
    }[where]
    spec = tmp_path / "s.prune"
    spec.write_text(
        f'model "./models/llama"\ndomain d {{ data "data/calib.jsonl" }}\n'
        f'prune {{ remove 1 }}\ntarget hf "{target}"\n'
    )
    before = _tree(tmp_path)
    assert _run("build", str(spec)) == ExitCode.SPEC
    err = capsys.readouterr().err
    assert ("error[E312]" in err) != (where == "file") and "Traceback" not in err
    assert "s.prune:4:11" in err
    assert _tree(tmp_path) == before  # nothing was written, nothing was lost


def test_unwritable_target_fails_before_the_model_loads(
    tiny_model: Any, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    spec = _spec(tmp_path, tiny_model("llama"), "blocker/out")
    spec.write_text(spec.read_text().replace("remove 1, 4", "budget 2 layers"))
    spec.write_text(spec.read_text().replace("prune {", 'domain d { data "d.jsonl" }\nprune {'))
    (tmp_path / "d.jsonl").write_text('{"text": "hello there"}\n')
    assert _run("build", str(spec)) == ExitCode.BUILD
    err = capsys.readouterr().err
    assert "cannot write target" in err and "blocker" in err and "loaded" not in err


def test_a_second_build_of_the_same_target_fails_at_once(tiny_model: Any, tmp_path: Path) -> None:
    spec = _spec(tmp_path, tiny_model("llama"))
    with target_lock(tmp_path / "out"):
        proc = subprocess.run(
            [sys.executable, "-m", "prunec.cli", "build", str(spec)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == ExitCode.BUILD, proc.stderr
    assert f"another prunec build (pid {os.getpid()}) is writing" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_leftovers_of_dead_builds_are_removed_and_reported(
    tiny_model: Any, tmp_path: Path, capsys: Any
) -> None:
    for name in (".out.prunec-staging-x1y2", ".out.tmp-abc"):  # current and older naming
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    spec = _spec(tmp_path, tiny_model("llama"))
    assert _run("build", str(spec), "--no-lock") == ExitCode.OK
    err = capsys.readouterr().err
    assert err.count("left by an interrupted build") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "s.prune"]


def test_a_publish_killed_between_its_renames_is_restored(tmp_path: Path) -> None:
    target = tmp_path / "out"
    aside = tmp_path / ".out.prunec-staging-old-4242"  # what `publish` renames aside
    aside.mkdir()
    (aside / MANIFEST).write_text('{"prunec_version": "x"}')
    said: list[str] = []
    with target_lock(target, said.append):
        pass
    assert (target / MANIFEST).is_file() and not aside.exists()
    assert said and "restored" in said[0]


def test_publish_refuses_foreign_folders_and_files(tmp_path: Path) -> None:
    for make in (lambda p: p.write_text("x"), lambda p: (p.mkdir(), (p / "a").write_text("a"))):
        target = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        make(target)
        with staging_directory(target) as staged, pytest.raises(BuildError, match="refusing"):
            publish(staged, target)
        assert target.exists()


def test_published_folders_follow_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "out"
    old = os.umask(0o027)
    try:
        with staging_directory(target) as staged:
            (staged / "sub").mkdir()
            (staged / "sub" / "f.json").write_text("{}")
            os.chmod(staged / "sub" / "f.json", 0o444)  # a read-only source file copied in
            publish(staged, target)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert stat.S_IMODE((target / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((target / "sub" / "f.json").stat().st_mode) == 0o640


#: A child build that stops inside emission (staging written, nothing published) and says so.
SLOW_BUILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal session
from pathlib import Path
import prunec.backends.hf.stream as stream
real = stream.stream_prune_checkpoint
def slow(*args, **kwargs):
    report = real(*args, **kwargs)
    Path(sys.argv[2]).write_text("staged")
    time.sleep(60)
    return report
stream.stream_prune_checkpoint = slow
from prunec.cli import main
main(["build", sys.argv[1]])
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_remove_staging_and_keep_the_earlier_target(
    tiny_model: Any, tmp_path: Path, sig: signal.Signals
) -> None:
    earlier = tmp_path / "out"
    earlier.mkdir()
    (earlier / MANIFEST).write_text(json.dumps({"prunec_version": "earlier"}))
    spec = _spec(tmp_path, tiny_model("llama"))
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(spec), str(ready)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), proc.stderr.read() if proc.stderr else ""
    assert any(p.name.startswith(".out.prunec-staging-") for p in tmp_path.iterdir())
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    expected = ExitCode.TERMINATED if sig == signal.SIGTERM else ExitCode.INTERRUPTED
    assert proc.returncode == expected, err
    assert "targets were left as they were" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ready", "s.prune"]
    assert _tree(earlier) == {MANIFEST: b'{"prunec_version": "earlier"}'}
