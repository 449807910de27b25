"""The trained testbed: a small LLaVA trained from scratch on synthetic math/general images.

`ensure_testbed(root)` trains it once (deterministically) and caches the result under `root`:
`model/` (weights, config, processor: loads with `AutoModelForImageTextToText` and
`AutoProcessor` like a hub model) and `data/` (calibration and evaluation JSONL + images).
A marker file holds the recipe's fingerprint, so a changed recipe retrains.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunec.testbed.synth import DOMAINS, Sample
from prunec.testbed.train import HeldOut, TrainConfig, held_out, train

__all__ = ["MARKER", "TestbedPaths", "TrainConfig", "ensure_testbed", "write_jsonl"]

#: The file whose presence (with a matching fingerprint) means "trained and complete".
MARKER = "testbed.json"


@dataclass(frozen=True)
class TestbedPaths:
    """Where a trained testbed lives.

    model: the HF checkpoint + processor directory.
    data: folder of `<domain>_calib.jsonl` / `<domain>_eval.jsonl` and their images.
    info: what the marker records (fingerprint, config, accuracy per domain, training time).
    """

    root: Path
    model: Path
    data: Path
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def calib(self, domain: str) -> Path:
        return self.data / f"{domain}_calib.jsonl"

    def eval(self, domain: str) -> Path:
        return self.data / f"{domain}_eval.jsonl"


def write_jsonl(samples: list[Sample], path: Path, image_prefix: str) -> None:
    """Write samples as JSONL lines `{"image", "text", "answer"}`, images in `img/` beside it."""
    image_dir = path.parent / "img"
    image_dir.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for i, s in enumerate(samples):
            name = f"img/{image_prefix}_{i:04d}.png"
            s.image.save(path.parent / name)
            out.write(json.dumps({"image": name, "text": s.text, "answer": s.answer}) + "\n")


def _write_data(held: HeldOut, data_dir: Path) -> None:
    for domain in DOMAINS:
        write_jsonl(held.calib[domain], data_dir / f"{domain}_calib.jsonl", f"{domain}_calib")
        write_jsonl(held.eval[domain], data_dir / f"{domain}_eval.jsonl", f"{domain}_eval")


def _cached(root: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("fingerprint") == fingerprint else None


def ensure_testbed(
    root: Path,
    *,
    force: bool = False,
    config: TrainConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TestbedPaths:
    """Train the testbed into `root` unless a complete one with the same recipe is there."""
    from dataclasses import asdict

    import torch

    from prunec.backends.atomic import atomic_directory, write_manifest
    from prunec.testbed.processor import build_processor
    from prunec.verify import evaluate, read_records

    config = config or TrainConfig()
    root = Path(root).resolve()
    fingerprint = config.fingerprint()
    info = None if force else _cached(root, fingerprint)
    if info is not None:
        return TestbedPaths(root, root / "model", root / "data", info)
    with atomic_directory(root) as staged:
        processor = build_processor()
        held = held_out(config)
        _write_data(held, staged / "data")
        start = time.perf_counter()
        model = train(config, processor, held, on_step)
        seconds = time.perf_counter() - start
        model.save_pretrained(staged / "model")
        processor.save_pretrained(staged / "model")
        accuracy = {}
        with torch.inference_mode():
            for domain in DOMAINS:
                records = read_records(staged / "data" / f"{domain}_eval.jsonl")
                accuracy[domain] = evaluate(model, processor, records).accuracy
        info = {
            "fingerprint": fingerprint,
            "config": asdict(config),
            "train_seconds": round(seconds, 1),
            "steps_per_second": round(config.steps / seconds, 3),
            "threads": 1,
            "eval_accuracy": accuracy,
        }
        (staged / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        write_manifest(staged, {"kind": "testbed", "fingerprint": fingerprint})
    return TestbedPaths(root, root / "model", root / "data", info)
