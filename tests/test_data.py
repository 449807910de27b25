"""Calibration/eval JSONL reading (every bad line reported) and encoding through processors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prunec.data import encode, prompt_inputs, read_records
from prunec.errors import BuildError, SpecError


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    from tiny_models import sample_image

    (tmp_path / "img").mkdir()
    sample_image(32, seed=1).save(tmp_path / "img" / "1.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    return tmp_path


def test_reads_records_relative_images(images):
    path = write(
        images / "d.jsonl",
        [
            json.dumps({"image": "img/1.png", "text": "how many dots", "answer": "two"}),
            "",
            json.dumps({"text": "two plus three"}),
        ],
    )
    records = read_records(path)
    assert [r.line for r in records] == [1, 3]
    assert records[0].image == (images / "img" / "1.png").resolve()
    assert records[0].answer == "two" and records[1].image is None and records[1].answer is None


def test_every_bad_line_is_reported(images):
    path = write(
        images / "bad.jsonl",
        [
            "{not json",
            json.dumps({"image": "img/1.png"}),
            json.dumps({"text": "ok", "colour": "red"}),  # unknown fields are ignored
            json.dumps(["a list"]),
            json.dumps({"text": "fine", "answer": 3.5}),
        ],
    )
    with pytest.raises(SpecError) as err:
        read_records(path)
    lines = [d.span.line for d in err.value.diagnostics if d.span]
    assert lines == [1, 2, 4, 5]
    codes = [d.code for d in err.value.diagnostics]
    assert codes == ["E323", "E326", "E324", "E327"]
    rendered = err.value.render()
    assert f"{path}:2:1" in rendered and 'missing or empty "text"' in rendered


def test_missing_and_unreadable_images(images):
    path = write(
        images / "img.jsonl",
        [
            json.dumps({"image": "img/nope.png", "text": "a"}),
            json.dumps({"image": "img/broken.png", "text": "b"}),
        ],
    )
    with pytest.raises(SpecError) as err:
        read_records(path)
    messages = [d.message for d in err.value.diagnostics]
    assert "image not found" in messages[0] and "unreadable image" in messages[1]


def test_empty_file_and_too_few_samples(tmp_path):
    with pytest.raises(SpecError, match="has no records"):
        read_records(write(tmp_path / "empty.jsonl", ["", "  "]))
    path = write(tmp_path / "two.jsonl", [json.dumps({"text": t}) for t in ("a", "b")])
    with pytest.raises(SpecError, match="3 samples requested"):
        read_records(path, samples=3)
    with pytest.raises(SpecError, match="cannot read"):
        read_records(tmp_path / "missing.jsonl")


def test_sampling_is_deterministic_and_ordered(tmp_path):
    path = write(tmp_path / "many.jsonl", [json.dumps({"text": f"w{i}"}) for i in range(40)])
    first = read_records(path, samples=10, seed=3)
    assert first == read_records(path, samples=10, seed=3)
    assert [r.line for r in first] == sorted(r.line for r in first)
    assert first != read_records(path, samples=10, seed=4)


@pytest.fixture(scope="module")
def llava(tiny_model):
    from tiny_models import load_processor

    return load_processor("llava", tiny_model("llava", num_layers=2))


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_model):
    from tiny_models import load_processor

    return load_processor("llama", tiny_model("llama", num_layers=2))


def test_encode_text_with_answer_mask(llama_tokenizer, tmp_path):
    path = write(
        tmp_path / "t.jsonl",
        [
            json.dumps({"text": "two plus three equals", "answer": "five"}),
            json.dumps({"text": "what is the red circle in this picture", "answer": "a square"}),
        ],
    )
    records = read_records(path)
    batch = encode(llama_tokenizer, records, 64, with_answer=True)
    mask, answer = batch["attention_mask"], batch["answer_mask"]
    assert batch["input_ids"].shape == mask.shape == answer.shape
    assert mask[0].sum() < mask[1].sum() and mask[0, -1] == 0  # right padding
    assert bool((answer <= mask).all())
    tokens = llama_tokenizer.convert_ids_to_tokens(batch["input_ids"][1][answer[1].bool()])
    assert tokens[:2] == ["a", "square"]
    prompt = prompt_inputs(llama_tokenizer, records[0], 64)
    assert prompt["input_ids"].shape[0] == 1
    tail = llama_tokenizer.convert_ids_to_tokens(prompt["input_ids"][0][-2:])
    assert tail == ["assistant", ":"]  # ends with the generation prompt


def test_encode_truncates_and_guards_image_tokens(llava, images):
    path = write(images / "v.jsonl", [json.dumps({"image": "img/1.png", "text": "how many dots"})])
    records = read_records(path)
    full = encode(llava, records, 512)
    assert full["pixel_values"].shape[0] == 1
    length = full["input_ids"].shape[1]
    cut = encode(llava, records, length - 1)
    assert cut["input_ids"].shape[1] == length - 1 and torch.equal(
        cut["input_ids"], full["input_ids"][:, :-1]
    )
    with pytest.raises(BuildError, match="cuts through the image tokens"):
        encode(llava, records, 5)
    with pytest.raises(BuildError, match="over max_length"):
        prompt_inputs(llava, records[0], 5)


def test_image_record_for_text_model_is_an_error(llama_tokenizer, images):
    path = write(images / "v.jsonl", [json.dumps({"image": "img/1.png", "text": "a"})])
    with pytest.raises(BuildError, match="text only"):
        encode(llama_tokenizer, read_records(path), 64)


def test_processor_without_batching_is_padded_per_sample(tiny_model, images):
    """Qwen2-VL's test processor cannot batch: samples are encoded one by one and padded."""
    from tiny_models import load_processor, sample_image

    processor = load_processor("qwen2_vl", tiny_model("qwen2_vl", num_layers=2))
    sample_image(32, seed=2).save(images / "img" / "2.png")
    path = write(
        images / "q.jsonl",
        [
            json.dumps({"image": "img/1.png", "text": "how many dots are there ?"}),
            json.dumps({"image": "img/2.png", "text": "red"}),
        ],
    )
    records = read_records(path)
    batch = encode(processor, records, 512)
    singles = [encode(processor, [r], 512) for r in records]
    assert batch["image_grid_thw"].shape[0] == 2
    for row, single in enumerate(singles):
        length = single["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][row, :length], single["input_ids"][0])
        assert int(batch["attention_mask"][row].sum()) == length
        assert torch.equal(batch["mm_token_type_ids"][row, :length], single["mm_token_type_ids"][0])


def test_processor_rejection_names_the_record(tiny_model, tmp_path):
    """PaliGemma's processor needs an image on every sample: a clear error, not a traceback."""
    from tiny_models import load_processor

    processor = load_processor("paligemma", tiny_model("paligemma", num_layers=2))
    path = write(tmp_path / "t.jsonl", [json.dumps({"text": "two plus three"})])
    with pytest.raises(BuildError, match=r"t\.jsonl:1: the model's processor rejected"):
        encode(processor, read_records(path), 64)


def test_tokenizer_without_pad_token_borrows_eos(llama_tokenizer, tmp_path):
    path = write(tmp_path / "t.jsonl", [json.dumps({"text": t}) for t in ("two", "two plus three")])
    saved = llama_tokenizer.pad_token
    llama_tokenizer.pad_token = None
    try:
        batch = encode(llama_tokenizer, read_records(path), 64)
        assert batch["attention_mask"].sum(dim=1).tolist()[0] < batch["input_ids"].shape[1]
        assert llama_tokenizer.pad_token is None  # restored
    finally:
        llama_tokenizer.pad_token = saved


def test_earlier_turns_without_a_chat_template_are_lines_of_the_prompt(llama_tokenizer, tmp_path):
    row = {
        "messages": [
            {"role": "user", "content": "what is the red circle"},
            {"role": "assistant", "content": "a square"},
            {"role": "user", "content": "how many dots"},
            {"role": "assistant", "content": "two"},
        ]
    }
    (record,) = read_records(write(tmp_path / "c.jsonl", [json.dumps(row)]))
    (single,) = read_records(write(tmp_path / "s.jsonl", [json.dumps({"text": "how many dots"})]))
    saved = llama_tokenizer.chat_template
    llama_tokenizer.chat_template = None
    try:
        batch = encode(llama_tokenizer, [record], 64, with_answer=True)
        plain = encode(llama_tokenizer, [single], 64)
    finally:
        llama_tokenizer.chat_template = saved
    tokens = llama_tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    words = [t for t in tokens if t not in ("<s>", "</s>", "<pad>")]
    # One line per turn; this word-level tokenizer splits on whitespace, newlines included.
    assert words == [
        "what",
        "is",
        "the",
        "red",
        "circle",
        "a",
        "square",
        "how",
        "many",
        "dots",
        "two",
    ]
    answer = [t for t, m in zip(tokens, batch["answer_mask"][0], strict=True) if m]
    assert answer == ["two"]
    assert llama_tokenizer.convert_ids_to_tokens(plain["input_ids"][0])[-3:] == [
        "how",
        "many",
        "dots",
    ]
