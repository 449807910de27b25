"""`target genai`: onnxruntime-genai folders from tiny real models, checked from the outside.

Each build goes through `prunec build` (the API or the CLI); the published folder is then loaded
with `onnxruntime_genai` alone and its free-running greedy tokens compared with transformers'
on the same pruned model. Tiny models use byte-level BPE tokenizers (onnxruntime-genai cannot
read WordLevel ones).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og
import pytest
import torch

from prunec.backends.genai import GENAI_TYPES, NOT_SUPPORTED, VERIFIED, GenaiReport
from prunec.errors import ExitCode

PROMPT = "what is in this image ? two plus three equals five . how many red dots are there"
TOKENS = 12
TEXT_TYPES = [t for t in VERIFIED if not GENAI_TYPES[t].vision]


def _run(*argv: str) -> int:
    from prunec.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _spec(tmp_path: Path, model: Path, targets: str, remove: str = "1") -> Path:
    spec = tmp_path / "edge.prune"
    spec.write_text(f'model "{model}"\n\nprune {{\n  remove {remove}\n}}\n\n{targets}\n')
    return spec


def _pruned_transformers(source: Path, removed: list[int]) -> Any:
    from prunec.arch import remove_layers
    from prunec.arch.loading import load_model
    from prunec.plan.model import ModelSpec

    loaded = load_model(ModelSpec(source=str(source), local=True))
    remove_layers(loaded.model, removed)
    return loaded


def _og_greedy(folder: Path, start: Any, length: int) -> list[int]:
    """Free-running greedy tokens of the folder after a `length`-token prompt (`start` feeds
    the prompt to the generator)."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=length + TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    start(model, generator)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def _hf_greedy(model: Any, inputs: dict[str, Any]) -> list[int]:
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=TOKENS, do_sample=False)
    return [int(t) for t in out[0, inputs["input_ids"].shape[1] :]]


@pytest.mark.parametrize("model_type", TEXT_TYPES)
def test_text_folder_loads_and_gives_transformers_greedy_tokens(
    model_type: str, tiny_model: Any, tmp_path: Path
) -> None:
    from prunec import build

    source = tiny_model(model_type, num_layers=3, tokenizer="bpe")
    spec = _spec(tmp_path, source, 'target genai "edge"')
    (result,) = build(spec, write_lock=False).targets
    report: GenaiReport = result.report
    assert (report.agreement, report.threshold, report.precision) == (1.0, 1.0, "fp32")
    assert report.tokens >= 2 * 16 and report.tokenizer_prompts >= 2
    assert report.max_abs_logit_diff < 1e-4
    folder = tmp_path / "edge"
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["decoder"]["num_hidden_layers"] == 2  # 3 minus the removed one

    loaded = _pruned_transformers(source, [1])
    ids = loaded.processor(PROMPT)["input_ids"]
    og_ids = og.Tokenizer(og.Model(str(folder))).encode(PROMPT).tolist()
    assert og_ids == ids
    tensor = torch.tensor([ids])
    expected = _hf_greedy(
        loaded.model, {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}
    )
    got = _og_greedy(folder, lambda _m, g: g.append_tokens(ids), len(ids))
    assert got == expected and len(got) > 0


def test_vlm_folder_gives_transformers_greedy_tokens_on_an_image_prompt(
    tiny_model: Any, tmp_path: Path
) -> None:
    from PIL import Image

    from prunec import build

    source = tiny_model("qwen2_5_vl", num_layers=3, tokenizer="bpe")
    spec = _spec(tmp_path, source, 'target genai "edge"')
    (result,) = build(spec, write_lock=False).targets
    report: GenaiReport = result.report
    assert report.image_prompts == 1 and report.agreement == 1.0
    folder = tmp_path / "edge"
    config = json.loads((folder / "genai_config.json").read_text())["model"]
    assert config["type"] == "qwen2_5_vl"
    assert {config["vision"]["filename"], config["embedding"]["filename"]} <= {
        p.name for p in folder.iterdir()
    }

    loaded = _pruned_transformers(source, [1])
    image_path = tmp_path / "dots.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), "RGB").save(image_path)
    prompt = f"user : <|vision_start|><|image_pad|><|vision_end|>{PROMPT} </s> assistant : "

    from transformers import AutoImageProcessor

    pixels = AutoImageProcessor.from_pretrained(source)(
        images=Image.open(image_path), return_tensors="pt"
    )
    pads = int(pixels["image_grid_thw"].prod()) // 4  # one token per 2x2 merged patches
    ids = loaded.processor(prompt.replace("<|image_pad|>", "<|image_pad|>" * pads))["input_ids"]
    tensor = torch.tensor([ids])
    inputs = {
        "input_ids": tensor,
        "attention_mask": torch.ones_like(tensor),
        "mm_token_type_ids": (tensor == loaded.model.config.image_token_id).long(),
        **pixels,
    }
    expected = _hf_greedy(loaded.model, inputs)

    seen: dict[str, Any] = {}

    def start(model: Any, generator: Any) -> None:
        processor = model.create_multimodal_processor()
        inputs = processor(prompt, images=og.Images.open(str(image_path)))
        seen["ids"] = inputs["input_ids"].as_numpy().reshape(-1).tolist()
        generator.set_inputs(inputs)

    got = _og_greedy(folder, start, len(ids))
    assert seen["ids"] == ids  # onnxruntime-genai expands the image placeholder the same way
    assert got == expected and len(got) > 0


def test_cli_build_writes_fp32_and_int4_folders(
    tiny_model: Any, tmp_path: Path, capsys: Any
) -> None:
    source = tiny_model("llama", num_layers=3, tokenizer="bpe")
    calib = tmp_path / "calib.jsonl"
    calib.write_text(
        '{"text": "two plus three equals", "answer": "five"}\n'
        '{"text": "how many red dots are there ?", "answer": "two"}\n'
    )
    spec = _spec(
        tmp_path,
        source,
        'domain d { data "calib.jsonl" }\n'
        'target genai "fp32"\ntarget genai "int4" { precision int4  execution cpu  agreement 0 }',
    )
    assert _run("build", str(spec), "--no-lock") == ExitCode.OK
    log = " ".join(capsys.readouterr().err.split())  # the build log, rich's line wraps undone
    # the chat-rendered and the plain prompt, and both calibration samples
    pattern = r"genai \S+fp32 llama fp32/cpu: greedy 100% of 64 tokens over 4 prompts"
    assert re.search(pattern + r".* tokenizer parity on 4 texts", log), log
    assert re.search(r"genai \S+int4 llama int4/cpu: greedy \d+% of \d+ tokens", log), log
    for name in ("fp32", "int4"):
        files = {p.name for p in (tmp_path / name).iterdir()}
        assert {
            "genai_config.json",
            "model.onnx",
            "tokenizer.json",
            "prunec-manifest.json",
        } <= files
        assert not any(f.startswith(".prunec") for f in files)  # the scratch folder is gone
    int4 = (tmp_path / "int4" / "model.onnx.data").stat().st_size
    assert int4 < (tmp_path / "fp32" / "model.onnx.data").stat().st_size / 3
    og.Model(str(tmp_path / "int4"))


def test_cuda_folder_is_checked_on_cpu_when_no_cuda_is_here(
    tiny_model: Any, tmp_path: Path
) -> None:
    from prunec import build

    assert not og.is_cuda_available()
    source = tiny_model("qwen3", num_layers=3, tokenizer="bpe")
    spec = _spec(tmp_path, source, 'target genai "edge" { precision fp16  execution cuda }')
    (result,) = build(spec, write_lock=False).targets
    report: GenaiReport = result.report
    assert (report.precision, report.execution, report.checked_on) == ("fp16", "cuda", "cpu")
    assert report.agreement >= 0.5 and "checked on cpu" in report.summary()
    decoder = json.loads((tmp_path / "edge" / "genai_config.json").read_text())["model"]["decoder"]
    assert "cuda" in decoder["session_options"]["provider_options"][0]


def test_int4_below_the_agreement_publishes_nothing(
    tiny_model: Any, tmp_path: Path, capsys: Any
) -> None:
    source = tiny_model("llama", num_layers=3, tokenizer="bpe")
    measured = _spec(tmp_path, source, 'target genai "measured" { precision int4  agreement 0 }')
    from prunec import build

    (result,) = build(measured, write_lock=False).targets
    agreement = result.report.agreement
    assert 0 < agreement < 1  # random weights: int4 flips some near-tied greedy choices
    spec = _spec(tmp_path, source, 'target genai "strict" { precision int4  agreement 1 }')
    assert _run("build", str(spec), "--no-lock") == ExitCode.BUILD
    err = capsys.readouterr().err
    assert f"reproduces {agreement:.0%} of transformers' greedy tokens" in err, err
    assert "below the target's agreement 100%" in err and "Traceback" not in err
    assert not (tmp_path / "strict").exists()


def test_word_level_tokenizer_fails_with_the_reason(
    tiny_model: Any, tmp_path: Path, capsys: Any
) -> None:
    spec = _spec(tmp_path, tiny_model("llama", num_layers=3), 'target genai "edge"')
    assert _run("build", str(spec), "--no-lock") == ExitCode.BUILD
    err = capsys.readouterr().err
    assert "onnxruntime-genai cannot read the model's WordLevel tokenizer" in err, err
    assert not (tmp_path / "edge").exists()


def _gemma3_vlm() -> Any:
    from tiny_models import SPECS

    return SPECS["gemma3"].config(4)


def _llama_head_size_8() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, num_attention_heads=8, num_hidden_layers=4)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            _gemma3_vlm,
            "model type `gemma3` is not supported (onnxruntime-genai's Gemma 3 decoder attends "
            "causally over image tokens, where transformers lets the tokens of one image attend "
            "to each other both ways",
        ),
        (
            _llama_head_size_8,
            "onnxruntime's GroupQueryAttention takes head sizes that are multiples of 16; "
            "this model's is 8",
        ),
    ],
)
def test_check_rejects_what_onnxruntime_genai_cannot_run(
    config: Any, message: str, tmp_path: Path, capsys: Any
) -> None:
    model = tmp_path / "model"  # `check` reads config.json alone
    model.mkdir()
    config().save_pretrained(model)
    spec = _spec(tmp_path, model, 'target genai "edge"')
    assert _run("check", str(spec)) == ExitCode.SPEC
    err = " ".join(capsys.readouterr().err.split())
    assert f"error[E309]: target genai: {message}" in err, err
    if "gemma3" in message:
        assert "supported: " + ", ".join(sorted(GENAI_TYPES)) in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("precision fp16", "precision `fp16` is not built for execution `cpu` (use `fp32` or"),
        ("precision fp32  execution cuda", "not built for execution `cuda` (use `fp16` or"),
        ("precision int8", "invalid value `int8` for `precision`"),
        ("agreement 1.5", "`agreement` must be a number from 0.0 to 1.0"),
        ("precison int4", "did you mean `precision`?"),
    ],
)
def test_options_are_validated_at_check(
    options: str, message: str, tmp_path: Path, capsys: Any
) -> None:
    spec = _spec(tmp_path, Path("org/model"), f'target genai "edge" {{ {options} }}')
    assert _run("check", str(spec)) == ExitCode.SPEC
    err = capsys.readouterr().err
    assert message in err and "edge.prune:7:" in err and "Traceback" not in err, err


def test_every_listed_architecture_is_one_the_installed_builder_converts() -> None:
    builder = Path(og.__file__).parent / "models" / "builder.py"
    dispatched = {
        node.comparators[0].value
        for node in ast.walk(ast.parse(builder.read_text()))
        if isinstance(node, ast.Compare)
        and "architectures" in ast.unparse(node.left)
        and isinstance(node.comparators[0], ast.Constant)
    }
    listed = {a for entry in GENAI_TYPES.values() for a in entry.architectures}
    assert listed <= dispatched, listed - dispatched
    assert not set(NOT_SUPPORTED) & set(GENAI_TYPES)
    assert set(VERIFIED) <= set(GENAI_TYPES)
