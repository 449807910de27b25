"""The one-pass scoring engine on tiny real models: correctness, determinism, cache, devices."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prunec.arch import locate_decoder
from prunec.arch.loading import LoadedModel, load_model
from prunec.plan.model import Budget, DomainSpec, ModelSpec, Plan, PruneSpec
from prunec.planning import solve
from prunec.scoring import LayerScores, score
from prunec.scoring.engine import collect_scores

WORDS = "what is the red circle how many dots are there two plus three equals five blue square"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def text_rows(count: int, offset: int = 0) -> list[dict]:
    words = WORDS.split()
    return [
        {"text": " ".join(words[(i + offset) % 7 : (i + offset) % 7 + 3 + i % 5]), "answer": "five"}
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def llama(tiny_model) -> LoadedModel:
    return load_model(ModelSpec(source=str(tiny_model("llama", num_layers=5)), local=True))


def make_plan(model_dir: Path, data_dir: Path, batch_size: int = 3, **prune) -> Plan:
    math_file = write_jsonl(data_dir / "math.jsonl", text_rows(7))
    general_file = write_jsonl(data_dir / "general.jsonl", text_rows(5, offset=3))
    return Plan(
        model=ModelSpec(source=str(model_dir), local=True),
        domains=(
            DomainSpec(name="math", data=math_file, weight=0.7),
            DomainSpec(name="general", data=general_file, weight=0.3, samples=4, seed=1),
        ),
        prune=PruneSpec(budget=Budget(layers=2), batch_size=batch_size, **prune),
    )


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_scores_shape_and_reference(llama, tmp_path):
    plan = make_plan(llama.source_dir, tmp_path)
    scores = score(plan, llama, cache_dir=tmp_path / "cache")
    assert scores.num_layers == 5 and list(scores.domains) == ["math", "general"]
    math_stats = scores.domains["math"]
    assert math_stats.samples == 7 and scores.domains["general"].samples == 4
    assert all(-1 <= c <= 1 for c in math_stats.cos_all)
    # Reference: the same cosine from output_hidden_states, one sample at a time (no padding).
    from prunec.data import encode, read_records

    sums = torch.zeros(4, dtype=torch.float64)
    tokens = 0
    for record in read_records(plan.domains[0].data):
        inputs = encode(llama.processor, [record], 512)
        with torch.no_grad():
            hidden = llama.model(**inputs, output_hidden_states=True).hidden_states
        for layer in range(4):  # the last entry is after the final norm; skip it
            sums[layer] += torch.cosine_similarity(hidden[layer], hidden[layer + 1], dim=-1).sum()
        tokens += inputs["input_ids"].shape[1]
    assert math_stats.tokens == tokens
    expected = (sums / tokens).tolist()
    assert math_stats.cos_all[:4] == pytest.approx(expected, abs=1e-5)
    pairs = math_stats.pair_angular_last
    assert pairs is not None
    for layer in range(5):
        assert pairs[layer][layer] == pytest.approx(0.0, abs=1e-3)
        assert pairs[layer][layer + 1] == pytest.approx(math_stats.angular_last[layer], abs=1e-4)
        assert math_stats.angular_last[layer] == pytest.approx(
            math.acos(max(-1, min(1, math_stats.cos_last[layer]))) / math.pi, abs=0.05
        )


def test_deterministic_and_padding_masked(llama, tmp_path):
    wide = score(
        make_plan(llama.source_dir, tmp_path, batch_size=7), llama, cache_dir=tmp_path / "a"
    )
    single = score(
        make_plan(llama.source_dir, tmp_path, batch_size=1), llama, cache_dir=tmp_path / "b"
    )
    again = score(
        make_plan(llama.source_dir, tmp_path, batch_size=7), llama, cache_dir=tmp_path / "c"
    )
    assert again.to_json()["domains"] == wide.to_json()["domains"]
    for name in ("math", "general"):
        assert single.domains[name].cos_all == pytest.approx(wide.domains[name].cos_all, abs=1e-5)
        assert single.domains[name].cos_last == pytest.approx(wide.domains[name].cos_last, abs=1e-5)
        assert single.domains[name].tokens == wide.domains[name].tokens


def test_cache_skips_forward_passes(llama, tmp_path):
    calls = count_forwards(llama.model)
    plan = make_plan(llama.source_dir, tmp_path)
    first = score(plan, llama, cache_dir=tmp_path / "cache")
    assert calls[0] == 3 + 2  # ceil(7/3) + ceil(4/3) batches, one pass each
    replanned = make_plan(
        llama.source_dir, tmp_path, max_run=1, strategy="bi", spacing_weight=1.0
    ).model_copy(update={"prune": PruneSpec(budget=Budget(layers=1), strategy="bi")})
    second = score(replanned, llama, cache_dir=tmp_path / "cache")
    assert calls[0] == 5 and second == first
    no_model = score(plan, None, cache_dir=tmp_path / "cache")  # cache hit without loading
    assert no_model == first
    selection = solve(replanned, second, 5)
    assert len(selection.removed) == 1
    # Changed data is a different key: a new forward pass.
    write_jsonl(plan.domains[0].data, text_rows(7, offset=1))
    score(plan, llama, cache_dir=tmp_path / "cache")
    assert calls[0] > 5


def test_json_round_trip(llama, tmp_path):
    scores = score(make_plan(llama.source_dir, tmp_path), llama, cache_dir=tmp_path / "c")
    again = LayerScores.from_json(json.loads(json.dumps(scores.to_json())))
    assert again == scores
    assert again.importance("math") == pytest.approx(
        [1 - c for c in scores.domains["math"].cos_all]
    )


def test_device_map_split_over_cpu_placements(llama, tmp_path):
    from accelerate import dispatch_model

    dispatched = load_model(ModelSpec(source=str(llama.source_dir), local=True))
    stack = locate_decoder(dispatched.model)
    device_map = {"": "cpu"}
    device_map.update({f"{stack.path}.{i}": "cpu" for i in range(len(stack.layers))})
    # force_hooks: accelerate's per-module device hooks run even though every placement is
    # "cpu", which is what a real multi-device split adds around each layer.
    dispatch_model(
        dispatched.model, device_map={"model.embed_tokens": "cpu", **device_map}, force_hooks=True
    )
    assert all(hasattr(layer, "_hf_hook") for layer in stack.layers)
    plan = make_plan(llama.source_dir, tmp_path)
    split = score(plan, dispatched, cache_dir=tmp_path / "split")
    plain = score(plan, llama, cache_dir=tmp_path / "plain")
    assert split.domains["math"].cos_all == pytest.approx(plain.domains["math"].cos_all, abs=1e-6)


def test_vlm_with_images(tiny_model, tmp_path):
    from tiny_models import sample_image

    loaded = load_model(ModelSpec(source=str(tiny_model("llava", num_layers=4)), local=True))
    (tmp_path / "img").mkdir()
    for i in range(3):
        sample_image(32, seed=i).save(tmp_path / "img" / f"{i}.png")
    rows = [{"image": f"img/{i}.png", "text": "how many dots are there ?"} for i in range(3)]
    rows.append({"text": "two plus three equals"})
    data = write_jsonl(tmp_path / "vis.jsonl", rows)
    plan = Plan(
        model=ModelSpec(source=str(loaded.source_dir), local=True),
        domains=(DomainSpec(name="vision", data=data),),
        prune=PruneSpec(budget=Budget(layers=1), batch_size=2, strategy="domain"),
    )
    scores = score(plan, loaded, cache_dir=tmp_path / "cache")
    stats = scores.domains["vision"]
    assert scores.num_layers == 4 and stats.samples == 4
    assert stats.tokens > 4 * 20  # image tokens are part of the sequence
    assert len(solve(plan, scores, 4).removed) == 1


def test_iterative_ablation_order(llama, tmp_path):
    plan = make_plan(llama.source_dir, tmp_path, strategy="iterative", keep_first=1)
    scores = score(plan, llama, cache_dir=tmp_path / "cache")
    assert len(scores.iterative_order) == 2 and 0 not in scores.iterative_order
    selection = solve(plan, scores, 5)
    assert selection.removed == tuple(sorted(scores.iterative_order))
    assert selection.ranking == "iterative"


def test_collector_needs_every_layer(llama):
    layers = list(locate_decoder(llama.model).layers)
    extra = torch.nn.Linear(2, 2)  # a "layer" that never runs in the forward pass
    from prunec.errors import BuildError
    from prunec.scoring.engine import Batch

    inputs = {
        "input_ids": torch.tensor([[2, 5, 6]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
    }
    with pytest.raises(BuildError, match="did not run"):
        collect_scores(llama.model, [*layers, extra], iter([Batch("d", (), inputs)]), ["d"], 1)


def test_data_problems_of_every_domain_at_once(llama, tmp_path):
    plan = make_plan(llama.source_dir, tmp_path)
    plan.domains[0].data.write_text('{"text": "ok"}\n{"oops": 1}\n')
    plan.domains[1].data.write_text("")
    from prunec.errors import SpecError

    calls = count_forwards(llama.model)
    with pytest.raises(SpecError) as err:
        score(plan, llama, cache_dir=tmp_path / "cache")
    files = {Path(d.span.file).name for d in err.value.diagnostics if d.span}
    assert files == {"math.jsonl", "general.jsonl"} and calls[0] == 0
