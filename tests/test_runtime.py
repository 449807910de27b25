"""The torch-free runtime pieces: image preprocessing, prompt building, manifest, CLI errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import load_processor, sample_image

from prunec.runtime import Manifest
from prunec.runtime.generate import positions_from_mask
from prunec.runtime.image import load_image_config, preprocess
from prunec.runtime.manifest import GraphSpec, TensorSpec
from prunec.runtime.text import PromptBuilder


@pytest.fixture(scope="module")
def llava_dir(tiny_model: Callable[..., Path]) -> Path:
    return tiny_model("llava", num_layers=3)


@pytest.mark.parametrize("size", [(32, 32), (50, 40), (37, 64)])
def test_preprocess_matches_the_hf_image_processor(llava_dir: Path, size: tuple[int, int]) -> None:
    processor = load_processor("llava", llava_dir)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    expected = processor.image_processor(images=image, return_tensors="np")["pixel_values"]
    got = preprocess(image, load_image_config(llava_dir))
    assert got.shape == expected.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("with_image", [False, True])
def test_prompt_ids_match_the_hf_processor(llava_dir: Path, with_image: bool) -> None:
    processor = load_processor("llava", llava_dir)
    content: object = "how many dots are there ?"
    if with_image:
        content = [{"type": "image"}, {"type": "text", "text": "how many dots are there ?"}]
    messages = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = sample_image() if with_image else None
    expected = processor(text=text, images=image, return_tensors="np")["input_ids"][0]
    builder = PromptBuilder(llava_dir, image_token_id=4)
    rendered = builder.render("how many dots are there ?", with_image=with_image)
    assert rendered == text
    ids = builder.encode(rendered, ((4,), (4,) * 17) if with_image else None)
    np.testing.assert_array_equal(ids, expected)
    assert int((ids == 4).sum()) == (17 if with_image else 0)


def test_manifest_round_trip(tmp_path: Path) -> None:
    graph = GraphSpec(
        "decoder_model_merged.onnx",
        (TensorSpec("inputs_embeds", "float32", ("batch", "sequence_length", 64)),),
        (TensorSpec("logits", "float32", ("batch", "num_logits", 160)),),
    )
    manifest = Manifest(
        model_type="llava",
        graphs={"decoder": graph},
        num_layers=3,
        num_kv_heads=2,
        head_dim=16,
        hidden_size=64,
        vocab_size=160,
        image_token_id=4,
        image_tokens_per_image=17,
        image_size=(32, 32),
        eos_token_ids=(3,),
    )
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest


def test_positions_skip_left_padding() -> None:
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    positions = positions_from_mask(mask)
    np.testing.assert_array_equal(positions[0, 2:], [0, 1, 2])
    np.testing.assert_array_equal(positions[1], [0, 1, 2, 3, 4])


def test_run_on_a_directory_without_manifest_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prunec.cli import main
    from prunec.errors import ExitCode

    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path), "--prompt", "hello"])
    assert exit_info.value.code == ExitCode.USAGE
    assert "not an ONNX artifact" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model_type", "size"), [("gemma3", (32, 32)), ("gemma3", (48, 20)), ("idefics3", (32, 32))]
)
def test_preprocess_matches_other_vlm_processors(
    tiny_model: Callable[..., Path], model_type: str, size: tuple[int, int]
) -> None:
    directory = tiny_model(model_type, num_layers=3)
    processor = load_processor(model_type, directory)
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    expected = processor.image_processor(images=image, return_tensors="np")["pixel_values"]
    got = preprocess(image, load_image_config(directory), pad_to=(32, 32))
    np.testing.assert_allclose(got, expected.reshape(got.shape), atol=1e-5)


def test_patchify_matches_the_qwen2_vl_image_processor(tiny_model: Callable[..., Path]) -> None:
    from prunec.runtime.image import preprocess_for
    from prunec.runtime.manifest import Manifest

    directory = tiny_model("qwen2_vl", num_layers=3)
    processor = load_processor("qwen2_vl", directory)
    image = sample_image()
    expected = processor.image_processor(images=image, return_tensors="np")
    manifest = Manifest(
        model_type="qwen2_vl",
        graphs={},
        num_layers=3,
        num_kv_heads=2,
        head_dim=16,
        hidden_size=64,
        vocab_size=160,
        image_size=(32, 32),
        pixel_values_shape=(16, 384),
        extra={"patch_size": 8, "temporal_patch_size": 2, "merge_size": 2},
    )
    got = preprocess_for(manifest, image, load_image_config(directory))
    assert expected["image_grid_thw"].tolist() == [[1, 4, 4]]
    np.testing.assert_allclose(got, expected["pixel_values"], atol=1e-5)


@pytest.mark.parametrize("size", [(48, 48), (50, 40), (37, 64), (200, 90), (33, 97)])
@pytest.mark.parametrize(("longest", "square"), [(48, 48), (96, 48), (64, 40)])
def test_preprocess_matches_idefics3_without_splitting(
    tmp_path: Path, size: tuple[int, int], longest: int, square: int
) -> None:
    """Idefics3 resizes the longest edge to `size`, then squares the image to
    `max_image_size` (the vision encoder's input), whatever the aspect ratio."""
    from transformers import Idefics3ImageProcessorPil

    processor = Idefics3ImageProcessorPil(
        size={"longest_edge": longest},
        max_image_size={"longest_edge": square},
        do_image_splitting=False,
    )
    processor.save_pretrained(tmp_path)
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    expected = processor(images=image, return_tensors="np")["pixel_values"]
    got = preprocess(image, load_image_config(tmp_path))
    assert expected.shape == (1, 1, 3, square, square) and got.shape == (1, 3, square, square)
    np.testing.assert_allclose(got, expected[0], atol=1e-5)


def test_preprocess_refuses_image_splitting(tmp_path: Path) -> None:
    from transformers import Idefics3ImageProcessorPil

    Idefics3ImageProcessorPil(do_image_splitting=True).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="do_image_splitting"):
        preprocess(sample_image(), load_image_config(tmp_path))


def test_run_streams_text_as_tokens_arrive(capsys: pytest.CaptureFixture[str]) -> None:
    """`prunec run` prints each token's text when it is chosen; a character split over two
    byte-level tokens is printed once complete; the whole line equals decoding at the end."""
    from prunec.commands.run import TextStream

    pieces = {1: b"Hel", 2: b"lo ", 3: "\u00e9".encode()[:1], 4: "\u00e9".encode()[1:], 5: b"!"}

    def decode(ids: list[int]) -> str:
        return b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")

    stream = TextStream(decode)
    seen = []
    for token in pieces:
        stream.add(token)
        seen.append(capsys.readouterr().out)
    stream.finish()
    assert seen == ["Hel", "lo ", "", "\u00e9", "!"]
    assert capsys.readouterr().out == "\n"
