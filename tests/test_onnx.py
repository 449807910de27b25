"""ONNX backend: export, onnx.checker, onnxruntime-vs-PyTorch parity, int8, and the runner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from tiny_models import SPECS, load_processor, sample_image, sample_inputs

from prunec.backends.onnx import OnnxOptions, check_onnx_supported, emit_onnx
from prunec.backends.onnx.report import OnnxReport
from prunec.errors import BuildError
from prunec.runtime import Manifest, OnnxGenerator

TEXT_TYPES = ("llama", "qwen2", "qwen3")
VLM_TYPES = ("llava", "idefics3", "gemma3", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
PROMPT = "how many dots are there ?"
NEW_TOKENS = 10


@dataclass(frozen=True)
class Artifact:
    model: Any
    processor: Any
    directory: Path
    report: OnnxReport


def _load(path: Path, model_type: str) -> tuple[Any, Any]:
    import transformers

    model = getattr(transformers, SPECS[model_type].model_class).from_pretrained(path).eval()
    return model, load_processor(model_type, path)


def _samples(model_type: str, processor: Any) -> list[dict[str, Any]]:
    samples = [sample_inputs(model_type, processor)]
    tok = getattr(processor, "tokenizer", processor)
    # a left-padded batch of two checks that padding positions are masked out
    samples.append(
        dict(
            tok(
                ["two plus three", "what is the red circle ? 5 dots"],
                padding=True,
                return_tensors="pt",
            )
        )
    )
    return samples


@pytest.fixture(scope="session")
def artifact(
    tiny_model: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Artifact]:
    """Factory: the ONNX artifact of a tiny model, exported once per option set."""
    cache: dict[tuple[Any, ...], Artifact] = {}

    def make(
        model_type: str, quantize: str = "none", kv_cache: bool = True, remove: tuple[int, ...] = ()
    ) -> Artifact:
        key = (model_type, quantize, kv_cache, remove)
        if key not in cache:
            model, processor = _load(tiny_model(model_type, num_layers=3), model_type)
            if remove:
                from prunec.arch import remove_layers

                remove_layers(model, remove)
            out = tmp_path_factory.mktemp(f"onnx-{model_type}-{quantize}")
            target = OnnxOptions(quantize=quantize, kv_cache=kv_cache)  # type: ignore[arg-type]
            report = emit_onnx(
                model, processor, out, target=target, sample_inputs=_samples(model_type, processor)
            )
            cache[key] = Artifact(model, processor, out, report)
        return cache[key]

    return make


def _hf_prompt(art: Artifact, with_image: bool) -> dict[str, Any]:
    """The prompt as transformers builds it (chat template, processor) for `PROMPT`."""
    content: Any = PROMPT
    if with_image:
        content = [{"type": "image"}, {"type": "text", "text": PROMPT}]
    messages = [{"role": "user", "content": content}]
    text = art.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if with_image:
        return dict(art.processor(text=text, images=sample_image(), return_tensors="pt"))
    tok = getattr(art.processor, "tokenizer", art.processor)
    return dict(tok(text, return_tensors="pt"))


def _torch_tokens(art: Artifact, inputs: dict[str, Any]) -> list[int]:
    with torch.no_grad():
        out = art.model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]


def _run_cli(directory: Path, *extra: str) -> list[int]:
    from prunec.cli import cli

    args = [
        "run",
        str(directory),
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        str(NEW_TOKENS),
        "--ids",
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 0, result.output
    return [int(t) for t in result.stdout.strip().splitlines()[-1].split()]


# --- export, checker, parity -----------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type",
    [*TEXT_TYPES, *VLM_TYPES],
)
def test_graphs_check_and_match_pytorch(artifact: Callable[..., Artifact], model_type: str) -> None:
    art = artifact(model_type)
    manifest = Manifest.read(art.directory)
    is_vlm = model_type in VLM_TYPES
    roles = {"embed_tokens", "decoder"} | ({"vision_encoder"} if is_vlm else set())
    assert set(manifest.graphs) == roles == set(art.report.max_abs_diff)
    for graph in manifest.graphs.values():
        onnx.checker.check_model(str(art.directory / graph.file))
    decoder = manifest.graphs["decoder"]
    names = [t.name for t in decoder.inputs]
    assert names[:4] == ["inputs_embeds", "attention_mask", "position_ids", "logits_indices"]
    assert ("token_type_ids" in names) == manifest.token_type_ids == (model_type == "gemma3")
    extras = manifest.token_type_ids + (manifest.deepstack_layers > 0)
    assert len(names) == 4 + extras + 2 * manifest.num_layers
    assert manifest.num_layers == 3
    assert decoder.inputs[1].shape == ("batch", "total_sequence_length")
    mrope = model_type in {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
    assert manifest.deepstack_layers == (3 if model_type == "qwen3_vl" else 0)
    assert manifest.position_ids == ("mrope" if mrope else "1d")
    expected_positions = ("batch", "sequence_length")
    assert decoder.inputs[2].shape == ((3, *expected_positions) if mrope else expected_positions)
    assert decoder.outputs[1].shape[1:] == (
        manifest.num_kv_heads,
        decoder.outputs[1].shape[2],
        manifest.head_dim,
    )
    for role, diff in art.report.max_abs_diff.items():
        assert diff <= 1e-4, (role, diff)
    assert art.report.greedy_token_agreement == 1.0
    assert (art.directory / "config.json").is_file() and (
        art.directory / "tokenizer.json"
    ).is_file()


def test_manifest_describes_runner_inputs(artifact: Callable[..., Artifact]) -> None:
    art = artifact("llava")
    data = json.loads((art.directory / "onnx-manifest.json").read_text())
    assert data["image_token_id"] == art.model.config.image_token_id
    assert data["image_tokens_per_image"] == 17  # 4x4 patches + CLS ("full" strategy)
    assert data["eos_token_ids"] == [3] and data["position_ids"] == "1d"
    assert data["graphs"]["vision_encoder"]["outputs"][0]["shape"] == [1, 17, 64]


def test_parity_failure_raises_build_error(
    artifact: Callable[..., Artifact], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prunec.backends.onnx import emit
    from prunec.backends.onnx.arch import arch_for
    from prunec.backends.onnx.parity import to_sample

    art = artifact("llama")
    monkeypatch.setattr(emit, "BASE_TOLERANCE", 1e-12)
    monkeypatch.setattr(emit, "RELATIVE_TOLERANCE", 0.0)
    samples = [to_sample(s) for s in _samples("llama", art.processor)]
    with pytest.raises(BuildError, match="parity failed: decoder"):
        emit._float_parity(art.model, art.directory, arch_for("llama"), samples)


def test_unsupported_architecture_fails_before_any_work(tmp_path: Path) -> None:
    import transformers

    with pytest.raises(BuildError, match="`paligemma`"):
        check_onnx_supported("paligemma")
    with pytest.raises(BuildError, match=r"`bert`.*supported: gemma3, idefics3, llama, llava, "):
        check_onnx_supported("bert")
    spec = SPECS["mistral3"]
    model = getattr(transformers, spec.model_class)(spec.config(2))
    out = tmp_path / "never"
    with pytest.raises(BuildError, match=r"`mistral3`"):
        emit_onnx(model, None, out, target=OnnxOptions())
    assert not out.exists()


# --- the runner --------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", TEXT_TYPES)
def test_run_matches_pytorch_generate_text(
    artifact: Callable[..., Artifact], model_type: str
) -> None:
    art = artifact(model_type)
    expected = _torch_tokens(art, _hf_prompt(art, with_image=False))
    assert _run_cli(art.directory) == expected


@pytest.mark.parametrize("with_image", [True, False])
@pytest.mark.parametrize("model_type", VLM_TYPES)
def test_run_matches_pytorch_generate_vlm(
    artifact: Callable[..., Artifact], tmp_path: Path, model_type: str, with_image: bool
) -> None:
    art = artifact(model_type)
    inputs = _hf_prompt(art, with_image)
    expected = _torch_tokens(art, inputs)
    extra: list[str] = []
    if with_image:
        sample_image().save(tmp_path / "image.png")
        extra = ["--image", str(tmp_path / "image.png")]
    assert _run_cli(art.directory, *extra) == expected


def test_run_imports_no_torch(artifact: Callable[..., Artifact]) -> None:
    art = artifact("llama")
    code = (
        "import sys\n"
        "from prunec.cli import cli\n"
        f"cli.main(args=['run', {str(art.directory)!r}, '--prompt', 'two plus', '--max-new-tokens', '3'],"
        " standalone_mode=False)\n"
        "print('LOADED', 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED False False" in out.stdout, out.stdout + out.stderr


# --- options: int8, no KV cache, pruned model -----------------------------------------------


def test_int8_reports_agreement_and_runs(artifact: Callable[..., Artifact]) -> None:
    art = artifact("llama", quantize="int8")
    report = art.report
    assert report.int8_logit_max_abs_diff is not None and report.int8_top1_agreement is not None
    assert report.int8_logit_max_abs_diff < 0.5 and report.int8_top1_agreement >= 0.5
    assert 0.0 <= report.greedy_token_agreement <= 1.0
    decoder = onnx.load(str(art.directory / Manifest.read(art.directory).graphs["decoder"].file))
    assert any(
        node.op_type in {"MatMulInteger", "DynamicQuantizeLinear"} for node in decoder.graph.node
    )
    assert Manifest.read(art.directory).quantize == "int8"
    assert len(_run_cli(art.directory)) >= 1


def test_kv_cache_off_matches_generate(artifact: Callable[..., Artifact]) -> None:
    art = artifact("llama", kv_cache=False)
    manifest = Manifest.read(art.directory)
    assert not manifest.kv_cache
    assert [t.name for t in manifest.graphs["decoder"].inputs] == [
        "inputs_embeds",
        "attention_mask",
        "position_ids",
        "logits_indices",
    ]
    assert _run_cli(art.directory) == _torch_tokens(art, _hf_prompt(art, with_image=False))


def test_pruned_model_exports_and_matches(artifact: Callable[..., Artifact]) -> None:
    art = artifact("llama", remove=(1,))
    manifest = Manifest.read(art.directory)
    assert manifest.num_layers == 2
    assert art.report.max_abs_diff["decoder"] <= 1e-4
    assert _run_cli(art.directory) == _torch_tokens(art, _hf_prompt(art, with_image=False))


def test_generator_prompt_embeds_places_image_features(artifact: Callable[..., Artifact]) -> None:
    art = artifact("llava")
    gen = OnnxGenerator(art.directory, threads=1)
    inputs = _hf_prompt(art, with_image=True)
    ids = inputs["input_ids"].numpy()
    embeds = gen.prompt_embeds(ids, inputs["pixel_values"].numpy())
    with torch.no_grad():
        feats = art.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
    slots = ids[0] == art.model.config.image_token_id
    np.testing.assert_allclose(embeds[0, slots], feats.numpy(), atol=1e-5)


def test_pruned_qwen3_vl_keeps_deepstack_consistent(
    artifact: Callable[..., Artifact], tmp_path: Path
) -> None:
    # layer 1 receives deepstack feature 1: removing it drops that feature too
    art = artifact("qwen3_vl", remove=(1,))
    manifest = Manifest.read(art.directory)
    assert manifest.num_layers == 2 and manifest.deepstack_layers == 2
    assert max(art.report.max_abs_diff.values()) <= 1e-4
    sample_image().save(tmp_path / "image.png")
    expected = _torch_tokens(art, _hf_prompt(art, with_image=True))
    assert _run_cli(art.directory, "--image", str(tmp_path / "image.png")) == expected


def test_export_failure_is_a_build_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import transformers

    from prunec.backends.onnx import export

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unsupported operator aten::frobnicate\ndetails")

    monkeypatch.setattr(export, "export_embed", broken)
    spec = SPECS["llama"]
    model = getattr(transformers, spec.model_class)(spec.config(1)).eval()
    with pytest.raises(
        BuildError, match="exporting llama to ONNX failed: RuntimeError: unsupported"
    ):
        emit_onnx(model, None, tmp_path / "out", target=OnnxOptions())
