"""Streaming emission: safetensors shards pruned on disk reload as the skipped original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_models import SPECS, TINY_TYPES, load_processor, sample_inputs

from prunec.arch import skip_layers
from prunec.backends.hf.stream import read_header, stream_prune_checkpoint
from prunec.errors import BuildError

REMOVE = [1, 4]


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_streamed_checkpoint_matches_skipped_original(
    tiny_model, tmp_path: Path, model_type: str
) -> None:
    import transformers

    model_class = getattr(transformers, SPECS[model_type].model_class)
    source = tiny_model(model_type)
    model = model_class.from_pretrained(source).eval()
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    for path in source.glob("tokenizer*"):
        shutil.copy(path, sharded / path.name)
    inputs = sample_inputs(model_type, load_processor(model_type, source))
    with torch.no_grad(), skip_layers(model, REMOVE):
        reference = model(**inputs).logits
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 2

    out = tmp_path / "out"
    report = stream_prune_checkpoint(sharded, out, REMOVE)
    assert report.layer_map == {0: 0, 2: 1, 3: 2, 5: 3} and report.tensors_dropped > 0
    reloaded, info = model_class.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, reference, rtol=0, atol=1e-5)
    reloaded.generate(**inputs, max_new_tokens=2, do_sample=False)
    names = [n for s in out.glob("*.safetensors") for n in read_header(s)[0]]
    assert not any(".layers.4." in n or ".layers.5." in n for n in names)  # renumbered 0..3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {n for n in names if n != "__metadata__"}
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()


def test_streaming_rejects_bad_input(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"valid indices are 0\.\.5"):
        stream_prune_checkpoint(tiny_model("llama"), tmp_path / "a", [9])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(BuildError, match="no safetensors weights"):
        stream_prune_checkpoint(empty, tmp_path / "b", [1])
