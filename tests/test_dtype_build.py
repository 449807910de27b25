"""`prunec build` on a bf16 checkpoint: calibration computes in float32, the artifact keeps the
checkpoint's bytes (streamed), `target hf { dtype ... }` converts, and the self-checks use
tolerances for the dtypes they compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from tiny_models import WORDS, to_bfloat16

from prunec.backends.hf import emit as hf_emit
from prunec.backends.hf.emit import compared_dtypes, light_dtypes, tolerance
from prunec.errors import ExitCode

KEPT = {0: 0, 1: 2, 2: 3, 3: 5}  # new -> old decoder index when layers 1 and 4 go

SCORED = """\
model "{model}" {{
  dtype {dtype}
}}

domain chat {{
  data "calib.jsonl"
  eval "calib.jsonl"
}}

prune {{
  budget   2 layers
  strategy bi
  keep     first 1, last 1
}}

verify {{
  chat nll >= 1%
}}

target hf "out"
"""


@pytest.fixture(scope="module")
def bf16_llama(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_bfloat16(tiny_model("llama"), tmp_path_factory.mktemp("bf16") / "llama")


def _run(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _raw_tensors(folder: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (safetensors dtype code, raw bytes) of every tensor in a checkpoint folder."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = handle.get_tensor(name)
                out[name] = (str(tensor.dtype), tensor.view(torch.uint8).numpy().tobytes())
    return out


def _old_name(name: str, new_to_old: dict[int, int]) -> str:
    parts = name.split(".")
    if "layers" in parts:
        at = parts.index("layers") + 1
        parts[at] = str(new_to_old[int(parts[at])])
    return ".".join(parts)


@pytest.mark.parametrize(("dtype", "check"), [("float32", "full"), ("auto", "light")])
def test_bf16_checkpoint_keeps_bf16_bytes_whatever_calibration_computes_in(
    bf16_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    dtype: str,
    check: str,
) -> None:
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    if check == "light":  # as if the artifact did not fit beside what the build holds
        monkeypatch.setattr(hf_emit, "fits_in_memory", lambda size: False)
    lines = [" ".join(WORDS[(i * 7 + j) % 30] for j in range(12)) for i in range(6)]
    records = [{"text": t, "answer": WORDS[i]} for i, t in enumerate(lines)]
    (tmp_path / "calib.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = tmp_path / "s.prune"
    spec.write_text(SCORED.format(model=bf16_llama, dtype=dtype))
    assert _run("build", str(spec)) == ExitCode.OK
    err = capsys.readouterr().err
    assert "bfloat16 weights, computing in float32" in err
    assert ("light check: bytes match the source" in err) == (check == "light")
    assert ("reload max |Δlogit|" in err) == (check == "full")

    out = tmp_path / "out"
    removed = json.loads((tmp_path / "s.prune.lock").read_text())["selection"]["removed"]
    kept = [i for i in range(6) if i not in removed]
    source, written = _raw_tensors(bf16_llama), _raw_tensors(out)
    assert written and all(code == "torch.bfloat16" for code, _ in written.values())
    for name, value in written.items():  # byte for byte the source's tensor
        assert value == source[_old_name(name, dict(enumerate(kept)))], name
    manifest = json.loads((out / "prunec-manifest.json").read_text())
    assert manifest["mode"] == "streaming" and manifest["dtype"] == "source"
    size = sum(len(v) for _, v in written.values())
    layer_free = sum(len(v) for n, (_, v) in source.items() if ".layers." not in n)
    per_layer = (sum(len(v) for _, v in source.values()) - layer_free) / 6
    assert size == layer_free + per_layer * 4  # 4 of 6 layers' bytes, in bf16: no float32 copy


def test_hf_target_dtype_converts_a_streamed_build(bf16_llama: Path, tmp_path: Path) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text(
        f'model "{bf16_llama}"\n\nprune {{\n  remove 1, 4\n}}\n\n'
        'target hf "out" {\n  dtype float32\n}\n'
    )
    assert _run("build", str(spec), "--no-lock") == ExitCode.OK
    source = _raw_tensors(bf16_llama)
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as handle:
        for name in handle.keys():  # noqa: SIM118
            tensor = handle.get_tensor(name)
            _, raw = source[_old_name(name, KEPT)]
            original = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor.flatten(), original.float()), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float32"


def test_self_check_tolerance_follows_the_compared_dtypes() -> None:
    # float32 arithmetic on both sides from the same bf16 weights: float32 tolerance.
    assert compared_dtypes("float32", "bfloat16", "bfloat16") == {"float32"}
    assert tolerance(compared_dtypes("float32", "bfloat16", "bfloat16")) == 1e-4
    # bf16 arithmetic in the reference: bf16 tolerance.
    assert tolerance(compared_dtypes("bfloat16", "bfloat16", "bfloat16")) == 6e-2
    # Widening the artifact changes no weight; narrowing it does.
    assert compared_dtypes("float32", "bfloat16", "float32") == {"float32"}
    assert compared_dtypes("float32", "float32", "bfloat16") == {"float32", "bfloat16"}
    assert tolerance(compared_dtypes("float32", "bfloat16", "float16")) == 3e-2
    assert light_dtypes("bfloat16", None) == {"float32"}
    assert light_dtypes("bfloat16", "float32") == {"float32"}
    assert light_dtypes("float32", "float16") == {"float32", "float16"}
