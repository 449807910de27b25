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

from prunec.testbed import (
    MARKER,
    RESULTS_TESTBEDS,
    TESTBEDS,
    TrainConfig,
    default_root,
    ensure_testbed,
)
from prunec.testbed.processor import FAMILIES, IMAGE_SEQ_LENGTH, build_processor
from prunec.testbed.skills import COLOURS, ROWS, SEGMENTS
from prunec.testbed.synth import CELL, GRID, sample, task_set, vocabulary
from prunec.testbed.train import _Encoder, held_out

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
    with pytest.raises(ValueError, match="math"):
        task_set("skills").sample("poetry", random.Random(0))


def test_held_out_sets_are_disjoint() -> None:
    held = held_out(dataclasses.replace(TINY, calib_samples=30, eval_samples=60))
    keys = [s.key() for group in (*held.calib.values(), *held.eval.values()) for s in group]
    assert len(keys) == len(set(keys)) == 2 * 90


@pytest.mark.parametrize(
    ("family", "tasks"), [("llava", "demo"), ("llava", "skills"), ("idefics3", "skills-b")]
)
def test_training_batches_match_the_saved_processor(
    tmp_path: Path, family: str, tasks: str
) -> None:
    """What training feeds the model is exactly what the saved processor makes of a sample."""
    from transformers import AutoProcessor

    task_set_ = task_set(tasks)
    processor = build_processor(family, task_set_)
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is type(processor)
    rng = random.Random(3)
    samples = [task_set_.sample(d, rng) for d in ("math", "general", "math")]
    batch = _Encoder(processor, family, task_set_).batch(samples)
    for row, s in enumerate(samples):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.text}]}
        ]
        prompt = reloaded.apply_chat_template(messages, add_generation_prompt=True)
        reference = reloaded(images=[s.image], text=[prompt], return_tensors="pt")
        prompt_len = reference["input_ids"].shape[1]
        assert batch["input_ids"][row, :prompt_len].tolist() == reference["input_ids"][0].tolist()
        image_tokens = int((reference["input_ids"] == reloaded.image_token_id).sum())
        assert image_tokens == task_set_.grid**2
        for key, value in reference.items():
            if key not in ("input_ids", "attention_mask"):
                assert batch[key].dtype == value.dtype, key
                torch.testing.assert_close(batch[key][row : row + 1], value, atol=1e-6, rtol=0)
        labels = batch["labels"][row]
        answer = labels[labels != -100].tolist()
        assert reloaded.tokenizer.decode(answer, skip_special_tokens=True).strip() == s.answer
    if tasks == "demo":
        assert image_tokens == IMAGE_SEQ_LENGTH


def _read_digit(pixels: Any) -> int:
    """Decode the black seven-segment digit under the coloured dots: a segment is lit when
    black shows somewhere along its centre line (a dot hides only part of a stroke)."""
    black = (pixels < 60).all(axis=-1)
    ys, xs = np.nonzero(black)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    if x1 - x0 < 10:
        return 1  # only the right-hand segments
    # Stroke centres: 3 px in from the box's edges (strokes are 6 px wide).
    left, right, top, bottom, mid = x0 + 3, x1 - 3, y0 + 3, y1 - 3, (y0 + y1) // 2
    across = np.linspace(left + 4, right - 4, 6).astype(int)
    upper = np.linspace(top + 4, mid - 4, 6).astype(int)
    lower = np.linspace(mid + 4, bottom - 4, 6).astype(int)
    lines = {
        "a": [(top, x) for x in across],
        "g": [(mid, x) for x in across],
        "d": [(bottom, x) for x in across],
        "f": [(y, left) for y in upper],
        "b": [(y, right) for y in upper],
        "e": [(y, left) for y in lower],
        "c": [(y, right) for y in lower],
    }
    lit = {seg for seg, points in lines.items() if any(black[y, x] for y, x in points)}
    return next(d for d, segs in SEGMENTS.items() if set(segs) == lit)


_PALETTE = np.array(list(COLOURS.values()))


def _colour_of(pixels: Any) -> Any:
    """Index into COLOURS of the nearest palette colour, for each pixel of `pixels` [..., 3]."""
    return np.abs(pixels[..., None, :] - _PALETTE).sum(axis=-1).argmin(axis=-1)


def _blobs(pixels: Any, cell: int) -> list[tuple[str, int, int]]:
    """Coloured (not black) objects, one per colour: (colour, pixel count, row of centre)."""
    ink = (pixels < 200).any(axis=-1) & ~(pixels < 60).all(axis=-1)
    ys, _ = np.nonzero(ink)
    nearest = _colour_of(pixels[ink])
    names = list(COLOURS)
    return [
        (names[i], int((nearest == i).sum()), int(ys[nearest == i].mean()) // cell)
        for i in np.unique(nearest)
    ]


def _shape_of(pixels: Any, colour: str, over: str | None = None) -> str:
    """Kind of the `colour` object from how much of its bounding box it fills (square ~1,
    circle ~pi/4, triangle ~1/2); pixels of the `over` object drawn on top count as filled."""
    ink = np.abs(pixels - np.array(COLOURS[colour])).sum(axis=-1) < 60
    ys, xs = np.nonzero(ink)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    if over is not None:
        ink |= np.abs(pixels - np.array(COLOURS[over])).sum(axis=-1) < 60
    fill = ink[box].mean()
    return "square" if fill > 0.92 else "circle" if fill > 0.68 else "triangle"


def _dots(pixels: Any, cell: int, grid: int) -> list[str]:
    """Colour of each cell holding coloured ink (the dots; the digit is black)."""
    out = []
    for r in range(grid):
        for c in range(grid):
            patch = pixels[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
            ink = (patch < 200).any(axis=-1) & ~(patch < 60).all(axis=-1)
            if ink.any():
                out.append(list(COLOURS)[int(_colour_of(patch[ink].mean(axis=0)))])
    return out


@pytest.mark.parametrize("name", ["skills", "skills-b"])
def test_multi_skill_answers_match_the_pictures(name: str) -> None:
    """Decode every picture independently (digit, dots, shapes) and check the answer."""
    tasks = task_set(name)
    rng = random.Random(11)
    seen: set[str] = set()
    for _ in range(150):
        s = tasks.sample("math", rng)
        seen.add(s.task)
        pixels = np.asarray(s.image).astype(int)
        digit, dots = _read_digit(pixels), _dots(pixels, tasks.cell, tasks.grid)
        asked = next((w for w in s.text.split() if w in COLOURS), None)
        expected = {
            "count": len(dots),
            "count_colour": dots.count(asked or ""),
            "read": digit,
            "add": digit + len(dots),
        }[s.task]
        assert s.answer == str(expected), (s.task, s.text)
        assert tasks.task_of("math", s.text) == s.task
        assert set(s.text.split()) | {s.answer} <= set(tasks.words)
    assert seen == set(tasks.tasks["math"])
    seen.clear()
    for _ in range(80):
        s = tasks.sample("general", rng)
        seen.add(s.task)
        pixels = np.asarray(s.image).astype(int)
        blobs = sorted(_blobs(pixels, tasks.cell), key=lambda b: b[1])
        assert len(blobs) == 2
        (small, _, row), (big, _, _) = blobs
        expected = {
            "big_colour": big,
            "big_shape": _shape_of(pixels, big, over=small),
            "small_colour": small,
            "small_shape": _shape_of(pixels, small),
            "small_row": ROWS[row],
        }[s.task]
        assert s.answer == expected, (s.task, s.text)
        assert tasks.task_of("general", s.text) == s.task
    assert seen == set(tasks.tasks["general"])


@pytest.mark.parametrize("name", ["demo", "skills", "skills-b"])
def test_task_sets_are_deterministic(name: str) -> None:
    tasks = task_set(name)
    first = [tasks.sample(d, random.Random(7)) for d in ("math", "general")]
    again = [tasks.sample(d, random.Random(7)) for d in ("math", "general")]
    assert [(s.key(), s.answer, s.task) for s in first] == [
        (s.key(), s.answer, s.task) for s in again
    ]
    config = dataclasses.replace(TINY, tasks=name, calib_samples=5, eval_samples=7)
    held, held_again = held_out(config), held_out(config)
    assert [s.key() for s in held.eval["math"]] == [s.key() for s in held_again.eval["math"]]
    with pytest.raises(ValueError, match="no math question"):
        tasks.task_of("math", "what is this ?")


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="skills"):
        task_set("skilz")
    with pytest.raises(ValueError, match="llava"):
        build_processor("qwen", task_set("skills"))
    with pytest.raises(ValueError, match="results-llava"):
        default_root("results")


def test_results_testbeds_differ_and_have_sixteen_layers() -> None:
    configs = [TESTBEDS[kind] for kind in RESULTS_TESTBEDS]
    assert len(configs) >= 2
    assert {c.num_layers for c in configs} == {16}
    assert len({c.family for c in configs}) == len(configs) == len({c.seed for c in configs})
    assert len({c.tasks for c in configs}) == len(configs)
    assert {c.family for c in configs} <= set(FAMILIES)
    assert default_root("demo") == Path("build/testbed")
    assert default_root("results-llava") == Path("build/testbed-results-llava")


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
    assert set(info["task_accuracy"]["math"]) <= {"count", "plus"}
    assert info["train_cpu_seconds"] > 0


def test_an_idefics3_testbed_loads_like_a_hub_model(tmp_path: Path) -> None:
    """The second family end to end (two steps): prunec loads it, records carry tasks."""
    from prunec.arch.loading import load_model
    from prunec.plan.model import ModelSpec
    from prunec.verify import evaluate, read_records

    config = dataclasses.replace(TINY, tasks="skills-b", family="idefics3", steps=2)
    testbed = ensure_testbed(tmp_path / "tb", config=config)
    loaded = load_model(ModelSpec(source=str(testbed.model), local=True, dtype="float32"))
    assert type(loaded.model).__name__ == "Idefics3ForConditionalGeneration"
    assert loaded.num_layers == TINY.num_layers
    records = read_records(testbed.eval("math"))
    tasks = task_set("skills-b")
    assert {tasks.task_of("math", r.text) for r in records} <= set(tasks.tasks["math"])
    result = evaluate(loaded.model, loaded.processor, records)
    per_task = testbed.info["task_accuracy"]["math"]
    counts = {t: sum(tasks.task_of("math", r.text) == t for r in records) for t in per_task}
    combined = sum(per_task[t] * counts[t] for t in per_task) / len(records)
    assert result.accuracy == pytest.approx(testbed.info["eval_accuracy"]["math"])
    assert combined == pytest.approx(result.accuracy)


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


@pytest.mark.slow
@pytest.mark.parametrize("kind", RESULTS_TESTBEDS)
def test_results_recipes_land_between_ninety_and_ninety_nine_percent(
    tmp_path: Path, kind: str
) -> None:
    """The results testbeds (several minutes each on 2 cores): 90-99% per domain, unsaturated."""
    info = ensure_testbed(tmp_path / kind, config=TESTBEDS[kind]).info
    for domain in ("math", "general"):
        assert 0.9 <= info["eval_accuracy"][domain] <= 0.99, (domain, info["eval_accuracy"])
