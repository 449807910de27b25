"""Architecture table, decoder location (incl. fallback), surgery and loading, in process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_TYPES, load_processor, sample_inputs

from prunec.arch import (
    arch_entry,
    known_model_types,
    locate_decoder,
    remove_layers,
    skip_layers,
)
from prunec.arch.loading import hub_reachable, load_model
from prunec.arch.table import deepstack_positions, layer_field_updates
from prunec.errors import BuildError
from prunec.plan.model import ModelSpec


def _load(path: Path):
    return load_model(ModelSpec(source=str(path), local=True))


def _logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_table_covers_every_tiny_type() -> None:
    assert set(TINY_TYPES) <= set(known_model_types())
    entry = arch_entry("qwen2")
    assert entry is not None and entry.recompute == {"max_window_layers": "count_kept_below"}
    assert arch_entry("no_such_model") is None


def test_layer_field_updates_slices_and_recomputes() -> None:
    entry = arch_entry("qwen2")
    assert entry is not None
    values = {
        "num_hidden_layers": 6,
        "layer_types": ["full_attention"] * 4 + ["sliding_attention"] * 2,
        "max_window_layers": 4,
    }
    got = layer_field_updates(values, entry, [0, 2, 4, 5], 6)
    assert got == {
        "num_hidden_layers": 4,
        "layer_types": [
            "full_attention",
            "full_attention",
            "sliding_attention",
            "sliding_attention",
        ],
        "max_window_layers": 2,
    }
    assert deepstack_positions(3, [0, 2, 3, 4, 5]) == [0, 2]
    assert deepstack_positions(3, [1, 2, 3]) == [1, 2]


@pytest.mark.parametrize("model_type", ["gemma3_text", "qwen2", "qwen3_vl"])
def test_skip_matches_remove_and_restores(tiny_model, model_type: str) -> None:
    path = tiny_model(model_type)
    loaded = _load(path)
    model = loaded.model
    inputs = sample_inputs(model_type, load_processor(model_type, path))
    remove = [1, 3]
    full = _logits(model, inputs)
    layer_idx_before = [layer.self_attn.layer_idx for layer in locate_decoder(model).layers]
    with skip_layers(model, remove) as layer_map:
        assert layer_map == {0: 0, 2: 1, 4: 2, 5: 3}
        skipped = _logits(model, inputs)
        assert [lay.self_attn.layer_idx for lay in locate_decoder(model).layers] == [0, 1, 2, 3]
    assert [lay.self_attn.layer_idx for lay in locate_decoder(model).layers] == layer_idx_before
    torch.testing.assert_close(_logits(model, inputs), full, rtol=0, atol=0)
    assert (skipped - full).abs().max() > 1e-3  # the layers really were skipped

    old_types = getattr(locate_decoder(model).text_config, "layer_types", None)
    remove_layers(model, remove)
    stack = locate_decoder(model)
    torch.testing.assert_close(_logits(model, inputs), skipped, rtol=0, atol=0)
    assert len(stack.layers) == stack.text_config.num_hidden_layers == 4
    if old_types is not None:
        assert stack.text_config.layer_types == [old_types[i] for i in (0, 2, 4, 5)]
    for new, layer in enumerate(stack.layers):
        idx = [
            m.layer_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)
        ]
        assert idx and set(idx) == {new}


def test_qwen2_max_window_layers_recomputed(tiny_model) -> None:
    model = _load(tiny_model("qwen2")).model
    assert model.config.max_window_layers == 4
    remove_layers(model, [0, 5])
    assert model.config.max_window_layers == 3
    assert model.config.layer_types == ["full_attention"] * 3 + ["sliding_attention"]


def test_qwen3_vl_deepstack_follows_its_layers(tiny_model) -> None:
    model = _load(tiny_model("qwen3_vl")).model
    visual = model.model.visual
    assert model.config.vision_config.deepstack_visual_indexes == [0, 1, 2]
    kept_merger = visual.deepstack_merger_list[2]
    remove_layers(model, [1])
    assert model.config.vision_config.deepstack_visual_indexes == [0, 2]
    assert visual.deepstack_visual_indexes == [0, 2]
    assert len(visual.deepstack_merger_list) == 2
    assert visual.deepstack_merger_list[1] is kept_merger


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ([6], "valid indices are 0..5"),
        ([-1], "valid indices"),
        ([2, 2], "more than once"),
        ([0, 1, 2, 3, 4, 5], "keep at least one"),
    ],
)
def test_bad_remove_lists(tiny_model, remove: list[int], message: str) -> None:
    model = _load(tiny_model("llama")).model
    with pytest.raises(BuildError, match=message):
        remove_layers(model, remove)
    assert len(locate_decoder(model).layers) == 6  # nothing half-done


def test_unknown_architecture_fallback(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "olmo2",
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    assert arch_entry("olmo2") is None
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    stack = locate_decoder(model)
    assert not stack.known and stack.path == "model.layers"
    with skip_layers(model, [2]):
        reference = _logits(model, {"input_ids": ids})
    remove_layers(model, [2])
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_logits(reloaded.eval(), {"input_ids": ids}), reference)
    reloaded.generate(ids, max_new_tokens=3, do_sample=False)


class _TwoStacks(torch.nn.Module):
    """Not a known architecture: two equally plausible stacks of repeated blocks."""

    def __init__(self) -> None:
        from transformers import LlamaConfig

        super().__init__()
        self.config = LlamaConfig(num_hidden_layers=3)
        self.config.model_type = "two_stacks"
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))


def test_ambiguous_stack_fails_clearly() -> None:
    with pytest.raises(BuildError, match=r"cannot tell which layer stack.*blocks.*layers"):
        locate_decoder(_TwoStacks())


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="model directory not found"):
        load_model(ModelSpec(source=str(tmp_path / "missing"), local=True))
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    (bogus / "config.json").write_text(json.dumps({"model_type": "surely_not_a_model"}))
    with pytest.raises(BuildError, match="cannot load the config"):
        load_model(ModelSpec(source=str(bogus), local=True))


def test_load_model_fields(tiny_model) -> None:
    path = tiny_model("llava")
    loaded = load_model(ModelSpec(source=str(path), local=True, dtype="bfloat16"))
    assert loaded.num_layers == 6 and loaded.source_dir == path
    assert type(loaded.processor).__name__ == "LlavaProcessor"
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_unknown_vlm_fallback_picks_the_language_stack(tmp_path: Path) -> None:
    from tiny_models import _siglip_vision, _text
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision(),
        text_config=_text(
            "qwen2", 4, use_sliding_window=True, sliding_window=4, max_window_layers=2
        ).to_dict(),
        image_token_index=4,
        image_grid_pinpoints=[[32, 32]],
    )
    assert arch_entry(config.model_type) is None
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    stack = locate_decoder(model)
    assert not stack.known and stack.path == "model.language_model.layers"
    ids = torch.tensor([[2, *range(10, 20)]])
    with skip_layers(model, [1]):
        reference = _logits(model, {"input_ids": ids})
    remove_layers(model, [1])
    text = model.config.text_config
    assert text.num_hidden_layers == 3 and text.max_window_layers == 1
    assert text.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    model.save_pretrained(tmp_path)
    reloaded, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(_logits(reloaded.eval(), {"input_ids": ids}), reference)


@pytest.mark.skipif(hub_reachable(), reason="the hub is reachable from this machine")
def test_unreachable_hub_fails_fast_with_a_clear_reason() -> None:
    started = time.perf_counter()
    with pytest.raises(BuildError, match="hub cannot be reached and the model is not in the local"):
        load_model(ModelSpec(source="prunec-tests/no-such-model"))
    assert time.perf_counter() - started < 10  # huggingface_hub alone retries for ~25 s
