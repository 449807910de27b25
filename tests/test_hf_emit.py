"""HF checkpoint emission: every covered architecture reloads in a fresh process without prunec
and reproduces the original model run with the same layers skipped."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import xxhash
from tiny_models import TINY_TYPES, VLM_TYPES, load_processor, sample_inputs

from prunec.arch import remove_layers, skip_layers
from prunec.arch.loading import load_model
from prunec.backends.atomic import atomic_directory, staging_directory
from prunec.backends.hf import MANIFEST, emit_hf, prepare_self_check, run_self_checks
from prunec.errors import BuildError
from prunec.plan.model import ModelSpec

REMOVE = [1, 4]  # Qwen3-VL: drops deepstack feature 1, keeps 0 and 2
KEPT = [0, 2, 3, 5]


def _load(path: Path):
    return load_model(ModelSpec(source=str(path), local=True))


def _text_section(config: dict) -> dict:
    return config.get("text_config", config)


def test_every_architecture_round_trips(tiny_model, tmp_path: Path) -> None:
    jobs = []
    for model_type in TINY_TYPES:
        path = tiny_model(model_type)
        loaded = _load(path)
        processor = load_processor(model_type, path)
        images = (True, False) if model_type in VLM_TYPES else (False,)
        cases = [sample_inputs(model_type, processor, with_image=w) for w in images]
        with torch.no_grad(), skip_layers(loaded.model, REMOVE):
            references = [loaded.model(**c).logits.float() for c in cases]
        assert remove_layers(loaded.model, REMOVE) == {old: new for new, old in enumerate(KEPT)}
        out = tmp_path / model_type
        report = emit_hf(loaded, REMOVE, out, source=str(path), self_check=False)
        assert "model.safetensors" in report.files and "config.json" in report.files
        jobs.append(prepare_self_check(loaded, out, cases, references))

        original = _text_section(json.loads((path / "config.json").read_text()))
        written = _text_section(json.loads((out / "config.json").read_text()))
        assert written["num_hidden_layers"] == len(KEPT), model_type
        for key in ("layer_types", "mlp_layer_types"):
            if original.get(key) is not None:
                assert written[key] == [original[key][i] for i in KEPT], (model_type, key)
        if "max_window_layers" in original:
            want = sum(i < original["max_window_layers"] for i in KEPT)
            assert written["max_window_layers"] == want, model_type
        if model_type == "qwen3_vl":
            vision = json.loads((out / "config.json").read_text())["vision_config"]
            assert vision["deepstack_visual_indexes"] == [0, 2]

    outcomes = run_self_checks(jobs)  # one fresh process for all; raises on any problem
    assert len(outcomes) == len(TINY_TYPES)
    for model_type, (diff, generate_ok) in zip(TINY_TYPES, outcomes, strict=True):
        assert diff < 1e-4, model_type
        assert generate_ok, model_type


def test_emit_hf_writes_a_complete_checkpoint(tiny_model, tmp_path: Path) -> None:
    path = tiny_model("llava")
    loaded = _load(path)
    remove_layers(loaded.model, [2, 3])
    spec = 'model "tiny-llava" {}\nprune { remove 2, 3 }\n'
    out = tmp_path / "out"
    scores = {"math": [0.1 * i for i in range(6)]}
    report = emit_hf(loaded, [2, 3], out, spec_text=spec, source="tiny-llava", scores=scores)
    assert report.generate_ok and report.checked_inputs == 2  # text + image prompt
    assert report.max_abs_logit_diff < 1e-4
    assert report.layer_map == {0: 0, 1: 1, 4: 2, 5: 3}
    for name in ("tokenizer.json", "processor_config.json", "generation_config.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "| 4 | 2 |" in card and "prune { remove 2, 3 }" in card and "0.5000" in card
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["removed"] == [2, 3] and manifest["layer_map"]["5"] == 3
    assert manifest["mode"] == "streaming" and report.streamed and report.check == "full"
    on_disk = {p.name for p in out.iterdir()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    for name, meta in manifest["files"].items():
        data = (out / name).read_bytes()
        assert meta["bytes"] == len(data)
        if name.endswith(".safetensors"):  # hashed while streaming, with a fast digest
            assert xxhash.xxh3_128(data).hexdigest() == meta["xxh3_128"], name
        else:
            assert hashlib.sha256(data).hexdigest() == meta["sha256"], name


def _half_done_surgery(model_dir: Path):
    """Only the ModuleList is cut (the classic bug): config and layer_idx are stale."""
    loaded = _load(model_dir)
    layers = loaded.model.model.layers
    loaded.model.model.layers = torch.nn.ModuleList([layers[i] for i in KEPT])
    return loaded


def _changed_in_memory(model_dir: Path):
    """Pruned, then a kept layer's weights changed in memory without telling the emitter
    (which streams the source's bytes): the checkpoint no longer is the model in memory."""
    loaded = _load(model_dir)
    remove_layers(loaded.model, REMOVE)
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    return loaded


def test_self_check_rejects_a_checkpoint_unlike_the_model_in_memory(
    tiny_model, tmp_path: Path
) -> None:
    with pytest.raises(BuildError, match=r"self-check failed.*reloaded logits differ"):
        emit_hf(_changed_in_memory(tiny_model("llama")), REMOVE, tmp_path / "out")


def test_sources_without_safetensors_fall_back_to_save_pretrained(
    tiny_model, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    legacy = tmp_path / "legacy"  # a pickled-weights checkpoint, as older hub repositories have
    shutil.copytree(tiny_model("llama"), legacy)
    torch.save(load_file(legacy / "model.safetensors"), legacy / "pytorch_model.bin")
    (legacy / "model.safetensors").unlink()

    loaded = _load(legacy)
    remove_layers(loaded.model, REMOVE)
    report = emit_hf(loaded, REMOVE, tmp_path / "good", self_check=False)
    assert not report.streamed and report.check == "none"
    expected = loaded.model.state_dict()
    written = load_file(tmp_path / "good" / "model.safetensors")
    assert set(written) <= set(expected) and set(expected) - set(written) <= {"lm_head.weight"}
    assert all(torch.equal(v, expected[k]) for k, v in written.items())
    emit_hf(loaded, REMOVE, tmp_path / "half", self_check=False, dtype="bfloat16")
    halved = load_file(tmp_path / "half" / "model.safetensors")
    assert all(torch.equal(v, expected[k].to(torch.bfloat16)) for k, v in halved.items())
    assert next(loaded.model.parameters()).dtype == torch.float32  # the model is left alone
    with pytest.raises(BuildError, match="self-check failed"):  # the classic bug is caught
        emit_hf(_half_done_surgery(legacy), REMOVE, tmp_path / "bad")


def test_failed_build_leaves_earlier_target_intact(tiny_model, tmp_path: Path) -> None:
    target = tmp_path / "build" / "model"
    good = _load(tiny_model("llama"))
    remove_layers(good.model, REMOVE)
    with atomic_directory(target) as staged:
        emit_hf(good, REMOVE, staged, self_check=False)
    before = (target / MANIFEST).read_bytes()

    broken = _changed_in_memory(tiny_model("llama"))
    with pytest.raises(BuildError), staging_directory(target) as staged:
        emit_hf(broken, REMOVE, staged)
    with pytest.raises(KeyboardInterrupt), staging_directory(target) as staged:
        (staged / "config.json").write_text("{}")  # interrupted mid-write
        raise KeyboardInterrupt
    assert (target / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no staging leftovers


def _run_cli(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_prunec_build_cli_writes_hf_target(tiny_model, tmp_path: Path) -> None:
    model_dir = tiny_model("qwen2_vl")
    spec = tmp_path / "tiny.prune"
    body = 'model "{}" {{\n  dtype float32\n}}\n\nprune {{\n  remove {}\n}}\n\ntarget hf "out"\n'
    spec.write_text(body.format(model_dir, "1, 4"))
    assert _run_cli("build", str(spec), "--no-lock") == 0
    out = tmp_path / "out"
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 4
    assert config["text_config"]["max_window_layers"] == 3  # layers 0, 2, 3 were below 4
    before = (out / MANIFEST).read_bytes()

    spec.write_text(body.format(model_dir, "1, 9"))  # out of range: rejected, nothing replaced
    assert _run_cli("build", str(spec), "--no-lock") != 0
    assert (out / MANIFEST).read_bytes() == before
