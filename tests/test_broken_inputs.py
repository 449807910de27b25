"""A corpus of broken inputs walked through the CLI: every one is a clear error with the right
exit code, naming what is broken; never a traceback, never an "internal error"."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prunec.errors import ExitCode

#: Streams (manual `remove`, hf target only): nothing but the files is read by prunec itself.
STREAM = 'model "./model"\nprune {{ remove 1 }}\ntarget hf "{target}"\n'
#: Loads the model in memory (scoring needs it).
LOADED = 'model "./model"\ndomain d {{ data "d.jsonl" }}\nprune {{ budget 1 layer }}\ntarget hf "{target}"\n'


def _truncate(name: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / "model" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return go


def _write(rel: str, data: bytes | str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return go


def _remove(rel: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        (root / rel).unlink()

    return go


def _config(**changes: Any) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / "model" / "config.json"
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        path.write_text(json.dumps(config))

    return go


def _foreign_target(root: Path) -> None:
    (root / "out").mkdir()
    (root / "out" / "keep.txt").write_text("mine")


def _target_parent_is_a_file(root: Path) -> None:
    (root / "blocker").write_text("x")


#: id -> (spec template, how to break the inputs, target path, exit code, text expected).
CASES: dict[str, tuple[str, Callable[[Path], None], str, ExitCode, str]] = {
    # models, streamed and loaded
    "stream-truncated-shard": (
        STREAM,
        _truncate("model.safetensors"),
        "out",
        ExitCode.BUILD,
        "model.safetensors is truncated",
    ),
    "load-truncated-shard": (
        LOADED,
        _truncate("model.safetensors"),
        "out",
        ExitCode.BUILD,
        "model.safetensors is truncated",
    ),
    "stream-garbage-shard": (
        STREAM,
        _write("model/model.safetensors", b"\x20" + b"\0" * 7 + b"{oops"),
        "out",
        ExitCode.BUILD,
        "model.safetensors",
    ),
    "load-empty-shard": (
        LOADED,
        _write("model/model.safetensors", b""),
        "out",
        ExitCode.BUILD,
        "not a safetensors file",
    ),
    "load-invalid-config": (
        LOADED,
        _write("model/config.json", "{ not json"),
        "out",
        ExitCode.BUILD,
        "config.json is not valid JSON",
    ),
    "stream-invalid-config": (
        STREAM,
        _write("model/config.json", "[1, 2"),
        "out",
        ExitCode.BUILD,
        "config.json",
    ),
    "load-missing-config": (
        LOADED,
        _remove("model/config.json"),
        "out",
        ExitCode.BUILD,
        "config.json does not exist",
    ),
    "load-no-model-type": (LOADED, _config(model_type=None), "out", ExitCode.BUILD, "config.json"),
    "load-bad-field-type": (
        LOADED,
        _config(hidden_size="wide"),
        "out",
        ExitCode.BUILD,
        "config.json",
    ),
    "load-missing-weights": (
        LOADED,
        _remove("model/model.safetensors"),
        "out",
        ExitCode.BUILD,
        "model",
    ),
    "load-bad-index": (
        LOADED,
        _write("model/model.safetensors.index.json", '{"weight_map": {"a": "gone.safetensors"}}'),
        "out",
        ExitCode.BUILD,
        "gone.safetensors",
    ),
    # data
    "data-invalid-json": (
        LOADED,
        _write("d.jsonl", '{"text": "a"}\n{"text": \n'),
        "out",
        ExitCode.SPEC,
        "d.jsonl:2",
    ),
    "data-not-utf8": (
        LOADED,
        _write("d.jsonl", b'{"text": "caf\xe9"}\n'),
        "out",
        ExitCode.SPEC,
        "d.jsonl",
    ),
    "data-empty": (LOADED, _write("d.jsonl", ""), "out", ExitCode.SPEC, "d.jsonl"),
    "data-missing-image": (
        LOADED,
        _write("d.jsonl", '{"text": "a", "image": "nope.png"}\n'),
        "out",
        ExitCode.SPEC,
        "d.jsonl:1",
    ),
    # targets
    "target-foreign-folder": (STREAM, _foreign_target, "out", ExitCode.SPEC, "error[E313]"),
    "target-is-the-model": (STREAM, lambda root: None, "model", ExitCode.SPEC, "error[E312]"),
    "target-holds-the-data": (LOADED, lambda root: None, ".", ExitCode.SPEC, "error[E312]"),
    "target-is-a-file": (STREAM, _write("out", "x"), "out", ExitCode.SPEC, "error[E313]"),
    "target-parent-is-a-file": (
        STREAM,
        _target_parent_is_a_file,
        "blocker/out",
        ExitCode.BUILD,
        "cannot write target",
    ),
    "target-under-proc": (
        STREAM,
        lambda root: None,
        "/proc/prunec-test/out",
        ExitCode.BUILD,
        "cannot write target",
    ),
    # the spec itself
    "spec-not-utf8": (STREAM, lambda root: None, "caf\udce9", ExitCode.SPEC, "error[E106]"),
}


@pytest.fixture(scope="module")
def source(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llama", num_layers=4)


def _cli(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_gives_a_clear_error(
    case: str, source: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    template, breaker, target, code, text = CASES[case]
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(source, tmp_path / "model")
    (tmp_path / "d.jsonl").write_text('{"text": "what is in the image ?"}\n')
    breaker(tmp_path)
    spec = tmp_path / "s.prune"
    spec.write_bytes(template.format(target=target).encode("utf-8", "surrogateescape"))

    for command in (("check",), ("build", "--no-lock")):
        rc = _cli(*command, str(spec))
        err = capsys.readouterr().err
        assert "Traceback" not in err and "internal error" not in err, err
        if command == ("check",):
            # check sees the spec, its files and the targets; broken weights are build's.
            assert rc in (ExitCode.OK, ExitCode.SPEC), err
            continue
        assert rc == code, err
        assert text in err, err
