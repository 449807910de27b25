"""The `hf` target kind: a Hugging Face checkpoint directory that loads with plain transformers.

Every HF target is written by streaming the kept tensors from the source safetensors shards
(`stream.py`), with or without a model in memory; `save_pretrained` of the model in memory
is the fallback for sources without local safetensors. In a build that holds the model,
`prepare` takes the reference logits before the build releases it, and `emit` writes and
self-checks without it: a fresh process that imports transformers and never prunec
(`selfcheck_script.py`) reloads the whole checkpoint when it fits in memory, else makes the
light check of `stream_check.py`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from prunec.backends.atomic import MANIFEST, write_manifest
from prunec.backends.base import Backend, EmitJob, TargetOptions
from prunec.backends.hf.emit import (
    MIN_PROMPT_TOKENS,
    PROCESSOR_GLOBS,
    HFReport,
    PreparedHF,
    default_inputs,
    emit_hf,
    finish_hf,
    model_card,
    prepare_hf,
    prepare_self_check,
    run_self_checks,
)

if TYPE_CHECKING:
    from prunec.scoring import LayerScores

__all__ = [
    "BACKEND",
    "MANIFEST",
    "MIN_PROMPT_TOKENS",
    "PROCESSOR_GLOBS",
    "HFBackend",
    "HFOptions",
    "HFReport",
    "default_inputs",
    "emit_hf",
    "model_card",
    "prepare_self_check",
    "run_self_checks",
    "write_manifest",
]


class HFOptions(TargetOptions):
    """`target hf "DIR" { dtype bfloat16 }`.

    dtype: the floating dtype of the written weights; `source` keeps the checkpoint's own
    (whatever dtype calibration computed in).
    """

    dtype: Literal["source", "float32", "float16", "bfloat16"] = "source"


class HFBackend(Backend):
    """`target hf "DIR"`: safetensors weights, config, processor files, model card, manifest."""

    name = "hf"
    summary = "a Hugging Face checkpoint directory (loads with plain transformers)"
    Options = HFOptions
    streams = True

    def prepare(self, job: EmitJob) -> PreparedHF | None:
        from prunec.report import how_chosen_markdown

        if job.loaded is None:
            return None
        plan = job.plan
        healing = job.selection.healing
        return prepare_hf(
            job.loaded,
            list(job.selection.removed),
            job.staged,
            source=plan.model.source,
            scores=_card_scores(job.scores, plan),
            dtype=self.options(job.target).dtype,
            how_chosen=how_chosen_markdown(job.selection),
            corrected=healing.corrected if healing is not None else (),
            projection=healing.projection if healing is not None else "",
        )

    def emit(self, job: EmitJob) -> HFReport:
        started = time.perf_counter()
        prepared = job.prepared if job.prepared is not None else self.prepare(job)
        if prepared is None:
            return _emit_streamed(job, self.options(job.target).dtype)
        return finish_hf(
            prepared,
            job.staged,
            spec_text=job.plan.spec_text,
            dtype=self.options(job.target).dtype,
            started=started,
        )


def _card_scores(scores: LayerScores | None, plan: Any) -> Any:
    from prunec.report import domain_importance

    return domain_importance(scores, [d.name for d in plan.domains]) or None


def _emit_streamed(job: EmitJob, dtype: str) -> HFReport:
    """A build without weights in memory: stream, then the light check (no process of the
    build ever holds the model)."""
    from pathlib import Path

    from prunec.backends.hf.emit import _checked_bytes, light_dtypes
    from prunec.backends.hf.emit import tolerance as relative_tolerance
    from prunec.backends.hf.stream import pruned_layout, stream_prune_checkpoint
    from prunec.backends.hf.stream_check import light_check
    from prunec.report import how_chosen_markdown

    tick = time.perf_counter()
    plan, removed = job.plan, job.selection.removed
    source = Path(plan.model.source)
    layout = pruned_layout(source, removed)
    with light_check(layout, source, job.staged, trust=plan.model.trust_remote_code) as check:
        written = stream_prune_checkpoint(
            source,
            job.staged,
            removed,
            spec_text=plan.spec_text,
            dtype=dtype,
            how_chosen=how_chosen_markdown(job.selection),
        )
        stored = _stored_dtype(source)
        artifact = written.dtype if written.dtype != "source" else None
        result = _checked_bytes(
            job.staged,
            written.digests,
            lambda: check.finish(relative_tolerance(light_dtypes(stored, artifact))),
        )
    return HFReport(
        files=written.files,
        max_abs_logit_diff=result.diff,
        layer_map=written.layer_map,
        generate_ok=result.generate_ok,
        seconds=time.perf_counter() - tick,
        checked_inputs=1,
        streamed=True,
        check="light",
        checked_layers=result.layers,
    )


def _stored_dtype(source: Any) -> str:
    from prunec.arch.checkpoint import storage_dtype

    return storage_dtype(source) or "float32"


BACKEND: Any = HFBackend()
