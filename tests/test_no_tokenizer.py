"""Model folders without tokenizer files: the HF self-check falls back to a synthetic prompt of
several tokens (transformers 5.24 loads such a folder with an EMPTY tokenizer for Qwen and
Gemma types, whose 0-token encoding broke the streamed build), for every architecture in the
table, on the streamed path and on the in-memory `emit_hf` path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import SPECS, TEXT_KW, build_tiny

from prunec.arch import remove_layers, skip_layers
from prunec.arch.loading import load_model
from prunec.backends.hf import (
    MIN_PROMPT_TOKENS,
    default_inputs,
    emit_hf,
    prepare_self_check,
    run_self_checks,
)
from prunec.backends.hf.stream import stream_prune_checkpoint
from prunec.plan.model import ModelSpec

#: Every model type of the architecture table (prunec/arch/data/*.json).
ARCH_TYPES = sorted(p.stem for p in (Path(__file__).parents[1] / "prunec/arch/data").glob("*.json"))
REMOVE = [1, 4]


def _build_smolvlm(out_dir: Path) -> Path:
    """SmolVLM has no entry in tiny_models (same layout as Idefics3): config and weights only."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    text = {**TEXT_KW, "model_type": "llama", "num_hidden_layers": 6}
    config = SmolVLMConfig(
        vision_config=vision, text_config=text, image_token_id=4, scale_factor=2, pad_token_id=0
    )
    torch.manual_seed(0)
    SmolVLMForConditionalGeneration(config).save_pretrained(out_dir)
    return out_dir


def _no_tokenizer_model(model_type: str, out_dir: Path) -> Path:
    if model_type == "smolvlm":
        path = _build_smolvlm(out_dir)
    else:
        path = build_tiny(model_type, out_dir, tokenizer=None)
    names = {p.name for p in path.iterdir()}
    assert not any(n.startswith(("tokenizer", "vocab", "chat_template")) for n in names), names
    return path


def _special_ids(config) -> set[int]:
    ids: set[int] = set()
    for cfg in (config, config.get_text_config(decoder=True)):
        for key, value in cfg.to_dict().items():
            if key.endswith(("_token_id", "_token_index")) and isinstance(value, int):
                ids.add(value)
    return ids


def test_the_table_is_covered() -> None:
    assert len(ARCH_TYPES) >= 17
    assert set(ARCH_TYPES) - set(SPECS) == {"smolvlm"}  # built by _build_smolvlm above


@pytest.mark.parametrize("model_type", ARCH_TYPES)
def test_self_check_prompt_without_tokenizer(model_type: str, tmp_path: Path) -> None:
    """A text prompt of several ordinary ids, no image prompt, and a forward that runs both
    ways the self-check computes its reference (layers skipped, layers removed)."""
    loaded = load_model(
        ModelSpec(source=str(_no_tokenizer_model(model_type, tmp_path)), local=True)
    )
    cases = default_inputs(loaded)
    assert len(cases) == 1  # an image prompt needs the tokenizer's placeholder tokens
    ids = cases[0]["input_ids"]
    assert ids.shape[0] == 1 and ids.shape[-1] >= MIN_PROMPT_TOKENS
    assert not set(ids.flatten().tolist()) & _special_ids(loaded.model.config)
    vocab = loaded.model.config.get_text_config(decoder=True).vocab_size
    with torch.no_grad():
        with skip_layers(loaded.model, REMOVE):
            skipped = loaded.model(**cases[0]).logits
        remove_layers(loaded.model, REMOVE)
        removed = loaded.model(**cases[0]).logits
    assert skipped.shape == (1, ids.shape[-1], vocab)
    torch.testing.assert_close(removed, skipped, rtol=0, atol=1e-5)


def test_both_emit_paths_self_check_every_architecture(tmp_path: Path) -> None:
    """Per architecture: the in-memory `emit_hf` checkpoint checked against the pruned model
    (its prompt from `default_inputs`), all in ONE fresh process; and the streamed checkpoint
    through the light check (synthetic ids, never a tokenizer), all in one more."""
    import subprocess

    from prunec.backends.hf.stream import pruned_layout
    from prunec.backends.hf.stream_check import (
        expected_counts,
        fresh_environment,
        light_command,
        light_payload,
        problems,
    )

    jobs, light_jobs, expected = [], [], []
    for model_type in ARCH_TYPES:
        source = _no_tokenizer_model(model_type, tmp_path / "src" / model_type)
        streamed = tmp_path / "streamed" / model_type
        layout = pruned_layout(source, REMOVE)
        stream_prune_checkpoint(source, streamed, REMOVE)
        payload = light_payload(layout, source, streamed)
        assert len(payload["input_ids"]) >= MIN_PROMPT_TOKENS
        result = tmp_path / f"light-{model_type}.json"
        light_jobs.append({"payload": payload, "result": str(result)})
        expected.append(expected_counts(layout))

        loaded = load_model(ModelSpec(source=str(source), local=True))
        remove_layers(loaded.model, REMOVE)
        in_memory = tmp_path / "in_memory" / model_type
        emit_hf(loaded, REMOVE, in_memory, source=str(source), self_check=False)
        jobs.append(prepare_self_check(loaded, in_memory, default_inputs(loaded)))
    for job in jobs:
        [case] = job.payload["cases"]
        assert case["inputs"]["input_ids"].shape[-1] >= MIN_PROMPT_TOKENS
    outcomes = run_self_checks(jobs)  # raises BuildError naming every failing checkpoint
    assert len(outcomes) == len(ARCH_TYPES)
    assert all(diff < 1e-4 and generate_ok for diff, generate_ok in outcomes)

    (tmp_path / "jobs.json").write_text(json.dumps(light_jobs))
    proc = subprocess.run(
        light_command(tmp_path / "jobs.json"),
        input="go\n",
        capture_output=True,
        text=True,
        env=fresh_environment(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model_type, job, counts in zip(ARCH_TYPES, light_jobs, expected, strict=True):
        found = json.loads(Path(job["result"]).read_text())
        layers = (job["payload"]["source_layers"], job["payload"]["kept_layers"])
        assert problems({**found, "layers": layers}, counts, 1e-4) == [], model_type


@pytest.mark.parametrize(
    "model_type",
    [
        "qwen3_vl",
        pytest.param("qwen3", marks=pytest.mark.slow),
        pytest.param("qwen2_5_vl", marks=pytest.mark.slow),
    ],
)
def test_streamed_build_without_tokenizer(
    model_type: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`prunec build` with a `remove` list streams and self-checks a folder with no tokenizer
    files (it failed with "cannot reshape tensor of 0 elements" for the types reported)."""
    from prunec.cli import main

    source = _no_tokenizer_model(model_type, tmp_path / "model")
    spec = tmp_path / "s.prune"
    spec.write_text(f'model "{source}"\n\nprune {{\n  remove 1, 4\n}}\n\ntarget hf "out"\n')
    with pytest.raises(SystemExit) as exit:
        main(["build", str(spec)])
    err = capsys.readouterr().err
    assert exit.value.code == 0, err
    assert "streamed, self-checked" in err
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("text_config", config)["num_hidden_layers"] == 4
    assert not any((tmp_path / "out").glob("tokenizer*"))
