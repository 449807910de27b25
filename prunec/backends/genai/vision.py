"""Vision and embedding graphs of a Qwen2.5-VL onnxruntime-genai folder, and their config.

onnxruntime-genai runs a VLM as three graphs: `vision.onnx` (pixel patches -> image features
in the text embedding space), `embedding.onnx` (token ids + image features -> input embeddings,
the features written over the `<|image_pad|>` tokens) and the decoder (from the model builder,
built with `exclude_embeds`). Its C++ processor expands `<|vision_start|>...<|vision_end|>` in
the prompt to one `<|image_pad|>` per merged patch, preprocesses the image with
onnxruntime-extensions (`processor_config.json`) and computes the M-RoPE positions itself.

The vision graph is prunec's ONNX exporter's (`export_vision_fixed_grid`): the Qwen vision
tower does not export with a dynamic grid, so it is traced at one image size and the
preprocessing resizes every image to exactly that size (one image per prompt). The embedding
graph is exported here (it is onnxruntime-genai's layout, not prunec's).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunec.backends.genai.check import PROMPT_TEXT, Prompt, render_chat
from prunec.errors import BuildError

VISION_FILE = "vision.onnx"
EMBEDDING_FILE = "embedding.onnx"
PROCESSOR_FILE = "processor_config.json"
#: Side of the square image whose processed size fixes the vision graph's grid when the
#: calibration data has no image (the image processor's own min/max pixel rules apply).
DEFAULT_IMAGE_SIDE = 448
OPSET = 18


def add_vision(
    model: Any,
    processor: Any,
    source_dir: Path | None,
    folder: Path,
    samples: Sequence[Mapping[str, Any]],
) -> list[Prompt]:
    """Write the vision and embedding graphs, their genai_config.json sections and the image
    preprocessing config into `folder`; return the image prompt for the self-check.

    model: the pruned VLM in float32. processor: what prunec loaded (a processor, or a bare
    tokenizer when the image processor is loaded from `source_dir`).
    """
    image_processor = _image_processor(processor, source_dir)
    pixels, grid = _fixed_grid(image_processor, samples)
    height, width = (int(v) * int(image_processor.patch_size) for v in grid[1:])
    _export_vision(model, torch.from_numpy(pixels), torch.from_numpy(grid), folder / VISION_FILE)
    config = model.config
    image_token = int(config.image_token_id)
    genai_config_path = folder / "genai_config.json"
    genai = json.loads(genai_config_path.read_text())
    io_dtype = _decoder_input_dtype(folder / genai["model"]["decoder"]["filename"])
    _export_embedding(model, image_token, io_dtype, folder / EMBEDDING_FILE)
    (folder / PROCESSOR_FILE).write_text(
        json.dumps(_processor_config(image_processor, height, width), indent=2) + "\n"
    )
    vision_config = config.vision_config
    # no session_options: both graphs then run on the decoder's execution provider
    genai["model"].update(
        image_token_id=image_token,
        video_token_id=int(config.video_token_id),
        vision_start_token_id=int(config.vision_start_token_id),
        embedding={
            "filename": EMBEDDING_FILE,
            "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
            "outputs": {"inputs_embeds": "inputs_embeds"},
        },
        vision={
            "filename": VISION_FILE,
            "config_filename": PROCESSOR_FILE,
            "spatial_merge_size": int(vision_config.spatial_merge_size),
            "patch_size": int(vision_config.patch_size),
            "window_size": int(getattr(vision_config, "window_size", 0) or 0),
            "tokens_per_second": float(getattr(vision_config, "tokens_per_second", 2) or 2),
            "inputs": {"pixel_values": "pixel_values"},
            "outputs": {"image_features": "image_features"},
        },
    )
    genai_config_path.write_text(json.dumps(genai, indent=4) + "\n")
    tokenizer = getattr(processor, "tokenizer", processor)
    return [_image_prompt(model, tokenizer, image_processor, height, width)]


def _image_processor(processor: Any, source_dir: Path | None) -> Any:
    found = getattr(processor, "image_processor", None)
    if found is not None:
        return found
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(source_dir), local_files_only=True)
    except Exception as err:
        raise BuildError(f"target genai needs the model's image processor: {err}") from err


def _fixed_grid(
    image_processor: Any, samples: Sequence[Mapping[str, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """pixel values [patches, patch_dim] and grid [t, h, w] of one image: the calibration
    data's first, or a synthetic one at the processor's size for a DEFAULT_IMAGE_SIDE image."""
    for sample in samples:
        if "pixel_values" in sample and "image_grid_thw" in sample:
            grid = np.asarray(sample["image_grid_thw"])[0].astype(np.int64)
            count = int(grid.prod())
            return np.asarray(sample["pixel_values"], np.float32)[:count], grid
    image = _synthetic_image(DEFAULT_IMAGE_SIDE, DEFAULT_IMAGE_SIDE)
    out = image_processor(images=image, return_tensors="np")
    return np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"])[0]


def _synthetic_image(height: int, width: int) -> Any:
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")


def _export_vision(model: Any, pixels: Any, grid: Any, path: Path) -> None:
    """prunec's fixed-grid vision graph, with onnxruntime-genai's [tokens, hidden] output."""
    import onnx

    from prunec.backends.onnx.export import export_vision_fixed_grid

    export_vision_fixed_grid(model, pixels, grid, path, OPSET)
    graph_model = onnx.load(str(path), load_external_data=False)
    graph = graph_model.graph
    if len(graph.output) != 1:
        raise BuildError("the vision graph has deepstack outputs, which onnxruntime-genai ignores")
    # [1, tokens, hidden] -> [tokens, hidden]: onnxruntime-genai slices features per image
    name, batched = graph.output[0].name, "image_features_batched"
    hidden = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    for node in graph.node:
        node.output[:] = [batched if o == name else o for o in node.output]
    graph.initializer.append(
        onnx.helper.make_tensor("squeeze_axes", onnx.TensorProto.INT64, [1], [0])
    )
    graph.node.append(onnx.helper.make_node("Squeeze", [batched, "squeeze_axes"], [name]))
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["num_tokens", hidden])
    )
    onnx.save(graph_model, str(path))
    onnx.checker.check_model(str(path))


def _decoder_input_dtype(path: Path) -> Any:
    """The torch dtype of the decoder's `inputs_embeds` (float16 for fp16 CUDA folders)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for value in graph.input:
        if value.name == "inputs_embeds":
            elem = value.type.tensor_type.elem_type
            return torch.float16 if elem == onnx.TensorProto.FLOAT16 else torch.float32
    raise BuildError(f"the builder's decoder {path.name} takes no inputs_embeds")


def _export_embedding(model: Any, image_token_id: int, dtype: Any, path: Path) -> None:
    """input_ids [batch, seq] + image_features [tokens, hidden] -> inputs_embeds."""
    from torch.export import Dim

    module = _Embedding(model.get_input_embeddings(), image_token_id, dtype).eval()
    hidden = int(model.get_input_embeddings().weight.shape[1])
    ids = torch.tensor([[5, image_token_id, image_token_id, 7], [image_token_id] * 2 + [3, 4]])
    feats = torch.randn(4, hidden)
    shapes = {
        "input_ids": {0: Dim("batch_size"), 1: Dim("sequence_length")},
        "image_features": {0: Dim("num_image_tokens")},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours
        program = torch.onnx.export(
            module,
            (ids, feats),
            dynamo=True,
            dynamic_shapes=shapes,
            input_names=["input_ids", "image_features"],
            output_names=["inputs_embeds"],
            opset_version=OPSET,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))


class _Embedding(nn.Module):
    """Token embeddings with image features written over the image placeholder tokens.

    The features are gathered by each placeholder's rank among the placeholders (a cumulative
    sum), against a zero row for tokens that are not placeholders: no data-dependent shapes,
    so it exports with a dynamic feature count (0 in decode steps, where no image comes).
    """

    def __init__(self, embed: nn.Module, image_token_id: int, dtype: torch.dtype):
        super().__init__()
        self.embed = embed
        self.image_token_id = image_token_id
        self.dtype = dtype

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        embeds = self.embed(input_ids)
        hidden = embeds.shape[-1]
        is_image = (input_ids == self.image_token_id).reshape(-1)
        rank = torch.cumsum(is_image.long(), 0) - 1
        count = image_features.shape[0]
        padded = torch.cat([image_features.to(embeds.dtype), embeds.new_zeros(1, hidden)])
        index = torch.where(is_image & (rank < count), rank, count)
        merged = padded[index].reshape(embeds.shape)
        out = torch.where(is_image.reshape(*embeds.shape[:-1], 1), merged, embeds)
        return out.to(self.dtype)


def _processor_config(image_processor: Any, height: int, width: int) -> dict[str, Any]:
    """onnxruntime-extensions' preprocessing, matching the Hugging Face image processor at a
    fixed size (no smart resize: the vision graph's grid is fixed)."""
    patch = int(image_processor.patch_size)
    transforms = [
        ("decode_image", "DecodeImage", {"color_space": "RGB"}),
        ("convert_to_rgb", "ConvertRGB", None),
        (
            "resize",
            "Resize",
            {
                "height": height,
                "width": width,
                "smart_resize": 0,
                "keep_aspect_ratio": 0,
                "interpolation": "CUBIC",
            },
        ),
        ("rescale", "Rescale", {"rescale_factor": float(image_processor.rescale_factor)}),
        (
            "normalize",
            "Normalize",
            {
                "mean": [float(v) for v in image_processor.image_mean],
                "std": [float(v) for v in image_processor.image_std],
                "qwen2_5_vl": 1,
            },
        ),
        (
            "patch_image",
            "PatchImage",
            {
                "patch_size": patch,
                "temporal_patch_size": int(image_processor.temporal_patch_size),
                "merge_size": int(image_processor.merge_size),
            },
        ),
    ]
    return {
        "processor": {
            "name": "qwen2_5_image_processor",
            "transforms": [
                {"operation": {"name": n, "type": t, **({"attrs": a} if a else {})}}
                for n, t, a in transforms
            ],
        }
    }


def _image_prompt(
    model: Any, tokenizer: Any, image_processor: Any, height: int, width: int
) -> Prompt:
    """A synthetic image at the graph's size and a chat-rendered question about it.

    onnxruntime-genai gets the image file and the prompt with one `<|image_pad|>`, which its
    processor expands; transformers gets the Hugging Face image processor's pixels and the
    prompt expanded the same way (one pad per merged patch).
    """
    import io

    image = _synthetic_image(height, width)
    png = io.BytesIO()
    image.save(png, format="PNG")
    text = "<|vision_start|><|image_pad|><|vision_end|>" + PROMPT_TEXT
    rendered = render_chat(tokenizer, text) or text
    hf = image_processor(images=image, return_tensors="pt")
    count = int(hf["image_grid_thw"][0].prod()) // int(image_processor.merge_size) ** 2
    expanded = rendered.replace("<|image_pad|>", "<|image_pad|>" * count, 1)
    ids = tuple(int(i) for i in tokenizer(expanded)["input_ids"])
    pad = int(model.config.image_token_id)
    hf_inputs = {
        "pixel_values": hf["pixel_values"],
        "image_grid_thw": hf["image_grid_thw"],
        "mm_token_type_ids": (torch.tensor([list(ids)]) == pad).long(),
    }
    return Prompt(ids, expanded, hf_inputs, og_text=rendered, image=png.getvalue())
