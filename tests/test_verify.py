"""Evaluation (greedy exact match, answer NLL), retention and gates on a tiny random LLaVA."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from prunec.errors import BuildError, ExitCode, VerifyError
from prunec.plan.model import DomainSpec, ModelSpec, Plan, VerifyGate, VerifySpec
from prunec.testbed import write_jsonl
from prunec.testbed.processor import build_processor
from prunec.testbed.synth import sample
from prunec.testbed.train import TrainConfig, build_model
from prunec.verify import (
    DomainEval,
    check_gates,
    evaluate,
    read_records,
    retention,
)
from prunec.verify.evaluate import evaluate_records, normalize_answer, summarize


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    processor = build_processor()
    model = build_model(TrainConfig(num_layers=2, hidden_size=32, seed=3), processor)
    return model.eval(), processor


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    rng = random.Random(5)
    samples = [sample(d, rng) for d in ("math", "general") * 5]
    path = tmp_path_factory.mktemp("eval") / "mixed_eval.jsonl"
    write_jsonl(samples, path, "mixed")
    return read_records(path)


def _reference_answer(model: Any, processor: Any, record: Any) -> str:
    """HF `generate` (KV cache, one unpadded sample): what evaluate's batched loop must match."""
    from prunec.data import prompt_inputs

    inputs = prompt_inputs(processor, record, 512)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    tokenizer = getattr(processor, "tokenizer", processor)
    return str(tokenizer.decode(new, skip_special_tokens=True))


def test_accuracy_matches_unbatched_generate(tiny: tuple[Any, Any], records: list[Any]) -> None:
    model, processor = tiny
    generated = [_reference_answer(model, processor, r) for r in records]
    # Half the records get the model's own answer (must count), half a different one (must not).
    relabelled = [
        r.__class__(r.file, r.line, r.text, r.image, g if i % 2 == 0 else g + " x")
        for i, (r, g) in enumerate(zip(records, generated, strict=True))
    ]
    result = evaluate(model, processor, relabelled, batch_size=4)
    assert result.n == len(records)
    assert result.accuracy == pytest.approx(0.5)


def test_per_record_results_summarize_to_the_domain_result(
    tiny: tuple[Any, Any], records: list[Any]
) -> None:
    model, processor = tiny
    per = evaluate_records(model, processor, records, batch_size=4)
    whole = evaluate(model, processor, records, batch_size=3)
    assert len(per) == len(records) and all(r.nll_tokens > 0 for r in per)
    assert summarize(per).accuracy == pytest.approx(whole.accuracy)
    assert summarize(per).nll == pytest.approx(whole.nll, rel=1e-5)
    generated = [_reference_answer(model, processor, r) for r in records]
    for result, record, answer in zip(per, records, generated, strict=True):
        assert result.correct == (normalize_answer(answer) == normalize_answer(record.answer))
    # Subsets combine back: NLL over answer tokens, accuracy over records.
    left, right = summarize(per[:3]), summarize(per[3:])
    tokens = [sum(r.nll_tokens for r in part) for part in (per[:3], per[3:])]
    assert (left.nll * tokens[0] + right.nll * tokens[1]) / sum(tokens) == pytest.approx(whole.nll)
    assert summarize([]).n == 0 and math.isnan(summarize([]).nll)


def test_files_mixing_image_and_text_only_records(
    tiny: tuple[Any, Any], records: list[Any]
) -> None:
    """An eval file with text-only records between image ones (it crashed with KeyError
    'pixel_values'): batches hold one modality, results keep the file's order and equal
    evaluating each record alone."""
    model, processor = tiny
    mixed = [
        r if i % 2 == 0 else r.__class__(r.file, r.line, r.text, None, r.answer)
        for i, r in enumerate(records)
    ]
    assert any(r.image is None for r in mixed) and any(r.image is not None for r in mixed)
    together = evaluate_records(model, processor, mixed, batch_size=4)
    alone = [evaluate_records(model, processor, [r], batch_size=1)[0] for r in mixed]
    assert [r.correct for r in together] == [r.correct for r in alone]
    assert [r.nll_tokens for r in together] == [r.nll_tokens for r in alone]
    for a, b in zip(together, alone, strict=True):
        assert a.nll_sum == pytest.approx(b.nll_sum, rel=1e-4, abs=1e-4)


def test_nll_matches_a_single_sample_forward(tiny: tuple[Any, Any], records: list[Any]) -> None:
    model, processor = tiny
    tokenizer = processor.tokenizer
    total, count = 0.0, 0
    for record in records[:4]:
        from prunec.data import prompt_inputs

        prompt = prompt_inputs(processor, record, 512)
        answer = tokenizer(f" {record.answer} </s>", add_special_tokens=False)["input_ids"]
        ids = torch.cat([prompt["input_ids"], torch.tensor([answer])], dim=1)
        with torch.inference_mode():
            logits = model(input_ids=ids, pixel_values=prompt["pixel_values"]).logits
        logp = torch.log_softmax(logits[0, -len(answer) - 1 : -1], dim=-1)
        total -= float(logp.gather(-1, torch.tensor(answer)[:, None]).sum())
        count += len(answer)
    result = evaluate(model, processor, records[:4], batch_size=3)
    assert result.nll == pytest.approx(total / count, rel=1e-4)


def test_evaluate_restores_training_mode_and_handles_empty(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    model.train()
    empty = evaluate(model, processor, [])
    assert model.training
    model.eval()
    assert empty.n == 0 and math.isnan(empty.nll)


def test_records_without_answers_are_a_build_error(
    tiny: tuple[Any, Any], records: list[Any]
) -> None:
    model, processor = tiny
    bad = records[0].__class__(records[0].file, 1, "what ?", records[0].image, None)
    with pytest.raises(BuildError, match="need an answer"):
        evaluate(model, processor, [bad])


def test_normalize_answer() -> None:
    assert normalize_answer("  Red \n") == "red"


def test_retention_ratios() -> None:
    base = DomainEval(n=10, accuracy=0.8, nll=0.5)
    worse = DomainEval(n=10, accuracy=0.6, nll=1.0)
    kept = retention(base, worse)
    assert kept["accuracy"] == pytest.approx(0.75)
    assert kept["nll"] == pytest.approx(0.5)
    zero = DomainEval(n=10, accuracy=0.0, nll=2.0)
    assert retention(zero, zero)["accuracy"] == 1.0
    assert retention(zero, base)["accuracy"] == math.inf


def _plan(tmp_path: Path) -> Plan:
    return Plan(
        model=ModelSpec(source=str(tmp_path)),
        domains=(
            DomainSpec(name="math", data=tmp_path / "m.jsonl", eval=tmp_path / "m_eval.jsonl"),
            DomainSpec(name="general", data=tmp_path / "g.jsonl"),
        ),
        verify=VerifySpec(
            gates=(
                VerifyGate(domain="math", threshold=0.9),
                VerifyGate(domain="general", threshold=0.85, data=tmp_path / "g_eval.jsonl"),
                VerifyGate(domain="general", threshold=0.95, metric="nll"),
            )
        ),
    )


def test_gates_pass_and_fail_per_row(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    original = {"math": DomainEval(100, 1.0, 0.10), "general": DomainEval(100, 0.9, 0.20)}
    pruned = {"math": DomainEval(100, 0.95, 0.12), "general": DomainEval(100, 0.72, 0.25)}
    report = check_gates(plan, original, pruned)
    assert [(r.domain, r.metric, r.passed) for r in report.rows] == [
        ("math", "accuracy", True),
        ("general", "accuracy", False),
        ("general", "nll", False),
    ]
    assert report.rows[1].retention == pytest.approx(0.8)
    assert report.rows[2].retention == pytest.approx(0.8)
    assert not report.passed
    table = report.render()
    assert "FAIL" in table and "pass" in table and "80.0%" in table and ">= 85.0%" in table
    with pytest.raises(VerifyError) as err:
        report.raise_if_failed()
    assert err.value.exit_code == ExitCode.VERIFY
    assert "general (accuracy)" in str(err.value) and "FAIL" in err.value.render()


def test_gates_pass_when_nothing_changed(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    same = {"math": DomainEval(100, 1.0, 0.1), "general": DomainEval(100, 0.9, 0.2)}
    report = check_gates(plan, same, dict(same))
    assert report.passed
    report.raise_if_failed()


def test_gate_on_unevaluated_domain_is_a_build_error(tmp_path: Path) -> None:
    only_math = {"math": DomainEval(10, 1.0, 0.1)}
    with pytest.raises(BuildError, match="general"):
        check_gates(_plan(tmp_path), only_math, only_math)


@pytest.mark.parametrize("model_type", ["llava", "qwen2_vl"])
def test_batched_greedy_matches_generate_on_other_architectures(
    model_type: str, tiny_model: Any, tmp_path: Path
) -> None:
    """Left padding and positions: Llama RoPE (llava) and M-RoPE (qwen2_vl) both match."""
    import json

    from tiny_models import load_processor, sample_image
    from transformers import AutoModelForImageTextToText

    path = tiny_model(model_type, num_layers=2)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    processor = load_processor(model_type, path)
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(4):
        sample_image(seed=i).save(tmp_path / f"img/{i}.png")
        # Different question lengths, so the batch really is left-padded.
        lines.append(json.dumps({"image": f"img/{i}.png", "text": "what is it " * (i + 1)}))
    (tmp_path / "e.jsonl").write_text("\n".join(lines) + "\n")
    records = read_records(tmp_path / "e.jsonl")
    generated = [_reference_answer(model, processor, r) for r in records]
    labelled = [
        r.__class__(r.file, r.line, r.text, r.image, g)
        for r, g in zip(records, generated, strict=True)
    ]
    assert evaluate(model, processor, labelled, batch_size=4).accuracy == 1.0
