"""`emit_genai`: pruned HF checkpoint -> onnxruntime-genai's builder -> (vision graphs) -> check."""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.backends.genai import GenaiOptions
from prunec.backends.genai.arch import arch_for, unsupported_reason
from prunec.backends.genai.build import run_builder
from prunec.backends.genai.check import Prompt, self_check, text_prompts
from prunec.backends.genai.report import GenaiReport
from prunec.errors import BuildError

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel
    from prunec.backends.base import EmitJob

#: Scratch folder inside the staging directory (the HF checkpoint the builder reads, its
#: cache): removed before publishing, and with the staging directory if the build dies.
SCRATCH = ".prunec-genai-scratch"
#: tokenizer.json models onnxruntime-genai's tokenizer reads.
READABLE_TOKENIZERS = ("BPE", "Unigram")


def emit_genai(job: EmitJob) -> GenaiReport:
    """Write the onnxruntime-genai folder for the pruned model into `job.staged`, check it.

    Raises BuildError for an unsupported model (before any work), a tokenizer onnxruntime-genai
    cannot read, a builder or exporter failure, or a folder that does not reproduce
    transformers (see `check.py`).
    """
    started = time.perf_counter()
    loaded = job.loaded
    if loaded is None:
        raise BuildError("target genai needs the pruned model in memory (it does not stream)")
    options: GenaiOptions = GenaiOptions.model_validate(job.target.options)
    model: Any = loaded.model
    config = model.config.to_dict()
    reason = unsupported_reason(config)
    if reason is not None:
        raise BuildError(f"target genai: {reason}")
    arch = arch_for(config)
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    if tokenizer is None:
        raise BuildError("target genai needs the model's tokenizer (none was found)")
    threshold = 1.0 if options.precision == "fp32" else options.agreement
    staged = Path(job.staged)
    scratch = staged / SCRATCH
    reference = _float32(model)
    try:
        hf_dir = _write_checkpoint(job, loaded, scratch / "hf")
        run = run_builder(
            hf_dir,
            staged,
            options.precision,
            options.execution,
            scratch / "cache",
            exclude_embeds=arch.vision,
        )
        _check_tokenizer_kind(staged / "tokenizer.json")
        prompts = text_prompts(tokenizer, job.samples)
        if arch.vision:
            prompts += _add_vision(reference, loaded, staged, job)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = self_check(
        staged,
        reference,
        tokenizer,
        prompts,
        execution=options.execution,
        precision=options.precision,
        threshold=threshold,
    )
    genai_config = json.loads((staged / "genai_config.json").read_text())
    return GenaiReport(
        files=tuple(sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())),
        genai_type=str(genai_config["model"]["type"]),
        precision=options.precision,
        execution=options.execution,
        checked_on=result.checked_on,
        tokenizer_prompts=result.tokenizer_prompts,
        agreement=result.agreement,
        threshold=threshold,
        tokens=result.tokens,
        prompts=len(prompts),
        image_prompts=sum(p.has_image for p in prompts),
        max_abs_logit_diff=result.max_abs_logit_diff,
        chat_template_parity=result.chat_template_parity,
        seconds=time.perf_counter() - started,
        builder_seconds=run.seconds,
        notes=tuple(f"builder config: {change}" for change in run.adapted),
    )


def _add_vision(reference: Any, loaded: LoadedModel, staged: Path, job: EmitJob) -> list[Prompt]:
    from prunec.backends.genai.vision import add_vision

    try:
        return add_vision(reference, loaded.processor, loaded.source_dir, staged, job.samples)
    except BuildError:
        raise
    except Exception as err:  # exporter failures: name the cause, not a trace
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise BuildError(
            f"exporting the vision graphs for onnxruntime-genai failed: "
            f"{type(err).__name__}: {first}"
        ) from err


def _check_tokenizer_kind(path: Path) -> None:
    """A precise error for a tokenizer onnxruntime-genai cannot read (before it says less)."""
    if not path.is_file():
        raise BuildError(
            "target genai needs a fast tokenizer (tokenizer.json): onnxruntime-genai reads "
            "no other tokenizer format"
        )
    kind = json.loads(path.read_text()).get("model", {}).get("type")
    if kind not in READABLE_TOKENIZERS:
        raise BuildError(
            f"onnxruntime-genai cannot read the model's {kind} tokenizer (tokenizer.json); "
            "it reads " + " and ".join(READABLE_TOKENIZERS) + " models"
        )


def _write_checkpoint(job: EmitJob, loaded: LoadedModel, out: Path) -> Path:
    """The pruned checkpoint the builder reads (no self-check: the folder's check covers it)."""
    from prunec.backends.hf import emit_hf

    emit_hf(
        loaded,
        list(job.selection.removed),
        out,
        spec_text=job.plan.spec_text,
        source=job.plan.model.source,
        self_check=False,
    )
    return out


def _float32(model: Any) -> Any:
    """The reference model in float32 (the folder's fp32 graphs compute in float32)."""
    import torch

    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model.eval()
    return copy.deepcopy(model).float().eval()


__all__ = ["Prompt", "emit_genai"]
