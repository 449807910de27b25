"""`emit_onnx`: export every graph, check it, write the manifest and files, verify parity."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunec.backends.onnx import OnnxOptions
from prunec.backends.onnx import export as ex
from prunec.backends.onnx.arch import OnnxArch, arch_for
from prunec.backends.onnx.parity import (
    Sample,
    decoder_diffs,
    embed_diff,
    greedy_agreement,
    to_sample,
    top1_agreement,
    vision_diff,
    vision_reference,
)
from prunec.backends.onnx.report import OnnxReport
from prunec.backends.onnx.vision import (
    check_geometry,
    check_image_processor,
    image_size,
    matches_export,
    processor_pixels,
    runner_preprocess_diff,
)
from prunec.errors import BuildError
from prunec.runtime.generate import OnnxGenerator
from prunec.runtime.manifest import GraphSpec, Manifest, TensorSpec
from prunec.runtime.session import GraphRunError

#: Float32 parity bound: absolute, widened for models whose logits are large.
BASE_TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 1e-4
GREEDY_TOKENS = 8


def graph_spec(path: Path, directory: Path) -> GraphSpec:
    """Inputs and outputs of an ONNX file, with symbolic dims by name."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim)
        return TensorSpec(value.name, dtype, dims)

    inputs = tuple(spec(v) for v in model.graph.input if v.name not in initializers)
    return GraphSpec(
        str(path.relative_to(directory)), inputs, tuple(spec(v) for v in model.graph.output)
    )


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)  # path form handles external data
    except onnx.checker.ValidationError as err:
        raise BuildError(f"{path.name} failed onnx.checker: {err}") from err


def _eos_ids(model: nn.Module) -> tuple[int, ...]:
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config.get_text_config(decoder=True), "eos_token_id", None)  # type: ignore[union-attr,operator]
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def _image_token_id(model: nn.Module, arch: OnnxArch) -> int:
    config = model.config
    value = getattr(config, arch.image_token_attr, None)
    if value is None:
        value = getattr(config, "image_token_index", None)
    if value is None:
        raise BuildError(f"{config.model_type} config has no `{arch.image_token_attr}`")  # type: ignore[union-attr]
    return int(value)


def _deepstack_layers(model: nn.Module, arch: OnnxArch, samples: Sequence[Sample]) -> int:
    if not arch.vision:
        return 0
    outputs = vision_reference(model, _image_sample(samples))
    return int(outputs[1].shape[0]) if len(outputs) > 1 else 0


def _image_sample(samples: Sequence[Sample]) -> Sample:
    return next(s for s in samples if s.pixel_values is not None)


def _synthetic_samples(
    model: nn.Module, arch: OnnxArch, layout: ex.KvLayout, processor: Any | None
) -> list[Sample]:
    """A small deterministic prompt (with one image for VLMs) when no calibration data is given.

    The image goes through the model's image processor when there is one, so the vision
    graph is exported at the size the processor produces (which need not be the vision
    config's image_size: Idefics3's max_image_size, for one).
    """
    rng = np.random.default_rng(0)
    low = 8  # skip the special and image-placeholder ids at the start of the vocabulary
    words = rng.integers(low, layout.vocab_size, size=(1, 10))
    if not arch.vision:
        return [Sample(words, np.ones_like(words), None)]
    extra: dict[str, np.ndarray] = {}
    vision: Any = model.config.vision_config  # type: ignore[union-attr]
    if arch.pixel_ndim == 2:  # Qwen-VL: an image of 4x4 merged patches (the processor may resize)
        side = 4 * vision.patch_size * vision.spatial_merge_size
        size = (side, side)
    else:
        size = image_size(model, [])
    processed = processor_pixels(processor, size)
    if processed is not None:
        pixels, extra = processed
    elif arch.pixel_ndim == 2:  # no processor: random patches on a grid of 2x2 merged patches
        grid = np.array([[1, 2 * vision.spatial_merge_size, 2 * vision.spatial_merge_size]])
        dim = 3 * vision.temporal_patch_size * vision.patch_size**2
        pixels = rng.standard_normal((int(grid.prod()), dim)).astype(np.float32)
        extra["image_grid_thw"] = grid
    else:
        shape = (1, 3, *size) if arch.pixel_ndim == 4 else (1, 1, 3, *size)
        pixels = rng.standard_normal(shape).astype(np.float32)
    probe = Sample(words, np.ones_like(words), pixels, extra)
    check_geometry(model, probe)
    count = vision_reference(model, probe)[0].shape[1]
    slots = np.full((1, count), _image_token_id(model, arch))
    ids = np.concatenate([words[:, :3], slots, words[:, 3:]], axis=1).astype(np.int64)
    if arch.positions == "mrope":
        extra["mm_token_type_ids"] = (ids == _image_token_id(model, arch)).astype(np.int64)
    return [Sample(ids, np.ones_like(ids), pixels, extra)]


def _float32(model: nn.Module) -> nn.Module:
    # onnxruntime's CPU kernels are float32; export a float32 copy, leave the caller's model be
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model.eval()
    return copy.deepcopy(model).float().eval()


def export_vision(model: nn.Module, arch: OnnxArch, sample: Sample, path: Path, opset: int) -> None:
    """The vision graph for one image shaped like `sample`'s (see docs/onnx.md)."""
    assert sample.pixel_values is not None
    pixels = torch.from_numpy(sample.pixel_values)
    if arch.fixed_grid:
        grid = torch.from_numpy(sample.extra["image_grid_thw"][0])
        ex.export_vision_fixed_grid(model, pixels, grid, path, opset)
    else:
        ex.export_vision(model, pixels, path, opset)


def _export_all(
    model: nn.Module, arch: OnnxArch, out_dir: Path, target: OnnxOptions, samples: list[Sample]
) -> dict[str, Path]:
    from prunec.progress import progress

    layout = ex.kv_layout(model)
    paths = {"embed_tokens": out_dir / ex.EMBED_FILE}
    with progress("onnx: exporting the token embedding"):
        ex.export_embed(model, paths["embed_tokens"], target.opset)
    if arch.vision:
        paths["vision_encoder"] = out_dir / ex.VISION_FILE
        with progress("onnx: exporting the vision encoder"):
            sample = _image_sample(samples)
            export_vision(model, arch, sample, paths["vision_encoder"], target.opset)
    paths["decoder"] = out_dir / (ex.DECODER_FILE if target.kv_cache else ex.DECODER_NO_CACHE_FILE)
    with progress("onnx: exporting the decoder"):
        ex.export_decoder(
            model,
            layout,
            paths["decoder"],
            target.opset,
            target.kv_cache,
            arch.token_type_ids,
            arch.positions == "mrope",
            _deepstack_layers(model, arch, samples),
        )
    with progress("onnx: checking the graphs", total=len(paths), unit="graphs") as bar:
        for path in paths.values():
            _check(path)
            bar.advance()
    return paths


def _write_manifest(
    model: nn.Module,
    processor: Any | None,
    arch: OnnxArch,
    out_dir: Path,
    target: OnnxOptions,
    paths: dict[str, Path],
    samples: list[Sample],
) -> Manifest:
    layout = ex.kv_layout(model)
    vision: dict[str, Any] = {}
    if arch.vision:
        sample = _image_sample(samples)
        assert sample.pixel_values is not None
        pixels = sample.pixel_values
        outputs = vision_reference(model, sample)
        count = outputs[0].shape[1]
        extra: dict[str, Any] = {}
        if "image_grid_thw" in sample.extra:
            vision_config: Any = model.config.vision_config  # type: ignore[union-attr]
            merge = int(vision_config.spatial_merge_size)
            t, h, w = (int(v) for v in sample.extra["image_grid_thw"][0])
            extra = {
                "image_grid_thw": [t, h, w],
                "mrope_grid": [t, h // merge, w // merge],
                "patch_size": int(vision_config.patch_size),
                "temporal_patch_size": int(vision_config.temporal_patch_size),
                "merge_size": merge,
            }
        vision = {
            "extra": extra,
            "image_token_id": _image_token_id(model, arch),
            "image_tokens_per_image": int(count),
            "image_size": image_size(model, samples),
            "pixel_values_shape": tuple(pixels.shape)
            if pixels.ndim == 2
            else (1, *pixels.shape[1:]),
            "token_type_ids": arch.token_type_ids,
            "deepstack_layers": outputs[1].shape[0] if len(outputs) > 1 else 0,
        }
        expansion = _image_expansion(processor, out_dir, vision["image_size"])
        if expansion is not None:
            vision["image_placeholder_ids"], vision["image_expansion_ids"] = expansion
    text = model.config.get_text_config(decoder=True)  # type: ignore[union-attr,operator]
    manifest = Manifest(
        model_type=str(model.config.model_type),  # type: ignore[union-attr]
        graphs={role: graph_spec(path, out_dir) for role, path in paths.items()},
        num_layers=layout.num_layers,
        num_kv_heads=layout.num_kv_heads,
        head_dim=layout.head_dim,
        hidden_size=layout.hidden_size,
        vocab_size=layout.vocab_size,
        kv_cache=target.kv_cache,
        position_ids=arch.positions,
        eos_token_ids=_eos_ids(model),
        pad_token_id=getattr(text, "pad_token_id", None),
        quantize=target.quantize,
        **vision,
    )
    manifest.write(out_dir)
    return manifest


def _common_ends(a: list[int], b: list[int]) -> tuple[int, int]:
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return head, tail


def _image_expansion(
    processor: Any | None, out_dir: Path, image_size: tuple[int, int]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """How the processor expands one image's placeholder: (template ids, processor ids).

    Renders a one-image chat prompt, tokenizes it as the runner will (tokenizer.json) and as
    the processor does (with an image), and keeps the part between their common ends.
    None when there is no processor with an image processor (the runner then repeats the
    image token once per feature).
    """
    if processor is None or getattr(processor, "image_processor", None) is None:
        return None
    from PIL import Image

    from prunec.runtime.text import PromptBuilder

    builder = PromptBuilder(out_dir)
    if builder.chat_template is None:
        return None
    text = builder.render("what", with_image=True)
    plain = list(builder.tokenizer.encode(text).ids)
    pixels = np.random.default_rng(0).integers(0, 255, (*image_size, 3), dtype=np.uint8)
    out = processor(text=text, images=Image.fromarray(pixels, "RGB"), return_tensors="pt")
    expanded = [int(i) for i in np.asarray(out["input_ids"])[0]]
    head, tail = _common_ends(plain, expanded)
    if head + tail >= len(plain) and head > 0:
        # the placeholder is a prefix of its own expansion (`<image>` -> `<image>` x N):
        # give it back to the placeholder so there is something to find and replace
        head -= 1
    return tuple(plain[head : len(plain) - tail]), tuple(expanded[head : len(expanded) - tail])


def _save_side_files(model: nn.Module, processor: Any | None, out_dir: Path) -> None:
    model.config.save_pretrained(out_dir)  # type: ignore[union-attr,operator]
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(out_dir)
    if processor is None:
        return
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(out_dir)
        return
    for part in ("tokenizer", "image_processor"):  # processor-like objects without a saver
        component = getattr(processor, part, None)
        if component is not None:
            component.save_pretrained(out_dir)


def _quantize(paths: dict[str, Path]) -> None:
    """Dynamic int8 weights for the decoder graph. The vision encoder and the embeddings stay
    float: the vision tower is a small share of a VLM's weights and compute, and its errors
    would reach every image token of the decoder's input."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for role in ("decoder",):
        if role not in paths:
            continue
        path = paths[role]
        tmp = path.with_name(path.stem + ".int8.onnx")
        big = (
            path.stat().st_size
            + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data"))
            > 2**31 - 2**20
        )
        try:
            quantize_dynamic(path, tmp, weight_type=QuantType.QInt8, use_external_data_format=big)
        except Exception as err:  # onnxruntime's quantizer: name the graph, not a trace
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise BuildError(f"int8 quantization of {path.name} failed: {reason}") from err
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        tmp.rename(path)
        _check(path)


def emit_onnx(
    model: Any,
    processor: Any | None,
    out_dir: Path,
    *,
    target: OnnxOptions,
    sample_inputs: Sequence[dict[str, Any]] = (),
) -> OnnxReport:
    """Write the ONNX artifact for `model` into `out_dir` and verify it against PyTorch.

    Raises BuildError for an unsupported architecture or image-processor option (before any
    work), an image the model's shapes cannot divide, a graph that fails onnx.checker or
    onnxruntime, float32 parity beyond tolerance, or runner preprocessing that does not
    reproduce the image processor. `out_dir` is a staging directory.
    """
    start = time.perf_counter()
    model_type = str(model.config.model_type)
    arch = arch_for(model_type)
    if arch.vision:
        check_image_processor(arch, processor, model_type)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _float32(model)
    layout = ex.kv_layout(model)
    samples = [to_sample(s) for s in sample_inputs]
    if not samples or (arch.vision and not any(s.pixel_values is not None for s in samples)):
        samples += _synthetic_samples(model, arch, layout, processor)
    if arch.vision:
        check_geometry(model, _image_sample(samples))
    try:
        paths = _export_all(model, arch, out_dir, target, samples)
    except BuildError:
        raise
    except Exception as err:  # exporter failures: name the model and the cause, not a trace
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise BuildError(
            f"exporting {model_type} to ONNX failed: {type(err).__name__}: {first}"
        ) from err
    _save_side_files(model, processor, out_dir)
    _write_manifest(model, processor, arch, out_dir, target, paths, samples)
    report = verify_artifact(model, processor, out_dir, target=target, samples=samples)
    return replace(report, seconds=time.perf_counter() - start)


def verify_artifact(
    model: nn.Module,
    processor: Any | None,
    out_dir: Path,
    *,
    target: OnnxOptions,
    samples: Sequence[Sample],
) -> OnnxReport:
    """Check an artifact directory against `model` (float32): parity, int8, greedy, images.

    Quantizes the graphs when `target.quantize` is int8 (after the float32 parity check).
    Raises BuildError on parity beyond tolerance, runner preprocessing that does not
    reproduce the image processor, or any onnxruntime failure (naming the graph file).
    """
    model_type = str(model.config.model_type)  # type: ignore[union-attr]
    arch = arch_for(model_type)
    manifest = Manifest.read(out_dir)
    # the vision graph takes one image shape (Qwen-VL: one grid); calibration images of
    # another shape cannot be fed to it as they are, so parity runs on the others
    usable = [s for s in samples if matches_export(s, manifest)]
    notes: tuple[str, ...] = ()
    if len(usable) < len(samples):
        notes = (
            f"{len(samples) - len(usable)} of {len(samples)} parity samples skipped: their "
            f"images are not the exported size {manifest.image_size} (the runner resizes "
            "every image to it)",
        )
    try:
        report = _verify(model, processor, arch, out_dir, target, manifest, usable)
    except GraphRunError as err:
        raise BuildError(
            f"checking the {model_type} ONNX artifact failed: {err}; nothing was published"
        ) from err
    return replace(report, notes=notes)


def _verify(
    model: nn.Module,
    processor: Any | None,
    arch: OnnxArch,
    out_dir: Path,
    target: OnnxOptions,
    manifest: Manifest,
    samples: list[Sample],
) -> OnnxReport:
    preprocess = runner_preprocess_diff(processor, out_dir, manifest) if arch.vision else None
    diffs, tolerance, float_logits = _float_parity(model, out_dir, arch, samples)
    int8_diff = int8_top1 = None
    if target.quantize == "int8":
        _quantize({role: out_dir / graph.file for role, graph in manifest.graphs.items()})
        gen = OnnxGenerator(out_dir, threads=1)
        int8_diff, int8_top1 = 0.0, 1.0
        for sample, ref in zip(samples, float_logits, strict=True):
            _, logits, _ = decoder_diffs(model, gen, sample)
            int8_diff = max(
                int8_diff, float(np.abs(logits - ref)[sample.attention_mask.astype(bool)].max())
            )
            int8_top1 = min(int8_top1, top1_agreement(logits, ref, sample.attention_mask))
    gen = OnnxGenerator(out_dir, threads=1)
    agreement = greedy_agreement(model, gen, samples[0], GREEDY_TOKENS)
    return OnnxReport(
        graphs=manifest.graphs,
        max_abs_diff=diffs,
        tolerance=tolerance,
        greedy_token_agreement=agreement,
        int8_logit_max_abs_diff=int8_diff,
        int8_top1_agreement=int8_top1,
        image_preprocess_max_abs_diff=preprocess,
    )


def _float_parity(
    model: nn.Module, out_dir: Path, arch: OnnxArch, samples: list[Sample]
) -> tuple[dict[str, float], float, list[np.ndarray]]:
    gen = OnnxGenerator(out_dir, threads=1)
    diffs = {"embed_tokens": 0.0, "decoder": 0.0}
    if arch.vision:
        diffs["vision_encoder"] = 0.0
    scale = 0.0
    refs = []
    for sample in samples:
        diffs["embed_tokens"] = max(diffs["embed_tokens"], embed_diff(model, gen, sample))
        if arch.vision and sample.pixel_values is not None:
            diffs["vision_encoder"] = max(diffs["vision_encoder"], vision_diff(model, gen, sample))
        worst, _, ref = decoder_diffs(model, gen, sample)
        diffs["decoder"] = max(diffs["decoder"], worst)
        scale = max(scale, float(np.abs(ref).max()))
        refs.append(ref)
    tolerance = max(BASE_TOLERANCE, RELATIVE_TOLERANCE * scale)
    bad = {role: d for role, d in diffs.items() if not d <= tolerance}
    if bad:
        worst_role = max(bad, key=bad.__getitem__)
        raise BuildError(
            f"ONNX parity failed: {worst_role} differs from PyTorch by {bad[worst_role]:.3g} "
            f"(tolerance {tolerance:.3g}); nothing was published"
        )
    return diffs, tolerance, refs
