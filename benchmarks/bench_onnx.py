"""onnxruntime latency of a depth-pruned vs the unpruned model, and onnxruntime vs PyTorch eager.

A Llama-like model (default 16 layers, hidden 512, vocab 32000, random weights) is exported
with `emit_onnx` (parity-checked), then `k` layers are removed with `remove_layers` and the
pruned model is exported too. Prefill (a prompt, logits for its last token, as generation does) and one cached decode step
are timed for all four engines interleaved, round by round, so background load hits them
alike; medians are reported. Target: pruned/unpruned decode <= (L-k)/L + 0.05.

Usage: python benchmarks/bench_onnx.py [--layers 16] [--remove 4] [--seq 128] [--rounds 30]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch


def build_model(layers: int, hidden: int, vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def spread(layers: int, k: int) -> list[int]:
    """k layers evenly spread over the middle of the stack (first and last kept)."""
    return [round(float(x)) for x in np.linspace(1, layers - 2, k)]


def export(model: torch.nn.Module, out: Path) -> float:
    from prunec.backends.onnx import OnnxOptions, emit_onnx

    report = emit_onnx(model, None, out, target=OnnxOptions())
    return max(report.max_abs_diff.values())


class OrtEngine:
    """Prefill and one decode step through the exported decoder graph."""

    def __init__(self, directory: Path, seq: int, threads: int):
        from prunec.runtime import OnnxGenerator

        self.gen = OnnxGenerator(directory, threads=threads)
        rng = np.random.default_rng(0)
        hidden = self.gen.manifest.hidden_size
        self.embeds = rng.standard_normal((1, seq, hidden)).astype(np.float32) * 0.02
        self.mask = np.ones((1, seq), np.int64)
        self.positions = np.arange(seq, dtype=np.int64)[None]
        _, self.past = self.gen.decode(self.embeds, self.mask, self.positions)
        self.step = self.embeds[:, :1]
        self.step_mask = np.ones((1, seq + 1), np.int64)
        self.step_pos = np.array([[seq]], np.int64)

    def prefill(self) -> None:
        last = np.array([self.embeds.shape[1] - 1])  # generation needs only the last logits
        self.gen.decode(self.embeds, self.mask, self.positions, None, last)

    def decode(self) -> None:
        self.gen.decode(self.step, self.step_mask, self.step_pos, self.past)


class TorchEngine:
    """The same two calls in PyTorch eager (the model's own DynamicCache)."""

    def __init__(self, model: torch.nn.Module, seq: int):
        self.model = model
        rng = np.random.default_rng(0)
        hidden = model.config.hidden_size
        self.embeds = torch.from_numpy(
            rng.standard_normal((1, seq, hidden)).astype(np.float32) * 0.02
        )
        self.seq = seq
        with torch.no_grad():
            self.cache = model(inputs_embeds=self.embeds, use_cache=True).past_key_values

    def prefill(self) -> None:
        with torch.no_grad():
            self.model(inputs_embeds=self.embeds, use_cache=False, logits_to_keep=1)

    def decode(self) -> None:
        cache = copy.deepcopy(self.cache)  # keep the past length fixed across rounds
        with torch.no_grad():
            self.model(
                inputs_embeds=self.embeds[:, :1],
                past_key_values=cache,
                position_ids=torch.tensor([[self.seq]]),
                use_cache=True,
            )


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--remove", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from prunec.arch import remove_layers

    full = build_model(args.layers, args.hidden, args.vocab)
    pruned = copy.deepcopy(full)
    removed = spread(args.layers, args.remove)
    remove_layers(pruned, removed)
    with tempfile.TemporaryDirectory() as tmp:
        diffs = {
            "full": export(full, Path(tmp) / "full"),
            "pruned": export(pruned, Path(tmp) / "pruned"),
        }
        engines = {
            "ort_full": OrtEngine(Path(tmp) / "full", args.seq, args.threads),
            "ort_pruned": OrtEngine(Path(tmp) / "pruned", args.seq, args.threads),
            "torch_full": TorchEngine(full, args.seq),
            "torch_pruned": TorchEngine(pruned, args.seq),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for phase in ("prefill", "decode"):
            for engine in engines.values():  # warm-up
                getattr(engine, phase)()
            for _ in range(args.rounds):
                for name, engine in engines.items():
                    times.setdefault((name, phase), []).append(timed(getattr(engine, phase)))
    med = {key: statistics.median(values) for key, values in times.items()}
    layers, k = args.layers, args.remove
    print(
        f"Llama-like L={layers} hidden={args.hidden} vocab={args.vocab} seq={args.seq}, removed {removed}; "
        f"threads={args.threads}, {args.rounds} interleaved rounds, medians",
        file=sys.stderr,
    )
    print(f"export parity max|ort-torch|: full {diffs['full']:.2e}, pruned {diffs['pruned']:.2e}")
    print(
        f"{'phase':8} {'ort full':>10} {'ort pruned':>11} {'torch full':>11} {'torch pruned':>13}  (ms)"
    )
    for phase in ("prefill", "decode"):
        row = [med[(n, phase)] * 1e3 for n in engines]
        print(f"{phase:8} {row[0]:10.2f} {row[1]:11.2f} {row[2]:11.2f} {row[3]:13.2f}")
    target = (layers - k) / layers + 0.05
    for phase in ("prefill", "decode"):
        ratio = med[("ort_pruned", phase)] / med[("ort_full", phase)]
        print(
            f"ort pruned/unpruned {phase}: {ratio:.3f}  (layer ratio {(layers - k) / layers:.3f})"
        )
    for phase in ("prefill", "decode"):
        for variant in ("full", "pruned"):
            ratio = med[(f"ort_{variant}", phase)] / med[(f"torch_{variant}", phase)]
            print(f"ort/torch eager {phase} ({variant}): {ratio:.3f}")
    decode_ratio = med[("ort_pruned", "decode")] / med[("ort_full", "decode")]
    ok = decode_ratio <= target
    print(
        f"target pruned/unpruned decode <= {target:.3f}: {'met' if ok else 'NOT met'} ({decode_ratio:.3f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
