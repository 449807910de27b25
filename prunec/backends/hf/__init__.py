"""The `hf` target kind: a Hugging Face checkpoint directory that loads with plain transformers.

Two ways to write it: `emit.py` saves the pruned model held in memory; `stream.py` copies the
kept tensors shard by shard from the source safetensors checkpoint without loading weights
(builds that need no model in memory). Both self-check the result in a fresh process that
imports transformers and never prunec (`selfcheck_script.py`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prunec.backends.atomic import MANIFEST, write_manifest
from prunec.backends.base import Backend, EmitJob
from prunec.backends.hf.emit import (
    MIN_PROMPT_TOKENS,
    PROCESSOR_GLOBS,
    HFReport,
    default_inputs,
    emit_hf,
    model_card,
    prepare_self_check,
    run_self_checks,
)

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel
    from prunec.scoring import LayerScores

__all__ = [
    "BACKEND",
    "MANIFEST",
    "MIN_PROMPT_TOKENS",
    "PROCESSOR_GLOBS",
    "HFBackend",
    "HFReport",
    "default_inputs",
    "emit_hf",
    "model_card",
    "prepare_self_check",
    "run_self_checks",
    "write_manifest",
]


class HFBackend(Backend):
    """`target hf "DIR"`: safetensors weights, config, processor files, model card, manifest."""

    name = "hf"
    summary = "a Hugging Face checkpoint directory (loads with plain transformers)"
    streams = True

    def emit(self, job: EmitJob) -> HFReport:
        if job.loaded is None:
            return _emit_streamed(job)
        return _emit_loaded(job, job.loaded, job.scores)


def _emit_loaded(job: EmitJob, loaded: LoadedModel, scores: LayerScores | None) -> HFReport:
    from prunec.report import domain_importance, how_chosen_markdown

    plan = job.plan
    return emit_hf(
        loaded,
        list(job.selection.removed),
        job.staged,
        spec_text=plan.spec_text,
        source=plan.model.source,
        scores=domain_importance(scores, [d.name for d in plan.domains]) or None,
        how_chosen=how_chosen_markdown(job.selection),
    )


def _emit_streamed(job: EmitJob) -> HFReport:
    from pathlib import Path

    from prunec.backends.hf.stream import stream_prune_checkpoint
    from prunec.backends.hf.stream_check import self_check_streamed
    from prunec.report import how_chosen_markdown

    tick = time.perf_counter()
    plan, removed = job.plan, job.selection.removed
    written = stream_prune_checkpoint(
        Path(plan.model.source),
        job.staged,
        removed,
        spec_text=plan.spec_text,
        how_chosen=how_chosen_markdown(job.selection),
    )
    diff, generate_ok, inputs = self_check_streamed(plan.model, job.staged, removed)
    return HFReport(
        files=written.files,
        max_abs_logit_diff=diff,
        layer_map=written.layer_map,
        generate_ok=generate_ok,
        seconds=time.perf_counter() - tick,
        checked_inputs=inputs,
        streamed=True,
    )


BACKEND: Any = HFBackend()
