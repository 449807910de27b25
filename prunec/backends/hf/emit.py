"""The Hugging Face checkpoint emitter: weights, config, processor, model card, manifest,
and a fresh-process self-check with plain transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.backends.atomic import prunec_version as _prunec_version
from prunec.backends.atomic import write_manifest
from prunec.errors import BuildError

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel

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
    max_abs_logit_diff: largest |logit| difference between the reloaded checkpoint (fresh
        process) and the pruned model in memory, over all checked inputs.
    layer_map: old decoder index -> new index for the kept layers.
    generate_ok: `generate` with KV cache ran after reload and produced tokens.
    seconds: wall time of the whole emission, self-check included.
    checked_inputs: how many input cases the self-check compared (0 = check skipped).
    streamed: True when the weights were copied from the source shards (no model in memory).
    """

    files: tuple[str, ...]
    max_abs_logit_diff: float
    layer_map: dict[int, int]
    generate_ok: bool
    seconds: float
    checked_inputs: int = 0
    streamed: bool = False

    def summary(self) -> str:
        """One line for the build log."""
        how = "streamed, " if self.streamed else ""
        return (
            f"{how}reload max |Δlogit| {self.max_abs_logit_diff:.2e}, "
            f"generate {'ok' if self.generate_ok else 'FAILED'}, {self.seconds:.1f}s"
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
    built with the processor.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layer_map = _layer_map(loaded, removed)
    cases = [dict(c) for c in (sample_inputs or default_inputs(loaded))]
    # Reference logits come from the pruned model in memory, before anything is written.
    job = prepare_self_check(loaded, out_dir, cases) if self_check else None
    _save_weights(loaded.model, out_dir)
    _copy_processor(loaded, out_dir)
    (out_dir / "README.md").write_text(
        model_card(
            source or str(loaded.source_dir or ""),
            spec_text,
            layer_map,
            loaded.num_layers,
            scores,
            how_chosen=how_chosen,
        )
    )
    diff, generate_ok = 0.0, False
    if job is not None:
        [(diff, generate_ok)] = run_self_checks([job])
    files = _write_manifest(out_dir, source, removed, layer_map)
    return HFReport(
        files=files,
        max_abs_logit_diff=diff,
        layer_map=layer_map,
        generate_ok=generate_ok,
        seconds=time.perf_counter() - started,
        checked_inputs=len(cases) if self_check else 0,
    )


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

    device = getattr(model, "device", torch.device("cpu"))
    moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
    with torch.no_grad():
        return model(**moved).logits.float().cpu()


# --- files ----------------------------------------------------------------------------------


def _save_weights(model: Any, out_dir: Path) -> None:
    # VLM configs validate their text config only at load time; fail here, not for users.
    for config in (model.config, model.config.get_text_config(decoder=True)):
        validate = getattr(config, "validate", None)
        if callable(validate):
            try:
                validate()
            except (ValueError, TypeError) as exc:
                raise BuildError(f"the pruned config is invalid: {exc}") from exc
    model.save_pretrained(out_dir, max_shard_size=MAX_SHARD_SIZE)


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


def _tolerance(model: Any, reference: Any) -> float:
    import torch

    half = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
    scale = max(1.0, float(reference.abs().max()))
    return (3e-2 if half else 1e-4) * scale


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
) -> SelfCheckJob:
    """Package a self-check job for `cases`.

    references: expected logits per case (e.g. the original model run under `skip_layers`);
    by default computed now from the pruned model in memory.
    """
    model: Any = loaded.model
    if references is None:
        references = [_reference_logits(model, c) for c in cases]
    expected_config = _expected_config(loaded)
    payload = {
        "class_name": type(model).__name__,
        "is_vlm": _is_vlm(model),
        "trust": type(model).__module__.startswith("transformers_modules"),
        "layer_counts": list(expected_config),
        "cases": [
            {"inputs": {k: v.cpu() if hasattr(v, "cpu") else v for k, v in c.items()}, "logits": r}
            for c, r in zip(cases, references, strict=True)
        ],
    }
    tolerances = tuple(_tolerance(model, r) for r in references)
    return SelfCheckJob(Path(out_dir), payload, expected_config, tolerances)


def run_self_checks(jobs: Sequence[SelfCheckJob]) -> list[tuple[float, bool]]:
    """Check every job in ONE fresh Python process that imports transformers, never prunec.

    Returns (max |logit diff|, generate ok) per job; BuildError naming every problem of
    every failing checkpoint otherwise.
    """
    import torch

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
        found = _problems(result, job.expected_config)
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


def _problems(result: Mapping[str, Any], expected_config: Mapping[str, Any]) -> list[str]:
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
