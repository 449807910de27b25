"""Streaming emission: safetensors shards pruned on disk reload as the skipped original, equal
what `save_pretrained` of the pruned model would write, and keep bytes, dtypes and digests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import SPECS, TINY_TYPES, load_processor, sample_inputs

import prunec.backends.hf.stream as stream
from prunec.arch import remove_layers, skip_layers
from prunec.arch.loading import load_model
from prunec.backends.hf.emit import finish_hf, prepare_hf
from prunec.backends.hf.stream import read_header, stream_prune_checkpoint, verify_digests
from prunec.errors import BuildError
from prunec.plan.model import ModelSpec

REMOVE = [1, 4]


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_streamed_checkpoint_matches_skipped_original(
    tiny_model, tmp_path: Path, model_type: str
) -> None:
    import transformers

    model_class = getattr(transformers, SPECS[model_type].model_class)
    source = tiny_model(model_type)
    model = model_class.from_pretrained(source).eval()
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    for path in source.glob("tokenizer*"):
        shutil.copy(path, sharded / path.name)
    inputs = sample_inputs(model_type, load_processor(model_type, source))
    with torch.no_grad(), skip_layers(model, REMOVE):
        reference = model(**inputs).logits
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 2

    out = tmp_path / "out"
    report = stream_prune_checkpoint(sharded, out, REMOVE)
    assert report.layer_map == {0: 0, 2: 1, 3: 2, 5: 3} and report.tensors_dropped > 0
    reloaded, info = model_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, reference, rtol=0, atol=1e-5)
    reloaded.generate(**inputs, max_new_tokens=2, do_sample=False)
    names = [n for s in out.glob("*.safetensors") for n in read_header(s)[0]]
    assert not any(".layers.4." in n or ".layers.5." in n for n in names)  # renumbered 0..3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {n for n in names if n != "__metadata__"}
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()


def test_streaming_rejects_bad_input(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"valid indices are 0\.\.5"):
        stream_prune_checkpoint(tiny_model("llama"), tmp_path / "a", [9])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BuildError, match="no safetensors weights"):
        stream_prune_checkpoint(empty, tmp_path / "b", [1])


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_streamed_emission_equals_save_pretrained(
    tiny_model, tmp_path: Path, model_type: str
) -> None:
    """What the in-memory path writes (after scoring, gates, surgery) is what
    `save_pretrained` of the pruned model would have written, tensor for tensor."""
    loaded = load_model(ModelSpec(source=str(tiny_model(model_type)), local=True))
    remove_layers(loaded.model, REMOVE)
    loaded.model.save_pretrained(tmp_path / "saved")
    prepared = prepare_hf(loaded, REMOVE, tmp_path / "streamed", source="tiny")
    assert prepared.source_dir == tiny_model(model_type)  # streamed, not saved from memory
    report = finish_hf(prepared, tmp_path / "streamed", self_check=False)
    assert report.streamed and report.check == "none"

    saved, streamed = _tensors(tmp_path / "saved"), _tensors(tmp_path / "streamed")
    assert set(streamed) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(streamed[name], tensor), name
    config = json.loads((tmp_path / "streamed" / "config.json").read_text())
    assert config.get("text_config", config)["num_hidden_layers"] == 4


def test_kernel_copy_fallback_changed_tensors_and_digests(
    tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_model("llama")
    monkeypatch.setattr(stream, "BLOCK", 4096)  # many blocks, a partial one at each end
    first = stream_prune_checkpoint(source, tmp_path / "kernel", REMOVE)

    def unsupported(*args: object) -> int:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(stream.os, "copy_file_range", unsupported)
    new_weight = torch.full((64, 128), 0.5)
    second = stream_prune_checkpoint(
        source,
        tmp_path / "mapped",
        REMOVE,
        changed={"model.layers.2.mlp.down_proj.weight": new_weight.T.contiguous().T},
    )
    a, b = _tensors(tmp_path / "kernel"), _tensors(tmp_path / "mapped")
    assert set(a) == set(b)
    for name in a:
        if name != "model.layers.2.mlp.down_proj.weight":
            assert torch.equal(a[name], b[name]), name
    assert torch.equal(b["model.layers.2.mlp.down_proj.weight"], new_weight)
    assert verify_digests(tmp_path / "kernel", first.digests) == []
    assert verify_digests(tmp_path / "mapped", second.digests) == []

    shard = tmp_path / "kernel" / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern in the last tensor
    shard.write_bytes(bytes(data))
    assert verify_digests(tmp_path / "kernel", first.digests) == [
        "model.safetensors: bytes on disk differ from the bytes streamed"
    ]
    with pytest.raises(BuildError, match="shape"):
        stream_prune_checkpoint(
            source,
            tmp_path / "bad",
            REMOVE,
            changed={"model.layers.2.mlp.down_proj.weight": torch.zeros(3)},
        )
    with pytest.raises(BuildError, match="not in the pruned checkpoint"):
        stream_prune_checkpoint(
            source, tmp_path / "bad2", REMOVE, changed={"model.layers.5.x": torch.zeros(3)}
        )


def test_a_target_dtype_converts_floating_tensors(tiny_model, tmp_path: Path) -> None:
    source = tiny_model("qwen2_vl")  # float32 on disk
    report = stream_prune_checkpoint(source, tmp_path / "out", REMOVE, dtype="bfloat16")
    assert report.dtype == "bfloat16" and verify_digests(tmp_path / "out", report.digests) == []
    original, converted = _tensors(source), _tensors(tmp_path / "out")
    old_index = {0: 0, 1: 2, 2: 3, 3: 5}  # new -> old decoder index for REMOVE = [1, 4]
    layer = re.compile(r"(\blayers\.)(\d+)\.")  # the vision tower's are `blocks`
    dropped = [n for n in original if re.search(r"\blayers\.[14]\.", n)]
    assert dropped and len(converted) == len(original) - len(dropped)
    for name, tensor in converted.items():
        old = layer.sub(lambda m: f"{m.group(1)}{old_index[int(m.group(2))]}.", name)
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, original[old].to(torch.bfloat16)), name
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert config["text_config"].get("dtype", "bfloat16") == "bfloat16"


@pytest.mark.slow  # the default run checks every table type in test_no_tokenizer.py
def test_light_check_passes_every_architecture(tiny_model, tmp_path: Path) -> None:
    """The fresh process of the light check (meta-device load, prefix comparison, KV-cache
    decode) on every covered architecture, all in one process."""
    from prunec.backends.hf.stream import pruned_layout
    from prunec.backends.hf.stream_check import (
        expected_counts,
        fresh_environment,
        light_command,
        light_payload,
        problems,
    )

    jobs, expected = [], []
    for model_type in TINY_TYPES:
        source, out = tiny_model(model_type), tmp_path / model_type
        layout = pruned_layout(source, REMOVE)
        stream_prune_checkpoint(source, out, REMOVE)
        payload = light_payload(layout, source, out)
        assert (payload["source_layers"], payload["kept_layers"]) == (3, 2)  # crosses layer 1
        jobs.append({"payload": payload, "result": str(tmp_path / f"{model_type}.json")})
        expected.append(expected_counts(layout))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    proc = subprocess.run(
        light_command(tmp_path / "jobs.json"),
        input="go\n",
        capture_output=True,
        text=True,
        env=fresh_environment(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model_type, job, counts in zip(TINY_TYPES, jobs, expected, strict=True):
        result = json.loads(Path(job["result"]).read_text())
        assert problems({**result, "layers": (3, 2)}, counts, 1e-5) == [], model_type
        assert result["diff"] < 1e-5 and not result["prunec_imported"], model_type
