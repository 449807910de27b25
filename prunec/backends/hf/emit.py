"""The Hugging Face checkpoint emitter: weights, config, processor, model card, manifest,
and a fresh-process self-check with plain transformers.

The weights are streamed from the source's safetensors shards (`prunec.backends.hf.stream`)
whenever the source has them, so no second copy of the model is ever made in memory;
`save_pretrained` of the model in memory is the fallback for other sources. Emission has two
halves so that a build can release its model in between: `prepare_hf` takes what needs the
pruned model (reference logits, and the fallback's weights), `finish_hf` writes and checks
without it. The check reloads the whole checkpoint in a fresh process ("full") when it fits
in the memory available, and otherwise makes the light check of
`prunec.backends.hf.stream_check` (bytes, meta-device load, a prefix of the layers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prunec.backends.atomic import prunec_version as _prunec_version
from prunec.backends.atomic import write_manifest
from prunec.errors import BuildError

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel

_T = TypeVar("_T")
SELF_CHECK_SCRIPT = Path(__file__).with_name("selfcheck_script.py")
#: Largest safetensors shard written; bigger models are sharded with an index file.
MAX_SHARD_SIZE = "2GB"
#: Processor / tokenizer files copied verbatim from the source checkpoint.
PROCESSOR_GLOBS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "chat_template*",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)


@dataclass(frozen=True)
class HFReport:
    """What `emit_hf` wrote and what its self-check measured.

    files: every file written, relative to the output directory (manifest included).
    max_abs_logit_diff: largest |difference| the self-check found: between the reloaded
        checkpoint's logits and the pruned model's ("full"), or between the outputs of the
        checkpoint's first layers and the source's ("light").
    layer_map: old decoder index -> new index for the kept layers.
    generate_ok: `generate` with KV cache ran after reload and produced tokens (light check:
        decoding with the KV cache reproduced the full forward).
    seconds: wall time of the whole emission, self-check included.
    checked_inputs: how many input cases the self-check compared (0 = check skipped).
    streamed: True when the weights were streamed from the source shards.
    check: "full" (the whole checkpoint reloaded and compared), "light" (bytes read back
        against the source, meta-device load, numeric check of `checked_layers`), "none".
    checked_layers: the light check's (source prefix, checkpoint prefix) layer counts.
    """

    files: tuple[str, ...]
    max_abs_logit_diff: float
    layer_map: dict[int, int]
    generate_ok: bool
    seconds: float
    checked_inputs: int = 0
    streamed: bool = False
    check: str = "full"
    checked_layers: tuple[int, int] | None = None

    def summary(self) -> str:
        """One line for the build log."""
        how = "streamed, " if self.streamed else ""
        generate = f"generate {'ok' if self.generate_ok else 'FAILED'}"
        if self.check == "none":
            return f"{how}not self-checked, {self.seconds:.1f}s"
        if self.check == "light" and self.checked_layers is not None:
            source, kept = self.checked_layers
            cache = "KV-cache decode " + ("ok" if self.generate_ok else "not compared")
            return (
                f"{how}light check: bytes match the source, meta-device load clean, first "
                f"{kept} layers vs source's {source} max |Δ| {self.max_abs_logit_diff:.2e}, "
                f"{cache}, {self.seconds:.1f}s"
            )
        return (
            f"{how}reload max |Δlogit| {self.max_abs_logit_diff:.2e}, "
            f"{generate}, {self.seconds:.1f}s"
        )


def emit_hf(
    loaded: LoadedModel,
    removed: Sequence[int],
    out_dir: Path,
    *,
    spec_text: str = "",
    source: str = "",
    scores: Mapping[str, Sequence[float]] | None = None,
    sample_inputs: Sequence[Mapping[str, Any]] | None = None,
    self_check: bool = True,
    how_chosen: str = "",
    dtype: str = "source",
) -> HFReport:
    """Write the pruned checkpoint into `out_dir` and prove it reloads in a fresh process.

    Precondition: `remove_layers(loaded.model, removed)` has ALREADY been applied (the build
    orchestrator does it before verification); `removed` holds the original 0-based indices
    and `loaded.num_layers` the original count, which together give the layer map.
    `out_dir` is normally a staging directory from `prunec.backends.atomic`; on any failure
    BuildError is raised and the caller discards it. `scores` (domain -> per-layer
    importance, original indexing) and `how_chosen` (Markdown: how the layers were selected,
    `prunec.report.how_chosen_markdown`) go into the model card. `sample_inputs` are the
    self-check's model inputs; by default a text prompt and, for VLMs, an image prompt are
    built with the processor. dtype: the checkpoint's floating dtype ("source": as stored).
    The caller keeps its model while the check runs; a build releases it between
    `prepare_hf` and `finish_hf` instead.
    """
    started = time.perf_counter()
    prepared = prepare_hf(
        loaded,
        removed,
        out_dir,
        source=source,
        scores=scores,
        sample_inputs=sample_inputs,
        dtype=dtype,
        how_chosen=how_chosen,
    )
    return finish_hf(
        prepared,
        out_dir,
        spec_text=spec_text,
        self_check=self_check,
        dtype=dtype,
        started=started,
    )


@dataclass(frozen=True)
class PreparedHF:
    """What an HF target takes from the pruned model before the build releases it.

    check: the full self-check with its reference logits (computed now, in the compute dtype).
    removed / num_layers / layer_map: the selection, in original indexing.
    source_dir: local safetensors to stream from; None when the weights could not be
        streamed and were saved from memory already (`save_pretrained` fallback).
    source: the model's name for the card and manifest. scores: for the card.
    held_dtype: the dtype the model's weights were held in (its references' weights).
    class_name / trust: how a fresh process loads the checkpoint.
    changed: output tensor name -> tensor written from memory instead of the source's bytes
        (projection weights that `heal` corrected); empty otherwise.
    """

    check: SelfCheckJob
    removed: tuple[int, ...]
    num_layers: int
    layer_map: dict[int, int]
    source_dir: Path | None
    source: str
    scores: Mapping[str, Sequence[float]] | None
    held_dtype: str
    class_name: str
    trust: bool
    how_chosen: str = ""
    changed: Mapping[str, Any] = field(default_factory=dict)


def streamable_source(source_dir: Path | None) -> Path | None:
    """`source_dir` when it holds safetensors weights to stream from (a local folder or a hub
    cache snapshot), else None."""
    if source_dir is None or not Path(source_dir).is_dir():
        return None
    from prunec.arch.checkpoint import shard_names

    try:
        shard_names(Path(source_dir))
    except BuildError:
        return None
    return Path(source_dir)


def prepare_hf(
    loaded: LoadedModel,
    removed: Sequence[int],
    out_dir: Path,
    *,
    source: str = "",
    scores: Mapping[str, Sequence[float]] | None = None,
    sample_inputs: Sequence[Mapping[str, Any]] | None = None,
    dtype: str = "source",
    how_chosen: str = "",
    corrected: Sequence[int] = (),
    projection: str = "",
) -> PreparedHF:
    """Everything the HF target needs from the pruned model in memory (see `emit_hf`).

    corrected / projection: kept layers (original indices) whose `projection` module `heal`
    changed in memory; a streamed copy writes those tensors from memory.
    """
    from prunec.arch.precision import held_dtype

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layer_map = _layer_map(loaded, removed)
    cases = [dict(c) for c in (sample_inputs or default_inputs(loaded))]
    held = held_dtype(loaded.model, loaded.storage_dtype)
    artifact = held if dtype == "source" else dtype
    stream_from = streamable_source(loaded.source_dir)
    if stream_from is not None and dtype == "source":
        artifact = loaded.storage_dtype
    # Reference logits come from the pruned model in memory, before anything is written.
    job = prepare_self_check(loaded, out_dir, cases, artifact_dtype=artifact)
    if stream_from is None:
        _save_weights(loaded.model, out_dir, None if dtype == "source" else dtype)
        _copy_processor(loaded, out_dir)
    changed: dict[str, Any] = {}
    if stream_from is not None and corrected:
        changed = changed_tensors(loaded, stream_from, removed, corrected, projection)
    model: Any = loaded.model
    return PreparedHF(
        check=job,
        removed=tuple(sorted(removed)),
        num_layers=loaded.num_layers,
        layer_map=layer_map,
        source_dir=stream_from,
        source=source or str(loaded.source_dir or ""),
        scores=scores,
        held_dtype=held,
        class_name=type(model).__name__,
        trust=type(model).__module__.startswith("transformers_modules"),
        how_chosen=how_chosen,
        changed=changed,
    )


def changed_tensors(
    loaded: LoadedModel,
    source_dir: Path,
    removed: Sequence[int],
    corrected: Sequence[int],
    projection: str,
) -> dict[str, Any]:
    """Output tensor name -> copy of the in-memory tensor, for the parameters of `projection`
    in each `corrected` layer (original indices) of the pruned model in memory. Names come
    from the source checkpoint's own (renamed as the streamed copy renames them), so a
    checkpoint that saves legacy names gets its changed tensors under the same names."""
    from prunec.arch import locate_decoder
    from prunec.backends.hf.stream import pruned_layout

    layout = pruned_layout(source_dir, removed)
    renamed = {old: new for rename in layout.renames.values() for old, new in rename.items()}
    layers = locate_decoder(loaded.model).layers
    out: dict[str, Any] = {}
    for layer in corrected:
        module = layers[layout.layer_map[layer]].get_submodule(projection)
        for name, param in module.named_parameters(recurse=False):
            suffix = f"{projection}.{name}"
            olds = [
                template.replace("${layer_index}", str(layer)) + suffix
                for template in layout.entry.tensor_templates
            ]
            found = [o for o in olds if o in renamed]
            if not found:
                raise BuildError(
                    f"the healed `{suffix}` of layer {layer} has no tensor in {source_dir} "
                    f"(looked for {olds})"
                )
            out[renamed[found[0]]] = param.detach().to("cpu", copy=True)
    return out


def finish_hf(
    prepared: PreparedHF,
    out_dir: Path,
    *,
    spec_text: str = "",
    self_check: bool = True,
    dtype: str = "source",
    started: float | None = None,
) -> HFReport:
    """Write the checkpoint `prepare_hf` planned (streaming it when it can) and self-check
    it: fully when the reload fits in memory, else with the light check."""
    from prunec.backends.hf.stream import stream_prune_checkpoint

    started = time.perf_counter() if started is None else started
    out_dir = Path(out_dir)
    if prepared.source_dir is None:
        (out_dir / "README.md").write_text(
            model_card(
                prepared.source,
                spec_text,
                prepared.layer_map,
                prepared.num_layers,
                prepared.scores,
                how_chosen=prepared.how_chosen,
            )
        )
        files = _write_manifest(out_dir, prepared.source, prepared.removed, prepared.layer_map)
        outcome = _full_check(prepared.check) if self_check else None
        return _report(files, prepared.layer_map, outcome, started, streamed=False)

    from prunec.backends.hf.stream import pruned_layout
    from prunec.backends.hf.stream_check import light_check

    layout = pruned_layout(prepared.source_dir, prepared.removed)
    mode = "none"
    if self_check:
        size = _artifact_bytes(prepared.source_dir, layout.renames, dtype)
        mode = "full" if fits_in_memory(size) else "light"
        if mode == "light" and prepared.changed:
            # The light check compares with the source's own layers; healed layers differ
            # from those by design, so only the full comparison with the model in memory
            # can prove a healed checkpoint right.
            raise BuildError(
                f"the healed checkpoint ({size / 1024**3:.1f} GiB) does not fit in memory for "
                "its self-check against the healed model; free memory or drop `heal`"
            )
    with ExitStack() as stack:
        light = None
        if mode == "light":
            light = stack.enter_context(
                light_check(
                    layout,
                    prepared.source_dir,
                    out_dir,
                    class_name=prepared.class_name,
                    trust=prepared.trust,
                )
            )
        written = stream_prune_checkpoint(
            prepared.source_dir,
            out_dir,
            prepared.removed,
            spec_text=spec_text,
            dtype=dtype,
            changed=prepared.changed,
            scores=prepared.scores,
            source=prepared.source,
            how_chosen=prepared.how_chosen,
        )
        artifact = written.dtype if written.dtype != "source" else None
        if light is not None:
            result = _checked_bytes(
                out_dir,
                written.digests,
                lambda: light.finish(tolerance(light_dtypes(prepared.held_dtype, artifact))),
            )
            return HFReport(
                files=written.files,
                max_abs_logit_diff=result.diff,
                layer_map=written.layer_map,
                generate_ok=result.generate_ok,
                seconds=time.perf_counter() - started,
                checked_inputs=1,
                streamed=True,
                check="light",
                checked_layers=result.layers,
            )
    outcome = (
        _checked_bytes(out_dir, written.digests, lambda: _full_check(prepared.check))
        if mode == "full"
        else None
    )
    return _report(written.files, written.layer_map, outcome, started, streamed=True)


def _report(
    files: tuple[str, ...],
    layer_map: dict[int, int],
    outcome: tuple[float, bool, int] | None,
    started: float,
    *,
    streamed: bool,
) -> HFReport:
    diff, generate_ok, inputs = outcome if outcome is not None else (0.0, False, 0)
    return HFReport(
        files=files,
        max_abs_logit_diff=diff,
        layer_map=layer_map,
        generate_ok=generate_ok,
        seconds=time.perf_counter() - started,
        checked_inputs=inputs,
        streamed=streamed,
        check="full" if outcome is not None else "none",
    )


def _full_check(job: SelfCheckJob) -> tuple[float, bool, int]:
    [(diff, generate_ok)] = run_self_checks([job])
    return diff, generate_ok, len(job.payload["cases"])


def _checked_bytes(
    out_dir: Path, digests: Mapping[str, Mapping[str, Any]], check: Callable[[], _T]
) -> _T:
    """Run `check` while the written weight shards are read back against their digests
    (the fresh process and the read overlap); BuildError naming every problem."""
    from concurrent.futures import ThreadPoolExecutor

    from prunec.backends.hf.stream import verify_digests

    with ThreadPoolExecutor(1) as pool:
        bytes_checked = pool.submit(verify_digests, out_dir, digests)
        try:
            result = check()
        finally:
            problems = bytes_checked.result()
    if problems:
        raise BuildError("self-check failed: " + "; ".join(problems))
    return result


def _artifact_bytes(source_dir: Path, renames: Mapping[str, Mapping[str, str]], dtype: str) -> int:
    """Tensor bytes the kept tensors take in the artifact (`renames`: shard -> kept names)."""
    from prunec.arch.checkpoint import FLOAT_CODES, read_header
    from prunec.arch.precision import ITEMSIZE

    total = 0
    for shard, rename in renames.items():
        header, _ = read_header(source_dir / shard)
        for name, info in header.items():
            if name not in rename:
                continue
            size = info["data_offsets"][1] - info["data_offsets"][0]
            if dtype != "source" and info["dtype"] in FLOAT_CODES:
                size = size // ITEMSIZE[FLOAT_CODES[info["dtype"]]] * ITEMSIZE[dtype]
            total += size
    return total


def fits_in_memory(size: int) -> bool:
    """Whether a fresh process can hold a checkpoint of `size` bytes next to what runs now:
    1.25x its size plus 1 GiB of the memory Linux reports available (assumed true where
    that cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                return size * 1.25 + (1 << 30) <= available
    except (OSError, ValueError, IndexError):
        pass
    return True


def _layer_map(loaded: LoadedModel, removed: Sequence[int]) -> dict[int, int]:
    from prunec.arch import locate_decoder

    kept = [i for i in range(loaded.num_layers) if i not in set(removed)]
    current = len(locate_decoder(loaded.model).layers)
    if current != len(kept):
        raise BuildError(
            f"emit_hf expects the surgery to be applied already: the model has {current} "
            f"decoder layers, but {loaded.num_layers} minus {len(set(removed))} removed "
            f"is {len(kept)}"
        )
    return {old: new for new, old in enumerate(kept)}


# --- inputs and reference logits ------------------------------------------------------------


def _is_vlm(model: Any) -> bool:
    return hasattr(model.config, "vision_config")


#: Fewest tokens a self-check prompt may have; a shorter encoding means the tokenizer is
#: unusable (transformers 5.24 builds an EMPTY tokenizer for a folder without tokenizer
#: files, and a 0-token forward fails inside the model), so synthetic ids are used instead.
MIN_PROMPT_TOKENS = 4
#: Length of the synthetic prompt used when there is no usable tokenizer.
SYNTHETIC_PROMPT_TOKENS = 12


def default_inputs(loaded: LoadedModel) -> list[dict[str, Any]]:
    """Self-check inputs: a short text prompt, plus an image prompt for VLMs when the
    processor can build one.

    The text prompt is the tokenizer's encoding of a fixed sentence when that has at least
    `MIN_PROMPT_TOKENS` tokens, else synthetic ids (no image prompt then: without a tokenizer
    there are no image placeholder tokens to build one).
    """
    import torch

    model: Any = loaded.model
    processor = loaded.processor
    text = "Describe the picture in one word ."
    encoded = _encode_prompt(getattr(processor, "tokenizer", processor), text)
    cases = [encoded if encoded is not None else _synthetic_prompt(model.config)]
    if model.config.model_type == "paligemma":  # PaliGemma's forward needs token_type_ids
        cases[0]["token_type_ids"] = torch.zeros_like(cases[0]["input_ids"])
    image_case = _image_inputs(processor, text) if encoded is not None and _is_vlm(model) else None
    if image_case is not None:
        cases.append(image_case)
    return [{k: v for k, v in c.items() if k != "labels"} for c in cases]


def _encode_prompt(tokenizer: Any, text: str) -> dict[str, Any] | None:
    """`tokenizer(text)` as tensors, or None when there is no tokenizer, it fails, or it
    yields fewer than `MIN_PROMPT_TOKENS` tokens."""
    if tokenizer is None or not callable(tokenizer):
        return None
    try:
        encoded = dict(tokenizer(text, return_tensors="pt"))
    except Exception:  # a tokenizer that cannot encode plain text is as good as none here
        return None
    ids = encoded.get("input_ids")
    if ids is None or ids.ndim != 2 or ids.shape[-1] < MIN_PROMPT_TOKENS:
        return None
    return encoded


def _synthetic_prompt(config: Any) -> dict[str, Any]:
    """`SYNTHETIC_PROMPT_TOKENS` ids from the middle of the vocabulary, skipping every id the
    config names (`*_token_id`, `*_token_index`: pad, bos, eos, image and video tokens), so no
    image placeholder appears without pixels. Special tokens sit at either end of real
    vocabularies, ordinary words in the middle."""
    import torch

    special: set[int] = set()
    for cfg in (config, config.get_text_config(decoder=True)):
        for key, value in cfg.to_dict().items():
            if key.endswith(("_token_id", "_token_ids", "_token_index")):
                values = value if isinstance(value, list) else [value]
                special.update(v for v in values if isinstance(v, int))
    vocab = int(config.get_text_config(decoder=True).vocab_size)
    ordinary = (i for i in chain(range(vocab // 2, vocab), range(vocab // 2)) if i not in special)
    ids = torch.tensor([list(islice(ordinary, SYNTHETIC_PROMPT_TOKENS))])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _image_inputs(processor: Any, text: str) -> dict[str, Any] | None:
    import numpy as np
    from PIL import Image

    if processor is None or not hasattr(processor, "image_processor"):
        return None
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    content = [{"type": "image"}, {"type": "text", "text": text}]
    try:
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        return dict(processor(text=prompt, images=image, return_tensors="pt"))
    except Exception:
        try:
            return dict(processor(text=text, images=image, return_tensors="pt"))
        except Exception:
            return None


def _reference_logits(model: Any, inputs: Mapping[str, Any]) -> Any:
    import torch

    from prunec.arch.precision import compute_dtype

    device = getattr(model, "device", torch.device("cpu"))
    dtype = compute_dtype(model)
    moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    moved = {
        k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in moved.items()
    }
    with torch.no_grad():
        return model(**moved).logits.float().cpu()


# --- files ----------------------------------------------------------------------------------


def _save_weights(model: Any, out_dir: Path, dtype: str | None = None) -> None:
    """The fallback for sources without local safetensors: `save_pretrained` from memory,
    in `dtype` (None: the held dtype, the upcast's small parameters included)."""
    import torch

    from prunec.arch.precision import hold_small_parameters

    # VLM configs validate their text config only at load time; fail here, not for users.
    for config in (model.config, model.config.get_text_config(decoder=True)):
        validate = getattr(config, "validate", None)
        if callable(validate):
            try:
                validate()
            except (ValueError, TypeError) as exc:
                raise BuildError(f"the pruned config is invalid: {exc}") from exc
    with hold_small_parameters(model):
        if dtype is None:
            model.save_pretrained(out_dir, max_shard_size=MAX_SHARD_SIZE)
            return
        # A converted copy (this fallback only): the model in memory stays as it is.
        target = getattr(torch, dtype)
        state = {
            k: v.to(target) if v.is_floating_point() else v for k, v in model.state_dict().items()
        }
        stored = model.config.dtype
        model.config.dtype = target
        try:
            model.save_pretrained(out_dir, state_dict=state, max_shard_size=MAX_SHARD_SIZE)
        finally:
            model.config.dtype = stored


def _copy_processor(loaded: LoadedModel, out_dir: Path) -> None:
    src = loaded.source_dir
    if src is not None and src.is_dir():
        for pattern in PROCESSOR_GLOBS:
            for path in src.glob(pattern):
                if path.is_file() and not (out_dir / path.name).exists():
                    shutil.copy2(path, out_dir / path.name)
        return
    if loaded.processor is not None:
        loaded.processor.save_pretrained(out_dir)


def model_card(
    source: str,
    spec_text: str,
    layer_map: Mapping[int, int],
    num_layers: int,
    scores: Mapping[str, Sequence[float]] | None = None,
    *,
    how_chosen: str = "",
) -> str:
    """The README.md of an emitted checkpoint (`num_layers`: the original layer count).

    how_chosen: Markdown saying how the removed layers were selected (its own section).
    """
    removed = [i for i in range(num_layers) if i not in layer_map]
    lines = [
        "---",
        f"base_model: {source}" if source else "base_model: unknown",
        "tags: [prunec, depth-pruned]",
        "---",
        "",
        f"# Depth-pruned {source or 'model'}",
        "",
        f"Built by prunec {_prunec_version()}: {len(removed)} of {num_layers} decoder "
        f"layers removed ({removed}), {len(layer_map)} kept. Loads with plain `transformers`.",
        "",
        "## Layer map (old index -> new index, 0-based)",
        "",
        "| old | new |",
        "|---:|---:|",
        *(f"| {old} | {new} |" for old, new in sorted(layer_map.items())),
    ]
    if how_chosen:
        lines += ["", "## How the layers were chosen", "", how_chosen.rstrip()]
    if scores:
        domains = list(scores)
        lines += ["", "## Layer importance (original indexing)", ""]
        lines += ["| layer | " + " | ".join(domains) + " | removed |"]
        lines += ["|---:|" + "---:|" * len(domains) + ":---:|"]
        for i in range(num_layers):
            vals = " | ".join(f"{scores[d][i]:.4f}" for d in domains)
            lines.append(f"| {i} | {vals} | {'x' if i in removed else ''} |")
    if spec_text:
        lines += ["", "## Spec", "", "```", spec_text.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _write_manifest(
    out_dir: Path, source: str, removed: Sequence[int], layer_map: Mapping[int, int]
) -> tuple[str, ...]:
    meta = {
        "source": source,
        "removed": sorted(removed),
        "layer_map": {str(k): v for k, v in sorted(layer_map.items())},
    }
    return write_manifest(out_dir, meta)


# --- fresh-process self-check ----------------------------------------------------------------


def _expected_config(loaded: LoadedModel) -> dict[str, Any]:
    from prunec.arch import locate_decoder

    stack = locate_decoder(loaded.model)
    prefix = f"{stack.entry.text_config}." if stack.entry.text_config else ""
    expected: dict[str, Any] = {
        f"{prefix}{stack.entry.num_layers_key}": len(stack.layers),
    }
    for key in ("layer_types", *stack.entry.layer_lists):
        value = getattr(stack.text_config, key, None)
        if isinstance(value, list | tuple):
            expected[f"{prefix}{key}"] = list(value)
    return expected


#: Allowed max |difference| of a self-check, relative to max(1, the reference's largest
#: |value|), by the least precise dtype among those compared (measured margins: a float32
#: reference against a bf16 reload of a 28-layer model differs by ~2% of the scale).
TOLERANCE = {"float32": 1e-4, "float16": 3e-2, "bfloat16": 6e-2}


def tolerance(dtypes: Iterable[str]) -> float:
    """The relative tolerance for comparing results computed in or from `dtypes`."""
    return max(TOLERANCE.get(d, TOLERANCE["float32"]) for d in dtypes)


def _lossy(held: str, artifact: str) -> bool:
    """Whether converting weights from `held` to `artifact` can change them (float32 holds
    every float16 and bfloat16 value exactly)."""
    return artifact not in (held, "float32")


def compared_dtypes(compute: str, held: str, artifact: str) -> set[str]:
    """The dtypes a full self-check compares: the reference is computed in `compute` from
    weights held in `held`; the fresh process reloads `artifact` weights and computes in
    `compute` when that is wider, else in `artifact` (see selfcheck_script.py)."""
    from prunec.arch.precision import ITEMSIZE

    reload = compute if ITEMSIZE.get(compute, 4) >= ITEMSIZE.get(artifact, 4) else artifact
    dtypes = {compute, reload}
    if _lossy(held, artifact):
        dtypes.add(artifact)
    return dtypes


def light_dtypes(stored: str, artifact: str | None) -> set[str]:
    """The dtypes the light check compares: both sides compute in float32, from the source's
    weights and from the artifact's (`artifact` None: the same bytes)."""
    return {"float32"} | ({artifact} if artifact and _lossy(stored, artifact) else set())


@dataclass(frozen=True)
class SelfCheckJob:
    """One checkpoint to verify in the fresh process, with what it must reproduce.

    out_dir: the emitted checkpoint. payload: what the fresh process needs (inputs,
    reference logits, model class). expected_config: dotted config key -> expected value.
    tolerances: allowed max |logit| difference per input case.
    """

    out_dir: Path
    payload: dict[str, Any]
    expected_config: dict[str, Any]
    tolerances: tuple[float, ...]


def prepare_self_check(
    loaded: LoadedModel,
    out_dir: Path,
    cases: Sequence[Mapping[str, Any]],
    references: Sequence[Any] | None = None,
    artifact_dtype: str | None = None,
) -> SelfCheckJob:
    """Package a self-check job for `cases`.

    references: expected logits per case (e.g. the original model run under `skip_layers`);
    by default computed now from the pruned model in memory, in its compute dtype.
    artifact_dtype: the dtype the checkpoint's weights are written in (None: the held one);
    with the compute dtype it sets the tolerance (`compared_dtypes`).
    """
    from prunec.arch.precision import compute_dtype, held_dtype

    model: Any = loaded.model
    if references is None:
        references = [_reference_logits(model, c) for c in cases]
    expected_config = _expected_config(loaded)
    compute = str(compute_dtype(model)).removeprefix("torch.")
    held = held_dtype(model, loaded.storage_dtype)
    payload = {
        "class_name": type(model).__name__,
        "is_vlm": _is_vlm(model),
        "trust": type(model).__module__.startswith("transformers_modules"),
        "layer_counts": list(expected_config),
        "compute_dtype": compute,
        "cases": [
            {"inputs": {k: v.cpu() if hasattr(v, "cpu") else v for k, v in c.items()}, "logits": r}
            for c, r in zip(cases, references, strict=True)
        ],
    }
    relative = tolerance(compared_dtypes(compute, held, artifact_dtype or held))
    tolerances = tuple(relative * max(1.0, float(r.abs().max())) for r in references)
    return SelfCheckJob(Path(out_dir), payload, expected_config, tolerances)


def run_self_checks(jobs: Sequence[SelfCheckJob]) -> list[tuple[float, bool]]:
    """Check every job in ONE fresh Python process that imports transformers, never prunec.

    Returns (max |logit diff|, generate ok) per job; BuildError naming every problem of
    every failing checkpoint otherwise.
    """
    import torch

    from prunec.progress import progress

    with tempfile.TemporaryDirectory(prefix="prunec-selfcheck-") as tmp:
        triples = []
        for i, job in enumerate(jobs):
            payload_path, result_path = Path(tmp) / f"payload{i}.pt", Path(tmp) / f"result{i}.json"
            torch.save(job.payload, payload_path)
            triples.append([str(job.out_dir), str(payload_path), str(result_path)])
        jobs_file = Path(tmp) / "jobs.json"
        jobs_file.write_text(json.dumps(triples))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
        cmd = [sys.executable, "-I", str(SELF_CHECK_SCRIPT), str(jobs_file)]
        with progress(f"self-check: reloading {len(jobs)} checkpoint(s) in a fresh process"):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        results = [json.loads(Path(t[2]).read_text()) for t in triples if Path(t[2]).exists()]
        if proc.returncode != 0 or len(results) != len(jobs):
            failed = jobs[len(results)].out_dir if len(results) < len(jobs) else "?"
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise BuildError(
                f"self-check failed: the emitted checkpoint {failed} does not load with plain "
                "transformers in a fresh process: " + " | ".join(tail)
            )
    outcomes, problems = [], []
    for job, result in zip(jobs, results, strict=True):
        found = reload_problems(result, job.expected_config)
        for i, (diff, tol) in enumerate(zip(result["diffs"], job.tolerances, strict=True)):
            if not diff <= tol:
                found.append(
                    f"input {i}: reloaded logits differ by {diff:.3g} (tolerance {tol:.3g})"
                )
        generate_ok = all(len(g) > 0 for g in result["generated"])
        if not generate_ok:
            found.append("generate with KV cache produced no tokens after reload")
        problems += [f"{job.out_dir.name}: {p}" for p in found]
        outcomes.append((max(result["diffs"], default=0.0), generate_ok))
    if problems:
        raise BuildError("self-check failed: " + "; ".join(problems))
    return outcomes


def reload_problems(result: Mapping[str, Any], expected_config: Mapping[str, Any]) -> list[str]:
    """What a fresh-process reload reported wrong: missing, unexpected or mismatched weights,
    config counts unlike `expected_config`, an import of prunec (full and light checks)."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if result[kind]:
            shown = ", ".join(result[kind][:5])
            problems.append(f"{len(result[kind])} {kind.replace('_', ' ')} on reload ({shown})")
    for key, want in expected_config.items():
        got = result["config_counts"].get(key)
        if got != want:
            problems.append(f"reloaded config `{key}` is {got!r}, expected {want!r}")
    if result.get("prunec_imported"):
        problems.append("the fresh process imported prunec (the check must not depend on it)")
    return problems
