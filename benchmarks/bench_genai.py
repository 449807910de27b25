"""Generation speed of one depth-pruned model in three runtimes: onnxruntime-genai (`target
genai`), `prunec run` (`target onnx`: prunec's numpy loop over onnxruntime graphs) and PyTorch
`generate`, each on the unpruned and the pruned model.

A Llama-like model (default 24 layers, hidden 512, vocab 32000, random weights, a byte-level
BPE tokenizer trained here) is saved as a checkpoint; `prunec build` removes `k` layers
spread over the middle and writes the pruned `genai` (fp32 and int4) and `onnx` targets, each
self-checked against transformers. The unpruned folders come from the same emitters
(onnxruntime-genai's builder, prunec's ONNX exporter) on the full checkpoint.

Every engine greedily generates `--new` tokens after the same `--prompt`-token prompt (EOS
suppressed, so all generate the same count), with `--threads` intra-op threads and no
spin-waiting; engines take turns, round by round, and medians are reported: time to first
token (prefill) and decode tokens/s after it.

Target: onnxruntime-genai fp32 decode time per token, pruned / unpruned, <= (L-k)/L + 0.05.

Usage: python benchmarks/bench_genai.py [--layers 24] [--remove 6] [--hidden 512]
           [--prompt 128] [--new 64] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

Result = tuple[float, float, int]  # (time to first token s, decode s, tokens generated)


def build_checkpoint(out: Path, layers: int, hidden: int, vocab: int) -> None:
    """A random Llama-like checkpoint with a byte-level BPE tokenizer onnxruntime-genai reads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(hidden * 2.75),
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    LlamaForCausalLM(config).eval().save_pretrained(out)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([__doc__ or ""] * 4, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(out)


def spread(layers: int, k: int) -> list[int]:
    """k layers evenly spread over the middle of the stack (first and last kept)."""
    return sorted({round(float(x)) for x in np.linspace(1, layers - 2, k)})


def build_pruned(source: Path, out: Path, removed: list[int]) -> list[str]:
    """`prunec build`: the pruned genai (fp32, int4) and onnx targets; their report lines."""
    from prunec import build

    spec = out / "bench.prune"
    spec.write_text(
        f'model "{source}"\nprune {{\n  remove {", ".join(map(str, removed))}\n}}\n'
        f'target genai "genai-fp32"\n'
        f'target genai "genai-int4" {{ precision int4  agreement 0 }}\n'
        f'target onnx "onnx"\n'
    )
    result = build(spec, write_lock=False)
    return [f"{t.target.path.name}: {t.report.summary()}" for t in result.targets]


def build_unpruned(source: Path, out: Path, model: torch.nn.Module) -> None:
    """The same emitters on the full checkpoint (the builder's folder, prunec's graphs)."""
    from prunec.backends.genai.build import run_builder
    from prunec.backends.onnx import OnnxOptions, emit_onnx

    for precision in ("fp32", "int4"):
        run_builder(source, out / f"genai-{precision}", precision, "cpu", out / "cache")
    emit_onnx(model, None, out / "onnx", target=OnnxOptions())


class GenaiEngine:
    """onnxruntime-genai's own generation loop (`og.Generator`)."""

    def __init__(self, folder: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        options = {
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "session.intra_op.allow_spinning": "0",
            "session.inter_op.allow_spinning": "0",
        }
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)

    def run(self, ids: list[int], new: int) -> Result:
        params = self.og.GeneratorParams(self.model)
        total = len(ids) + new
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = self.og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        while not generator.is_done():
            generator.generate_next_token()
        end = time.perf_counter()
        return first - start, end - first, len(generator.get_sequence(0)) - len(ids)


class PrunecRunEngine:
    """`prunec run`'s loop: prunec's numpy KV cache over the `onnx` target's graphs."""

    def __init__(self, folder: Path, threads: int):
        from prunec.runtime import OnnxGenerator

        self.gen = OnnxGenerator(folder, threads=threads)
        self.gen.manifest = dataclasses.replace(self.gen.manifest, eos_token_ids=())

    def run(self, ids: list[int], new: int) -> Result:
        out = self.gen.generate(ids, max_new_tokens=new)
        return out.prefill_s, out.decode_s, len(out.tokens)


class TorchEngine:
    """transformers `generate` in PyTorch eager (greedy, its own KV cache)."""

    def __init__(self, model: torch.nn.Module):
        from transformers import GenerationConfig

        self.model = model
        # eos_token_id=[]: never stop early; nothing else of a generation config applies
        self.model.generation_config = GenerationConfig(
            do_sample=False, eos_token_id=[], pad_token_id=0
        )

    def _generate(self, ids: torch.Tensor, new: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new)
        return time.perf_counter() - start

    def run(self, ids: list[int], new: int) -> Result:
        tensor = torch.tensor([ids])
        first = self._generate(tensor, 1)
        return first, max(self._generate(tensor, new) - first, 1e-9), new


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--remove", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from prunec.arch import remove_layers
    from prunec.pipeline import quiet_transformers

    quiet_transformers()
    removed = spread(args.layers, args.remove)
    with tempfile.TemporaryDirectory(prefix="prunec-bench-genai-") as tmp:
        root = Path(tmp)
        source, full_dir, pruned_dir = root / "model", root / "full", root / "pruned"
        for folder in (full_dir, pruned_dir):
            folder.mkdir()
        tick = time.perf_counter()
        build_checkpoint(source, args.layers, args.hidden, args.vocab)
        full = AutoModelForCausalLM.from_pretrained(source).eval()
        pruned = copy.deepcopy(full)
        remove_layers(pruned, removed)
        reports = build_pruned(source, pruned_dir, removed)
        build_unpruned(source, full_dir, full)
        build_s = time.perf_counter() - tick

        engines: dict[tuple[str, str], Any] = {}
        for variant, folder, model in (("full", full_dir, full), ("pruned", pruned_dir, pruned)):
            engines[("onnxruntime-genai fp32", variant)] = GenaiEngine(
                folder / "genai-fp32", args.threads
            )
            engines[("onnxruntime-genai int4", variant)] = GenaiEngine(
                folder / "genai-int4", args.threads
            )
            engines[("prunec run (onnx)", variant)] = PrunecRunEngine(folder / "onnx", args.threads)
            engines[("PyTorch generate", variant)] = TorchEngine(model)
        rng = np.random.default_rng(0)
        ids = [int(i) for i in rng.integers(3, args.vocab, args.prompt)]
        for engine in engines.values():  # warm-up: sessions, allocators, kernels
            engine.run(ids[:16], 4)
        times: dict[tuple[str, str], list[Result]] = {}
        for _ in range(args.rounds):
            for key, engine in engines.items():
                times.setdefault(key, []).append(engine.run(ids, args.new))

    ratio = _print(args, removed, reports, build_s, times)
    target = (args.layers - len(removed)) / args.layers + 0.05
    met = ratio <= target
    print(
        f"target onnxruntime-genai fp32 pruned/unpruned decode s/token <= {target:.3f}: "
        f"{'met' if met else 'NOT met'} ({ratio:.3f})"
    )
    return 0 if met else 1


def _median(results: list[Result], pick: Callable[[Result], float]) -> float:
    return statistics.median(pick(r) for r in results)


def _print(
    args: Any,
    removed: list[int],
    reports: list[str],
    build_s: float,
    times: dict[tuple[str, str], list[Result]],
) -> float:
    """Print the table; return onnxruntime-genai fp32's pruned/unpruned decode s/token."""
    layers, kept = args.layers, args.layers - len(removed)
    print(
        f"Llama-like L={layers} hidden={args.hidden} vocab={args.vocab}, removed {removed} "
        f"({kept} kept); prompt {args.prompt} tokens, {args.new} new, greedy; "
        f"threads={args.threads}, {args.rounds} interleaved rounds, medians; "
        f"artifacts built in {build_s:.0f}s",
        file=sys.stderr,
    )
    for line in reports:
        print(f"  {line}", file=sys.stderr)
    ttft = {k: _median(v, lambda r: r[0]) * 1e3 for k, v in times.items()}
    speed = {k: _median(v, lambda r: (r[2] - 1) / r[1]) for k, v in times.items()}
    runtimes = list(dict.fromkeys(name for name, _ in times))
    print(
        f"{'runtime':24} {'TTFT full':>10} {'TTFT pruned':>12} {'tok/s full':>11} "
        f"{'tok/s pruned':>13} {'pruned/full s/token':>20}"
    )
    for name in runtimes:
        ratio = speed[(name, "full")] / speed[(name, "pruned")]
        print(
            f"{name:24} {ttft[(name, 'full')]:8.1f}ms {ttft[(name, 'pruned')]:10.1f}ms "
            f"{speed[(name, 'full')]:11.1f} {speed[(name, 'pruned')]:13.1f} {ratio:20.3f}"
        )
    print(f"layer ratio (kept/all): {kept / layers:.3f}")
    base = speed[("PyTorch generate", "pruned")]
    for name in runtimes:
        print(f"pruned decode speed vs PyTorch: {name} {speed[(name, 'pruned')] / base:.2f}x")
    name = "onnxruntime-genai fp32"
    return speed[(name, "full")] / speed[(name, "pruned")]


if __name__ == "__main__":
    raise SystemExit(main())
