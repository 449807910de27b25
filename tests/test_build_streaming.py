"""`prunec build` streams manual selections shard by shard, never loading weights itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prunec.arch import remove_layers
from prunec.arch.loading import load_model
from prunec.pipeline import can_stream
from prunec.plan.model import ModelSpec
from prunec.syntax import load_spec

SPEC = 'model "{model}"\n\nprune {{\n  remove 1, 4\n}}\n\ntarget hf "out"\n'
RUN_BUILD = """
import sys
from prunec.cli import main
try:
    main(["build", sys.argv[1]])
except SystemExit as exit:
    assert not exit.code, exit.code
assert "torch" not in sys.modules, "the streaming build imported torch"
"""


def test_streaming_build_matches_in_memory_surgery(tiny_model, tmp_path: Path) -> None:
    source = tiny_model("llama")
    spec = tmp_path / "stream.prune"
    spec.write_text(SPEC.format(model=source))
    assert can_stream(load_spec(spec))

    proc = subprocess.run(
        [sys.executable, "-c", RUN_BUILD, str(spec)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "streamed, self-checked" in proc.stderr

    out = tmp_path / "out"
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    manifest = json.loads((out / "prunec-manifest.json").read_text())
    assert manifest["mode"] == "streaming"
    streamed = load_file(out / "model.safetensors")

    loaded = load_model(ModelSpec(source=str(source), local=True))
    remove_layers(loaded.model, [1, 4])
    expected = loaded.model.state_dict()
    assert set(streamed) <= set(expected)
    assert set(expected) - set(streamed) <= {"lm_head.weight"}  # tied weights are not saved
    for name, tensor in streamed.items():
        assert torch.equal(tensor, expected[name]), name


def test_gates_or_scoring_take_the_in_memory_path(tiny_model, tmp_path: Path) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text(
        SPEC.format(model=tiny_model("llama")).replace("remove 1, 4", "budget 2 layers")
    )
    spec.write_text(spec.read_text().replace("prune {", 'domain d { data "d.jsonl" }\n\nprune {'))
    assert not can_stream(load_spec(spec))


def test_light_check_rejects_a_checkpoint_that_computes_differently(
    tiny_model, tmp_path: Path
) -> None:
    from prunec.backends.hf.stream import pruned_layout, stream_prune_checkpoint
    from prunec.backends.hf.stream_check import light_check
    from prunec.errors import BuildError

    source, out = tiny_model("qwen2"), tmp_path / "out"
    layout = pruned_layout(source, [1, 4])
    with light_check(layout, source, out) as check:
        assert check.payload["source_layers"] == 3 and check.payload["kept_layers"] == 2
        stream_prune_checkpoint(source, out, [1, 4])
        config = json.loads((out / "config.json").read_text())
        config["rms_norm_eps"] = 0.5  # loads fine, names and shapes fine, numbers wrong
        (out / "config.json").write_text(json.dumps(config))
        with pytest.raises(BuildError, match=r"first 2 layers differ from the source's first 3"):
            check.finish(1e-4)
