"""Scoring overhead and memory: one-pass hook scoring vs a plain HF forward, measured side by side.

    .venv/bin/python benchmarks/bench_scoring.py

Prints (1) scoring time / plain forward time over the same batches (target <= 1.10), both
against the plain `model(**inputs)` and against a plain forward with the same cheap kwargs
the scorer passes (use_cache=False, logits_to_keep=1), which isolates the hooks' own cost;
(2) peak RSS of scoring 4x the samples / 1x the samples, each in its own subprocess
(target <= 1.05).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunec.arch import locate_decoder
from prunec.data import Record
from prunec.scoring.engine import Batch, collect_scores, forward_kwargs

LAYERS, HIDDEN, VOCAB, SEQ, BATCH = 8, 384, 4000, 128, 4


def build_model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 3,
        num_hidden_layers=LAYERS,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=SEQ,
    )
    return LlamaForCausalLM(config).eval()


def make_batches(samples: int, seed: int = 0) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, samples, BATCH):
        ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, SEQ // 2 :] = 0  # some padding, as in real batches
        records = tuple(Record(Path("bench"), start + i, "") for i in range(BATCH))
        batches.append(Batch("bench", records, {"input_ids": ids, "attention_mask": mask}))
    return batches


def plain(model: torch.nn.Module, batches: list[Batch], **extra: object) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(**batch.inputs, **extra)
    return time.perf_counter() - start


def scored(model: torch.nn.Module, batches: list[Batch]) -> float:
    layers = list(locate_decoder(model).layers)
    start = time.perf_counter()
    collect_scores(model, layers, iter(batches), ["bench"], len(batches) * BATCH)
    return time.perf_counter() - start


def interleaved_hook_ratio(repeats: int = 5, samples: int = 24) -> float:
    """Per batch, alternate a plain forward and a hooked one (same kwargs): the hooks' cost.

    Alternating batch by batch makes both sides see the same machine load, which matters on
    a shared CPU where whole-run timings drift by tens of percent.
    """
    from prunec.scoring.engine import LayerStatsCollector, _Totals

    model = build_model()
    batches = make_batches(samples)
    extra = forward_kwargs(model)
    collector = LayerStatsCollector(list(locate_decoder(model).layers))
    totals = _Totals(LAYERS)
    plain_s = hooked_s = 0.0
    with torch.inference_mode():
        for _ in range(repeats):
            for batch in batches:
                start = time.perf_counter()
                model(**batch.inputs, **extra)
                middle = time.perf_counter()
                with collector.attached():
                    collector.begin(batch.inputs["attention_mask"])
                    model(**batch.inputs, **extra)
                    collector.end(totals)
                plain_s += middle - start
                hooked_s += time.perf_counter() - middle
    return hooked_s / plain_s


def time_ratio(repeats: int = 9, samples: int = 24) -> dict[str, float]:
    model = build_model()
    batches = make_batches(samples)
    extra = forward_kwargs(model)
    plain(model, batches[:1])  # warm-up
    scored(model, batches[:1])
    plain_full, plain_same, scoring = [], [], []
    for _ in range(repeats):  # interleaved so drift hits all three alike
        plain_full.append(plain(model, batches, use_cache=False))
        plain_same.append(plain(model, batches, **extra))
        scoring.append(scored(model, batches))
    best = {"plain_forward_s": min(plain_full), "plain_same_kwargs_s": min(plain_same)}
    best["scoring_s"] = min(scoring)
    best["ratio_vs_plain_forward"] = best["scoring_s"] / best["plain_forward_s"]
    best["ratio_vs_same_kwargs"] = best["scoring_s"] / best["plain_same_kwargs_s"]
    return best


def rss_child(samples: int) -> None:
    model = build_model()
    scored(model, make_batches(samples))
    print(
        json.dumps(
            {"samples": samples, "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
        )
    )


def rss_ratio(base: int = 32) -> dict[str, float]:
    out = {}
    for samples in (base, 4 * base):
        proc = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(samples)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
        )
        out[f"rss_kb_{samples}"] = json.loads(proc.stdout.strip().splitlines()[-1])["max_rss_kb"]
    out["rss_ratio_4x_vs_1x"] = out[f"rss_kb_{4 * base}"] / out[f"rss_kb_{base}"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-child", type=int, default=None)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child)
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = {"model": f"llama {LAYERS}x{HIDDEN}, vocab {VOCAB}, seq {SEQ}, batch {BATCH}"}
    result.update(time_ratio())
    result["hooks_ratio_interleaved_per_batch"] = interleaved_hook_ratio()
    result.update(rss_ratio())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
