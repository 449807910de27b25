"""Running onnxruntime-genai's model builder on a pruned Hugging Face checkpoint.

The builder is used as the library it is (`parse_extra_options` + `create_model`, what its
`python -m onnxruntime_genai.models.builder` entry point calls), in this process: torch and
transformers are already imported here, which saves the ~10 s a fresh interpreter spends
importing them. Its progress output is captured and shown only when it fails.

`adapt_config` bridges the builder (0.18) and transformers 5 configs, on the in-memory config
the builder reads, never on the checkpoint: both fixes were found by building tiny models and
comparing greedy tokens with transformers (tests/test_genai.py keeps them honest).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.errors import BuildError

#: Lines of the builder's output quoted in a failure message.
OUTPUT_TAIL = 6


@dataclass(frozen=True)
class BuilderRun:
    """seconds: the builder's wall time. adapted: what `adapt_config` changed for it."""

    seconds: float
    adapted: tuple[str, ...]


def adapt_config(config: Any) -> list[str]:
    """Make a transformers 5 config read the way the builder expects; returns what changed.

    - Gemma 3 keeps one `rope_parameters` dict per layer type; the builder reads a flat dict
      (the global layers') plus `rope_local_base_freq` (the sliding layers' theta) and fails
      with KeyError('rope_type') otherwise.
    - Mistral has `sliding_window` but no `layer_types`: transformers applies the window on
      every layer, the builder (which reads `layer_types`) on none, so long prompts diverge.
    """
    text = config.get_text_config(decoder=True)
    changed = []
    rope = getattr(text, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_type" not in rope and "full_attention" in rope:
        if "sliding_attention" in rope:
            text.rope_local_base_freq = rope["sliding_attention"]["rope_theta"]
        text.rope_parameters = dict(rope["full_attention"])
        changed.append("per-layer-type rope_parameters flattened")
    if getattr(text, "sliding_window", None) and getattr(text, "layer_types", None) is None:
        text.layer_types = ["sliding_attention"] * int(text.num_hidden_layers)
        changed.append("sliding window on every layer made explicit")
    return changed


def run_builder(
    hf_dir: Path,
    out_dir: Path,
    precision: str,
    execution: str,
    cache_dir: Path,
    *,
    exclude_embeds: bool = False,
) -> BuilderRun:
    """Write the builder's folder for the checkpoint in `hf_dir` into `out_dir`.

    exclude_embeds: the decoder takes `inputs_embeds` instead of `input_ids` (VLMs, whose
    embedding graph merges image features first). BuildError quotes the builder's last output
    lines when it fails.
    """
    extra = ["hf_token=false"]  # a local folder: never ask the hub for credentials
    if exclude_embeds:
        extra.append("exclude_embeds=true")
    if execution == "cuda":
        # Q/K RMSNorm fused into GroupQueryAttention exists on CUDA only: kept as separate
        # nodes, the same folder also runs on onnxruntime's CPU kernels, so it can be checked
        # on a machine without a GPU (and is checked the same way on one).
        extra.append("fuse_qk_norm_gqa=false")
    from prunec.progress import progress

    started = time.perf_counter()
    output = io.StringIO()
    args = (None, str(hf_dir), str(out_dir), precision, execution, str(cache_dir))
    try:
        # Progress outside the capture: its lines go to the stderr of the stage's start.
        with progress("genai: onnxruntime-genai's model builder"), _captured(output):
            from onnxruntime_genai.models.builder import create_model, parse_extra_options

            options = parse_extra_options(*args, extra)
            adapted = adapt_config(options["hf_details"]["hf_config"])
            create_model(*args, **options)
    except Exception as err:
        tail = [line for line in output.getvalue().splitlines() if line.strip()][-OUTPUT_TAIL:]
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise BuildError(
            f"onnxruntime-genai's model builder failed on the pruned checkpoint: "
            f"{type(err).__name__}: {first}" + ("\n  " + "\n  ".join(tail) if tail else "")
        ) from err
    return BuilderRun(time.perf_counter() - started, tuple(adapted))


@contextlib.contextmanager
def _captured(output: io.StringIO) -> Iterator[None]:
    """Send the builder's prints, progress bars and log records to `output`.

    Importing the builder runs `logging.basicConfig(level=INFO)` (in onnxruntime's int4
    quantizer), which would leave every library's INFO records printing on stderr for the rest
    of the build: the root logger is put back as it was.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
