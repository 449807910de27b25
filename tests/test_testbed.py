"""The testbed: synthetic data, the offline processor, caching and deterministic training."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from prunec.testbed import MARKER, TrainConfig, ensure_testbed
from prunec.testbed.processor import IMAGE_SEQ_LENGTH, build_processor
from prunec.testbed.synth import CELL, GRID, sample, vocabulary
from prunec.testbed.train import _Encoder, held_out, pixel_values

#: A recipe small enough to train in a second or two: the tests check the machinery, not
#: the accuracy (the full recipe's accuracy is measured by `python -m prunec.testbed`).
TINY = TrainConfig(
    steps=4, batch_size=8, num_layers=2, hidden_size=32, calib_samples=6, eval_samples=8
)


def _occupied_cells(image: Any) -> int:
    pixels = np.asarray(image)
    cells = 0
    for row in range(GRID):
        for col in range(GRID):
            patch = pixels[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]
            cells += bool((patch < 200).any())
    return cells


def test_samples_are_deterministic_and_answers_match_the_pictures() -> None:
    first = [sample("math", random.Random(7)) for _ in range(3)]
    again = [sample("math", random.Random(7)) for _ in range(3)]
    assert [s.key() for s in first] == [s.key() for s in again]
    rng = random.Random(1)
    for _ in range(40):
        s = sample("math", rng)
        if s.text == "how many dots are there ?":
            assert _occupied_cells(s.image) == int(s.answer)
    words = set(vocabulary())
    for domain in ("math", "general"):
        for _ in range(20):
            s = sample(domain, rng)
            assert set(s.text.split()) <= words and s.answer in words


def test_unknown_domain_is_rejected() -> None:
    with pytest.raises(ValueError, match="math"):
        sample("poetry", random.Random(0))


def test_held_out_sets_are_disjoint() -> None:
    held = held_out(dataclasses.replace(TINY, calib_samples=30, eval_samples=60))
    keys = [s.key() for group in (*held.calib.values(), *held.eval.values()) for s in group]
    assert len(keys) == len(set(keys)) == 2 * 90


def test_training_batches_match_the_saved_processor(tmp_path: Path) -> None:
    processor = build_processor()
    processor.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    reloaded = AutoProcessor.from_pretrained(tmp_path)
    s = sample("general", random.Random(3))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.text}]}]
    prompt = reloaded.apply_chat_template(messages, add_generation_prompt=True)
    reference = reloaded(images=[s.image], text=[prompt], return_tensors="pt")
    batch = _Encoder(processor).batch([s])
    prompt_len = reference["input_ids"].shape[1]
    assert batch["input_ids"][0, :prompt_len].tolist() == reference["input_ids"][0].tolist()
    assert int((reference["input_ids"] == reloaded.image_token_id).sum()) == IMAGE_SEQ_LENGTH
    torch.testing.assert_close(
        pixel_values([s.image]), reference["pixel_values"], atol=1e-6, rtol=0
    )
    answer = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert reloaded.tokenizer.decode(answer, skip_special_tokens=True).strip() == s.answer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return ensure_testbed(tmp_path_factory.mktemp("tb") / "testbed", config=TINY)


def test_ensure_testbed_writes_a_hub_like_model_and_data(trained: Any) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(trained.model)
    processor = AutoProcessor.from_pretrained(trained.model)
    assert model.config.text_config.num_hidden_layers == TINY.num_layers
    assert processor.image_token_id == model.config.image_token_id
    for domain in ("math", "general"):
        for path, n in ((trained.calib(domain), 6), (trained.eval(domain), 8)):
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            assert len(lines) == n
            assert set(lines[0]) == {"image", "text", "answer"}
            assert (path.parent / lines[0]["image"]).is_file()
    info = json.loads((trained.root / MARKER).read_text())
    assert set(info["eval_accuracy"]) == {"math", "general"}
    assert info["config"]["steps"] == TINY.steps


def test_ensure_testbed_is_cached_until_the_recipe_changes(trained: Any) -> None:
    weights = trained.model / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_testbed(trained.root, config=TINY).info == trained.info
    assert weights.stat().st_mtime_ns == stamp
    changed = dataclasses.replace(TINY, seed=1)
    retrained = ensure_testbed(trained.root, config=changed)
    assert retrained.info["fingerprint"] == changed.fingerprint() != TINY.fingerprint()
    assert weights.stat().st_mtime_ns != stamp


def test_training_is_deterministic_and_learns() -> None:
    from prunec.testbed.train import train

    config = dataclasses.replace(TINY, steps=30, lr=3e-3, warmup=5)
    processor = build_processor()
    held = held_out(config)
    losses: list[list[float]] = [[], []]
    models = [
        train(config, processor, held, on_step=lambda _, loss, i=i: losses[i].append(loss))
        for i in range(2)
    ]
    assert losses[0] == losses[1]
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.mean(losses[0][-5:]) < 0.8 * np.mean(losses[0][:5])


@pytest.mark.slow
def test_full_recipe_reaches_ninety_percent_per_domain(tmp_path: Path) -> None:
    """The real recipe (minutes on 2 cores): >= 90% greedy exact match on both domains."""
    info = ensure_testbed(tmp_path / "testbed").info
    assert info["eval_accuracy"]["math"] >= 0.9
    assert info["eval_accuracy"]["general"] >= 0.9
