"""`heal linear`: the least-squares correction per removed run, folded into the layer before it.

On the briefly trained testbed VLM (removal measurably hurts): the fit lowers its own
objective, folding is exact, a harmful correction is dropped, and a CLI build ships a standard
checkpoint that plain transformers loads and that matches the healed model in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from prunec.arch import locate_decoder, skip_layers
from prunec.arch.loading import LoadedModel, load_model
from prunec.errors import ExitCode, SpecError
from prunec.plan.model import ModelSpec
from prunec.planning import MeasuredObjective
from prunec.planning.heal import (
    LinearHealer,
    corrections_transform,
    heal_selection,
    healer_for,
    removed_runs,
    solve_correction,
)
from prunec.syntax import load_spec

SPEC = """\
model "{model}"

domain math {{
  data   "{data}/math_calib.jsonl"
  weight 0.7
}}

domain general {{
  data   "{data}/general_calib.jsonl"
  weight 0.3
}}

prune {{
  {selection}
  heal     linear{ridge}
}}

target hf "out/hf"
"""


def _spec(tmp_path: Path, testbed: Any, selection: str, ridge: str = "") -> Path:
    path = tmp_path / "tutor.prune"
    path.write_text(
        SPEC.format(model=testbed.model, data=testbed.data, selection=selection, ridge=ridge)
    )
    return path


@pytest.fixture(scope="module")
def testbed_model(quick_testbed: Any) -> LoadedModel:
    return load_model(ModelSpec(source=str(quick_testbed.model), local=True))


@pytest.fixture(scope="module")
def objective(quick_testbed: Any, testbed_model: LoadedModel, tmp_path_factory: Any) -> Any:
    plan = load_spec(_spec(tmp_path_factory.mktemp("spec"), quick_testbed, "remove 2, 3"))
    return plan, MeasuredObjective.from_plan(plan, testbed_model)


def _state_after(model: Any, inputs: Any, removed: tuple[int, ...], layer: int) -> Any:
    """(what layer `layer`'s down projection writes, the stream after that layer), with
    `removed` skipped, on one batch."""
    from prunec.scoring.engine import model_inputs

    layers = locate_decoder(model).layers
    got: dict[str, Any] = {}
    handles = [
        layers[layer].mlp.down_proj.register_forward_hook(
            lambda m, a, out: got.__setitem__("written", out)
        ),
        layers[layer].register_forward_hook(
            lambda m, a, out: got.__setitem__("after", out[0] if isinstance(out, tuple) else out)
        ),
    ]
    try:
        with torch.no_grad(), skip_layers(model, removed):
            model(**model_inputs(model, dict(inputs)), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return got["written"], got["after"]


def test_runs_and_the_closed_form() -> None:
    assert removed_runs([5, 1, 2, 7, 0]) == [(0, 1, 2), (5,), (7,)]
    # With M = I the fit must return Y exactly (no ridge); a huge ridge returns no correction.
    gram = torch.eye(3, dtype=torch.float64)
    cross = torch.tensor([[1.0, 2, 0], [0, -1, 0], [0, 0, 3]], dtype=torch.float64)
    assert torch.allclose(solve_correction(gram, cross, 0.0), torch.eye(3) + cross.float().double())
    assert torch.allclose(solve_correction(gram, cross, 1e12), torch.eye(3, dtype=torch.float64))


def test_fit_lowers_the_objective_and_folding_is_exact(
    objective: Any, testbed_model: LoadedModel
) -> None:
    plan, measured = objective
    healer = healer_for(plan, testbed_model, lambda: measured)
    removed = (2, 3)
    record, kept = heal_selection(healer, measured, removed, plan.prune.heal)
    assert [r.status for r in record.runs] == ["healed"] and record.runs[0].corrected == 1
    assert record.after < record.before  # held-out objective, measured with the fold applied
    # ...and on the data it was fitted on, the objective drops too.
    search = measured.evaluate(removed, "search").value
    # (a transform, so that no hidden state cached from the unhealed model is reused)
    healed = corrections_transform(healer, kept)
    assert measured.evaluate(removed, "search", transform=healed).value < search

    # Folding T into down_proj = applying it as a separate linear op to what the layer writes:
    # stream after layer 1 (healed) == stream (unhealed) - M + M T, float32 tolerance 1e-4.
    model = testbed_model.model
    _, inputs = next(iter(measured.iter_batches("search")))
    written, after = _state_after(model, inputs, removed, 1)
    with healer.applied(kept):
        written_healed, after_healed = _state_after(model, inputs, removed, 1)
    matrix = kept[1].to(torch.float64)
    expected = after.double() - written.double() + written.double() @ matrix
    assert torch.allclose(after_healed.double(), expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(written_healed.double(), written.double() @ matrix, atol=1e-4)
    # `applied` restores the original weights exactly.
    again, _ = _state_after(model, inputs, removed, 1)
    assert torch.equal(again, written)


def test_run_at_layer_zero_is_not_healed_and_a_harmful_fit_is_dropped(
    objective: Any, testbed_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan, measured = objective
    healer = healer_for(plan, testbed_model, lambda: measured)

    def harmful(self: LinearHealer, removed: Any, run: Any, corrections: Any) -> torch.Tensor:
        width = locate_decoder(testbed_model.model).text_config.hidden_size
        return -3.0 * torch.eye(width, dtype=torch.float64)  # flips and amplifies the MLP

    monkeypatch.setattr(LinearHealer, "fit_run", harmful)
    record, kept = heal_selection(healer, measured, (0, 3), plan.prune.heal)
    assert [(r.layers, r.status, r.corrected) for r in record.runs] == [
        ((0,), "not healed", None),
        ((3,), "dropped", 2),
    ]
    dropped = record.runs[1]
    assert dropped.after is not None and dropped.before is not None
    assert dropped.after > dropped.before and record.after == record.before
    assert kept == {} and record.corrected == ()


def test_gemma2_is_refused_with_a_clear_error(tiny_model: Any, tmp_path: Path) -> None:
    model = tiny_model("gemma2", num_layers=4)
    (tmp_path / "calib.jsonl").write_text('{"text": "a b c"}\n' * 4)
    spec = tmp_path / "g.prune"
    spec.write_text(
        f'model "{model}"\ndomain d {{ data "calib.jsonl" }}\n'
        "prune {\n  budget 1 layer\n  strategy last\n  heal linear\n}\n"
    )
    from prunec.pipeline import build
    from prunec.syntax import check_file

    codes = [d.code for d in check_file(spec).diagnostics]
    assert codes == ["E314"]
    with pytest.raises(SpecError) as err:
        build(spec, write_lock=False)
    message = str(err.value.diagnostics[0].message)
    assert "post_feedforward_layernorm" in message and "refused" in message
    loaded = load_model(ModelSpec(source=str(model), local=True))
    with pytest.raises(Exception, match="cannot fold"):
        LinearHealer(loaded.model, lambda: [], {"d": 1.0}, 1e-3)


def _run(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_build_ships_a_healed_standard_checkpoint(
    quick_testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("PRUNEC_CACHE_DIR", str(tmp_path / "cache"))
    spec = _spec(tmp_path, quick_testbed, "remove 2, 3", " ridge 1e-4")
    assert _run("build", str(spec)) == ExitCode.OK
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "heal linear (ridge 0.0001): 1 of 1 runs corrected" in err, err

    lock = json.loads((tmp_path / "tutor.prune.lock").read_text())
    healing = lock["healing"]
    assert healing["method"] == "linear" and healing["ridge"] == 1e-4
    assert healing["projection"] == "mlp.down_proj" and healing["part"] == "held_out"
    assert [r["status"] for r in healing["runs"]] == ["healed"]
    assert healing["after"] < healing["before"]
    card = (tmp_path / "out" / "hf" / "README.md").read_text()
    assert "### Healing" in card and "| 2-3 | 1 | healed |" in card

    # Plain transformers loads it (same class, same parameter names, no prunec) and it equals
    # the healed model in memory: the source with layers 2-3 removed and the fold applied.
    import transformers

    out = tmp_path / "out" / "hf"
    shipped = transformers.AutoModelForImageTextToText.from_pretrained(out).eval()
    plan = load_spec(spec)
    loaded = load_model(plan.model)
    source = loaded.model
    assert type(shipped) is type(source)
    measured = MeasuredObjective.from_plan(plan, loaded)
    healer = healer_for(plan, loaded, lambda: measured)
    record, kept = heal_selection(healer, measured, (2, 3), plan.prune.heal)
    assert record.to_json() | {"seconds": 0} == healing | {"seconds": 0}
    healer.fold(kept)
    from prunec.arch import remove_layers

    remove_layers(source, [2, 3])
    # Streamed from the source's shards with the healed projection written from memory:
    # every tensor equals the in-memory healed model's, bit for bit.
    manifest = json.loads((out / "prunec-manifest.json").read_text())
    assert manifest["mode"] == "streaming"
    shipped_state, healed_state = shipped.state_dict(), source.state_dict()
    assert set(shipped_state) == set(healed_state)
    assert all(torch.equal(shipped_state[k], healed_state[k]) for k in healed_state)
    layer = locate_decoder(shipped).layers[1].mlp.down_proj.weight
    original = load_model(ModelSpec(source=str(quick_testbed.model), local=True)).model
    assert not torch.allclose(layer, locate_decoder(original).layers[1].mlp.down_proj.weight)
    _, inputs = next(iter(measured.iter_batches("held_out")))
    from prunec.scoring.engine import model_inputs

    with torch.no_grad():
        got = shipped(**model_inputs(shipped, dict(inputs))).logits
        want = source(**model_inputs(source, dict(inputs))).logits
    assert torch.allclose(got, want, atol=1e-4)


# ------------------------------------------------------------------ architectures, ONNX

WORDS = ["red", "green", "blue", "one", "two", "three", "four", "five", "the", "dots"]


def _text_records(count: int) -> list[Any]:
    from prunec.data import Record

    return [
        Record(Path("calib.jsonl"), i + 1, " ".join(WORDS[i % 5 : i % 5 + 3 + i % 4]), None, None)
        for i in range(count)
    ]


def _fitted(loaded: LoadedModel, removed: tuple[int, ...]) -> tuple[LinearHealer, Any, Any]:
    records = {"d": _text_records(8)}
    measured = MeasuredObjective(loaded.model, loaded.processor, records, {"d": 1.0})
    healer = LinearHealer(
        loaded.model, lambda: measured.iter_batches("search"), {"d": 1.0}, ridge=1e-3
    )
    return healer, healer.fit_all(removed), measured


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl", "idefics3", "phi3"])
def test_folding_is_exact_on_each_architecture(tiny_model: Any, model_type: str) -> None:
    """Layer 1 writes M T after the fold: the stream after it moves by exactly M (T - I).
    (Qwen3-VL adds visual features between layers; text records leave them out here.)"""
    loaded = load_model(ModelSpec(source=str(tiny_model(model_type, num_layers=4)), local=True))
    healer, corrections, measured = _fitted(loaded, (2,))
    assert list(corrections) == [1]
    matrix = corrections[1]
    assert not torch.allclose(matrix, torch.eye(matrix.shape[0], dtype=matrix.dtype))
    _, inputs = next(iter(measured.iter_batches("search")))
    written, after = _state_after(loaded.model, inputs, (2,), 1)
    with healer.applied(corrections):
        _, after_healed = _state_after(loaded.model, inputs, (2,), 1)
    expected = after.double() + written.double() @ (matrix - torch.eye(matrix.shape[0]).double())
    scale = float(after.abs().max())
    assert torch.allclose(after_healed.double(), expected, atol=1e-5 * max(scale, 1.0))


@pytest.mark.slow  # an ONNX export with its parity run: about a minute on two cores
def test_healed_onnx_matches_the_healed_model(tiny_model: Any, tmp_path: Path) -> None:
    from prunec.arch import remove_layers
    from prunec.backends.onnx import OnnxOptions, emit_onnx

    loaded = load_model(ModelSpec(source=str(tiny_model("llama", num_layers=4)), local=True))
    healer, corrections, _ = _fitted(loaded, (2,))
    before = locate_decoder(loaded.model).layers[1].mlp.down_proj.weight.detach().clone()
    healer.fold(corrections)
    remove_layers(loaded.model, [2])
    healed = locate_decoder(loaded.model).layers[1].mlp.down_proj.weight
    assert not torch.allclose(before, healed)  # the export below carries a changed weight
    report = emit_onnx(loaded.model, loaded.processor, tmp_path / "onnx", target=OnnxOptions())
    assert report.max_abs_diff["decoder"] <= 1e-4  # parity with the healed model in memory


def test_auto_measures_candidates_healed(
    quick_testbed: Any, testbed_model: LoadedModel, tmp_path: Path
) -> None:
    from prunec.planning import SearchContext, solve
    from prunec.planning.heal import search_transform
    from prunec.scoring import score

    spec = _spec(tmp_path, quick_testbed, "budget   2 layers\n  strategy auto\n  search   3")
    plan = load_spec(spec)
    scores = score(plan, testbed_model, cache_dir=tmp_path / "cache")
    context = SearchContext(plan, testbed_model, cache_dir=tmp_path / "cache", progress=False)
    healer = healer_for(plan, testbed_model, context.objective)
    context.transform = search_transform(lambda: healer, plan.prune.heal)
    summary = solve(plan, scores, context=context).search
    assert summary is not None
    measured = context.objective()
    for candidate in summary.candidates:
        if not candidate.complete:
            continue
        corrections = healer.fit_all(candidate.removed)
        transform = corrections_transform(healer, corrections) if corrections else None
        healed = measured.evaluate(candidate.removed, "search", transform=transform).value
        assert candidate.search == pytest.approx(healed, rel=1e-6)
        if corrections:  # a healed candidate is not measured as the unhealed set would be
            plain = measured.evaluate(candidate.removed, "search").value
            assert candidate.search != pytest.approx(plain, rel=1e-6)


def test_fits_are_cached_within_a_memory_bound(
    objective: Any, testbed_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prunec.planning.heal as heal

    plan, measured = objective
    healer = healer_for(plan, testbed_model, lambda: measured)
    first = healer.fit_all((2, 3))
    assert healer.fits == 1 and healer.fit_all((2, 3))[1] is first[1]  # reused, not refitted
    monkeypatch.setattr(heal, "CACHE_BYTES", first[1].numel() * 8)  # room for one fit
    healer.fit_all((3,))
    assert healer.fits == 2 and len(healer._cache) == 1
    assert torch.equal(healer.fit_all((2, 3))[1], first[1]) and healer.fits == 3


def test_refusal_reads_the_text_decoder_of_a_vlm() -> None:
    from prunec.arch.table import heal_refusal

    assert heal_refusal({"model_type": "llava", "text_config": {"model_type": "llama"}}) is None
    assert heal_refusal({"model_type": "paligemma", "text_config": {"model_type": "gemma"}}) is None
    # PaliGemma 2 wraps a Gemma 2 decoder: normalised MLP output, refused.
    paligemma2 = {"model_type": "paligemma", "text_config": {"model_type": "gemma2"}}
    assert "post_feedforward_layernorm" in str(heal_refusal(paligemma2))
    assert "not in the architecture table" in str(heal_refusal({"model_type": "mamba"}))
