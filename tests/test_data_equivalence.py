"""Every data layout gives the records, the encoded inputs and the scores of the documented JSONL.

The reference is the same records written as documented (`{"image", "text", "answer"}` per
line). Scores come from `prunec.score` on a tiny real LLaVA with a fresh cache per layout: a
shared cache would hand back the reference's scores without running the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_layouts import LAYOUTS, RECORDS, serve, write_layout

from prunec.arch.loading import LoadedModel, load_model
from prunec.data import Record, encode, read_records
from prunec.data.images import open_rgb
from prunec.plan.model import Budget, DomainSpec, ModelSpec, Plan, PruneSpec
from prunec.scoring import score


@pytest.fixture(scope="module")
def llava(tiny_model) -> LoadedModel:
    return load_model(ModelSpec(source=str(tiny_model("llava", num_layers=2)), local=True))


@pytest.fixture(scope="module")
def server_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="module")
def base_url(server_root):
    with serve(server_root) as url:
        yield url


def _content(record: Record) -> tuple:
    """What a record feeds the model: text, turns, answer and the image's pixels."""
    pixels = open_rgb(record.image).tobytes() if record.image is not None else None
    return record.text, record.history, record.answer, pixels


def _plan(model_dir: Path, source, samples: int | None = None, seed: int = 0) -> Plan:
    domain = DomainSpec(
        name="d",
        data=source.data,
        fields=source.fields,
        split=source.split,
        samples=samples,
        seed=seed,
    )
    return Plan(
        model=ModelSpec(source=str(model_dir), local=True),
        domains=(domain,),
        prune=PruneSpec(budget=Budget(layers=1), batch_size=2),
    )


def _read(source, samples: int | None = None, seed: int = 0) -> list[Record]:
    return read_records(source.data, samples, seed, fields=source.fields, split=source.split)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, llava):
    directory = tmp_path_factory.mktemp("reference")
    source = write_layout("jsonl", directory, RECORDS)
    plan = _plan(llava.source_dir, source)
    scores = score(plan, llava, cache_dir=directory / "cache")
    return source, scores


def _layout(kind: str, tmp_path: Path, server_root: Path, base_url: str):
    if kind != "urls":
        return write_layout(kind, tmp_path, RECORDS)
    write_layout("jsonl", server_root, RECORDS)  # the served images
    return write_layout(kind, tmp_path, RECORDS, base_url)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_layout_gives_the_same_records_inputs_and_scores(
    kind, tmp_path, reference, llava, server_root, base_url, monkeypatch
):
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "prunec-cache"))  # URL downloads
    ref_source, ref_scores = reference
    source = _layout(kind, tmp_path / "data", server_root, base_url)
    expected, records = _read(ref_source), _read(source)
    assert [_content(r) for r in records] == [_content(r) for r in expected]
    for with_answer in (False, True):
        got = encode(llava.processor, records, 512, with_answer=with_answer)
        want = encode(llava.processor, expected, 512, with_answer=with_answer)
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    # Sampling picks the same records in every layout.
    assert [_content(r) for r in _read(source, 3, seed=5)] == [
        _content(r) for r in _read(ref_source, 3, seed=5)
    ]
    scores = score(_plan(llava.source_dir, source), llava, cache_dir=tmp_path / "cache")
    assert scores.domains == ref_scores.domains
    assert scores.fingerprints["data.d"] == ref_scores.fingerprints["data.d"]


def test_multi_turn_conversations_agree_and_keep_their_turns(tmp_path, llava):
    """A LLaVA conversation and the same chat `messages` encode alike, earlier turns as turns."""
    import json

    from data_layouts import write_images

    write_images(tmp_path)
    llava_row = {
        "image": "img/a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nwhat is in this picture"},
            {"from": "gpt", "value": "red circle"},
            {"from": "human", "value": "how many dots"},
            {"from": "gpt", "value": "two"},
        ],
    }
    chat_row = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "path": "img/a.png"},
                    {"type": "text", "text": "what is in this picture"},
                ],
            },
            {"role": "assistant", "content": "red circle"},
            {"role": "user", "content": [{"type": "text", "text": "how many dots"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
        ]
    }
    (tmp_path / "l.jsonl").write_text(json.dumps(llava_row) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps(chat_row) + "\n")
    (one,) = read_records(tmp_path / "l.jsonl")
    (two,) = read_records(tmp_path / "c.jsonl")
    assert one.text == "how many dots" and one.answer == "two" and one.image_in_history
    assert [(t.role, t.text, t.image) for t in one.history] == [
        ("user", "what is in this picture", True),
        ("assistant", "red circle", False),
    ]
    assert _content(one) == _content(two)
    batch = encode(llava.processor, [one], 512, with_answer=True)
    assert torch.equal(batch["input_ids"], encode(llava.processor, [two], 512, True)["input_ids"])
    tokens = llava.processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    # Two user turns and two assistant turns reach the template; only the last is the answer.
    assert tokens.count("user") == 2 and tokens.count("assistant") == 2
    answer = [t for t, m in zip(tokens, batch["answer_mask"][0], strict=True) if m]
    assert answer[:1] == ["two"] and "red" not in answer
    assert int(batch["pixel_values"].shape[0]) == 1


def test_score_cache_key_follows_the_content_of_the_data(tmp_path, llava):
    """The data fingerprint changes with the records fed (a field mapping that reads another
    column, an embedded image's bytes), not with how or where the file was written."""

    def fingerprint(source, name: str) -> str:
        plan = _plan(llava.source_dir, source)
        return score(plan, llava, cache_dir=tmp_path / name).fingerprints["data.d"]

    fields = write_layout("fields", tmp_path / "f", RECORDS)
    decoy = type(fields)(fields.data, fields.fields.model_copy(update={"text": "text"}))
    assert fingerprint(fields, "a") != fingerprint(decoy, "b")
    first = fingerprint(write_layout("parquet-embedded", tmp_path / "p1", RECORDS), "c")
    again = fingerprint(write_layout("parquet-embedded", tmp_path / "p2", RECORDS), "d")
    other_image = [{**r, "image": "a.png"} if r["image"] == "b.png" else r for r in RECORDS]
    changed = fingerprint(write_layout("parquet-embedded", tmp_path / "p3", other_image), "e")
    assert first == again != changed


@pytest.mark.parametrize("kind", ["fields", "parquet-chat", "folder"])
def test_verify_gates_read_eval_data_as_the_domain_says(kind, tmp_path, llava):
    """The build's gate evaluation reads `eval` and `on` data with the domain's `fields`
    and `eval_split`, and scores the same as the documented layout."""
    from prunec.pipeline import evaluate_domains
    from prunec.plan.model import VerifyGate, VerifySpec

    # Image records only: evaluation cannot batch image and text-only prompts together yet.
    answered = [r for r in RECORDS if r["answer"] is not None and r["image"]]

    def plan_for(source, on_gate: bool) -> Plan:
        domain = DomainSpec(
            name="d",
            data=source.data,
            eval=None if on_gate else source.data,
            fields=source.fields,
            eval_split=source.split,
        )
        gate = VerifyGate(domain="d", threshold=0.5, data=source.data if on_gate else None)
        return Plan(
            model=ModelSpec(source=str(llava.source_dir), local=True),
            domains=(domain,),
            prune=PruneSpec(remove=(1,), strategy="manual"),
            verify=VerifySpec(gates=(gate,)),
        )

    reference = write_layout("jsonl", tmp_path / "ref", answered)
    source = write_layout(kind, tmp_path / "alt", answered)
    expected = evaluate_domains(plan_for(reference, False), llava)["d"]
    assert expected.n == len(answered)
    assert evaluate_domains(plan_for(source, False), llava)["d"] == expected
    assert evaluate_domains(plan_for(source, True), llava)["d"] == expected
