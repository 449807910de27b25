"""The light self-check: proves a streamed checkpoint right without holding a model anywhere.

Used when no process may hold a whole model: builds that stream without loading weights
(flat memory by design), and in-memory builds whose artifact would not fit beside what is
left. Three checks, each cheap:

1. bytes: every weight shard is read back once and its digest compared with the one
   computed from the source bytes while streaming (`stream.verify_digests`);
2. names, shapes and config: a fresh process (plain transformers, never prunec) loads the
   whole checkpoint on the meta device (no tensor data) and reports missing, unexpected or
   mismatched keys and the layer counts it read;
3. numbers: the same process runs the first layers of the source, with the removed ones made
   identities (what removal means), and the matching first layers of the checkpoint, on
   synthetic token ids, in float32, and compares the decoder outputs; then decodes the last
   token with the KV cache of the others (what `generate` does). The prefix covers the
   first removed layer and the layer after it when that fits in a sixth of the checkpoint
   (or 256 MiB), so the check's memory stays a small share of the model's.

The fresh process starts before the checkpoint is written: its imports and the source's
reference overlap the copy, and it reads the checkpoint only when told it is complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

from prunec.arch.checkpoint import read_header
from prunec.backends.hf.emit import reload_problems
from prunec.backends.hf.stream import PrunedLayout
from prunec.errors import BuildError

SELF_CHECK_SCRIPT = Path(__file__).with_name("selfcheck_script.py")
#: The numeric check's source prefix may hold this share of the checkpoint's bytes, or
#: `PREFIX_FLOOR` bytes when that is more (small models are checked deep enough).
PREFIX_SHARE = 1 / 6
PREFIX_FLOOR = 256 << 20
#: Length of the synthetic prompt (ids from the middle of the vocabulary).
PROMPT_TOKENS = 12


@dataclass(frozen=True)
class LightResult:
    """What the light check measured.

    diff: largest |difference| between the decoder outputs of the source prefix (removed
        layers as identities) and the checkpoint prefix. scale: the reference's largest
        |value|. layers: (source prefix length, checkpoint prefix length).
    generate_ok: decoding the last token with the KV cache of the others reproduced the full
        forward's last position (what `generate` relies on); False when the decoder attends
        both ways (a prefix LM such as PaliGemma's), where the two legitimately differ.
    """

    diff: float
    scale: float
    layers: tuple[int, int]
    generate_ok: bool


def synthetic_ids(config: Mapping[str, Any], count: int = PROMPT_TOKENS) -> list[int]:
    """`count` ids from the middle of the vocabulary, skipping every id the config names
    (`*_token_id`, `*_token_index`: pad, bos, eos, image tokens), so no image placeholder
    appears without pixels. Ordinary words sit in the middle of real vocabularies."""
    text = _text_section(config)
    special: set[int] = set()
    for section in (config, text):
        for key, value in section.items():
            if key.endswith(("_token_id", "_token_ids", "_token_index")):
                values = value if isinstance(value, list) else [value]
                special.update(v for v in values if isinstance(v, int))
    vocab = int(text.get("vocab_size") or config.get("vocab_size") or 2 * count + 2)
    ordinary = (i for i in chain(range(vocab // 2, vocab), range(vocab // 2)) if i not in special)
    return list(islice(ordinary, count))


def _text_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("text_config", "language_config", "llm_config"):
        if isinstance(config.get(key), dict):
            return config[key]  # type: ignore[no-any-return]
    return config


def prefix_lengths(layout: PrunedLayout, source_dir: Path) -> tuple[int, int]:
    """(source layers, checkpoint layers) of the numeric check's prefixes."""
    total = layer_bytes = 0
    for shard in layout.renames:
        header, _ = read_header(source_dir / shard)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            size = info["data_offsets"][1] - info["data_offsets"][0]
            total += size
            if layout.entry.rename_tensor(name, {}, {}) is None:  # a decoder layer's tensor
                layer_bytes += size
    per_layer = max(1, layer_bytes // max(1, layout.num_layers))
    affordable = max(1, int(max(total * PREFIX_SHARE, PREFIX_FLOOR)) // per_layer)
    removed = layout.removed
    wanted = removed[0] + 2 if removed else 1
    source_layers = min(wanted, affordable, layout.num_layers)
    kept = sorted(layout.layer_map)
    if not any(i < source_layers for i in kept):
        source_layers = kept[0] + 1
    return source_layers, sum(1 for i in kept if i < source_layers)


def expected_counts(layout: PrunedLayout) -> dict[str, Any]:
    """Dotted config keys -> the values a correct reload must show (layer count and every
    per-layer list)."""
    entry = layout.entry
    prefix = f"{entry.text_config}." if entry.text_config else ""
    text = layout.config[entry.text_config] if entry.text_config else layout.config
    expected: dict[str, Any] = {f"{prefix}{entry.num_layers_key}": len(layout.layer_map)}
    for key in ("layer_types", *entry.layer_lists):
        if isinstance(text.get(key), list):
            expected[f"{prefix}{key}"] = text[key]
    return expected


class LightCheck:
    """The light check's fresh process; use as a context manager around the writing.

    with light_check(layout, source_dir, out_dir) as check:
        ...write the checkpoint...
        result = check.finish(tolerance)
    """

    def __init__(self, payload: dict[str, Any], expected: Mapping[str, Any]) -> None:
        self.expected = dict(expected)
        self.payload = payload
        self._tmp = tempfile.TemporaryDirectory(prefix="prunec-lightcheck-")
        tmp = Path(self._tmp.name)
        self._result = tmp / "result.json"
        jobs = tmp / "jobs.json"
        jobs.write_text(json.dumps([{"payload": payload, "result": str(self._result)}]))
        self._log = (tmp / "stderr.txt").open("w+")
        self._proc = subprocess.Popen(
            light_command(jobs),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=fresh_environment(),
            text=True,
        )

    def __enter__(self) -> LightCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process if it still runs (a failed or interrupted build) and clean up."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._log.close()
        self._tmp.cleanup()

    def finish(self, tolerance: float, timeout: float = 3600) -> LightResult:
        """Tell the process the checkpoint is complete and judge what it reports.

        tolerance: allowed |difference| relative to max(1, the reference's scale).
        BuildError naming every problem.
        """
        from prunec.progress import progress

        with progress("self-check: fresh process, meta load and prefix comparison"):
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write("go\n")
                self._proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass  # it died already; its log says why
            try:
                code = self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        if code != 0 or not self._result.exists():
            self._log.seek(0)
            lines = self._log.read().strip().splitlines()
            reason = lines[-1] if lines else f"exit code {code}"
            raise BuildError(
                "self-check failed: the checkpoint does not load with plain transformers in a "
                f"fresh process: {reason}"
            )
        result = json.loads(self._result.read_text())
        layers = (self.payload["source_layers"], self.payload["kept_layers"])
        found = problems({**result, "layers": layers}, self.expected, tolerance)
        if found:
            raise BuildError("self-check failed: " + "; ".join(found))
        decoded = result["cache_diff"] is not None
        return LightResult(float(result["diff"]), float(result["scale"]), layers, decoded)


def light_command(jobs: Path) -> list[str]:
    """The fresh process of the light check for the jobs file `jobs` (see the script)."""
    return [sys.executable, "-I", str(SELF_CHECK_SCRIPT), "--light", str(jobs)]


def fresh_environment() -> dict[str, str]:
    """This environment without what would let the fresh process import prunec."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}


def problems(result: Mapping[str, Any], expected: Mapping[str, Any], tolerance: float) -> list[str]:
    """Everything wrong in one light check's result (`tolerance`: relative)."""
    found = reload_problems(result, expected)
    allowed = tolerance * max(1.0, float(result["scale"]))
    source, kept = result.get("layers", ("?", "?"))
    if not result["diff"] <= allowed:
        found.append(
            f"the first {kept} layers differ from the source's first {source} "
            f"(removed layers skipped) by {result['diff']:.3g} (tolerance {allowed:.3g})"
        )
    if result["cache_diff"] is not None and not result["cache_diff"] <= allowed:
        found.append(
            "decoding the last token with the KV cache differs from the full forward by "
            f"{result['cache_diff']:.3g} (tolerance {allowed:.3g})"
        )
    return found


def light_check(
    layout: PrunedLayout,
    source_dir: Path,
    out_dir: Path,
    *,
    class_name: str = "",
    trust: bool = False,
) -> LightCheck:
    """Start the light check of the checkpoint that is about to be written into `out_dir`."""
    payload = light_payload(layout, source_dir, out_dir, class_name=class_name, trust=trust)
    return LightCheck(payload, expected_counts(layout))


def light_payload(
    layout: PrunedLayout,
    source_dir: Path,
    out_dir: Path,
    *,
    class_name: str = "",
    trust: bool = False,
) -> dict[str, Any]:
    """What the fresh process needs to check `out_dir` against `source_dir` (JSON)."""
    config = layout.config
    source_layers, kept_layers = prefix_lengths(layout, source_dir)
    architectures = config.get("architectures") or [""]
    return {
        "source": str(source_dir),
        "checkpoint": str(out_dir),
        "removed": layout.removed,
        "source_layers": source_layers,
        "kept_layers": kept_layers,
        "input_ids": synthetic_ids(config),
        "class_name": class_name or str(architectures[0]),
        "is_vlm": "vision_config" in config,
        "trust": trust,
        "compute_dtype": "float32",
        "layer_counts": list(expected_counts(layout)),
    }


__all__ = [
    "LightCheck",
    "LightResult",
    "expected_counts",
    "light_check",
    "light_command",
    "light_payload",
    "problems",
    "synthetic_ids",
]
