"""prunec at real model sizes: memory, streaming speed, artifact size and scoring overhead.

    python benchmarks/bench_scale.py [--size 0.6b|1.7b] [--workdir DIR] [--keep]

Writes a random-weight bfloat16 Qwen3-shaped checkpoint from a config (straight to
safetensors, a block at a time: never a float32 copy, never the whole model in memory), with a
word-level tokenizer and calibration data, then measures side by side in one run:

  peak / ckpt    process-tree peak RSS (the command and every child it starts, summed,
                 polled every 20 ms) / checkpoint size, for `prunec score`, a scored
                 `prunec build` (strategy domain, 25% of the layers) and a streamed one
                 (the same number of layers, named in `remove`)
  stream / cp    the streamed build's wall time / `cp -r` of the checkpoint folder
  artifact       the scored build's weight bytes / ((L-k)/L x the source's)
  score / fwd    the scorer's forward passes (hooks) / the same forward passes without hooks
                 on the same loaded model (`use_cache=False, logits_to_keep=1`); the ratio
                 to a plain `model(**inputs)` is printed beside it

Every command runs as `python -m prunec.cli ...` in its own process with a fresh score cache.
Targets: peak <= 1.3x (scored build), <= 0.3x (streamed build); stream <= 2x cp; artifact
<= 1.02x; scoring <= 1.10x. `make bench-scale` runs the 1.7b size (about 3.4 GB on disk, 5 GB
of memory at the peak); `--size 0.6b` is the quick one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = {
    # Qwen3-0.6B and Qwen3-1.7B shapes: 28 layers, 16 query / 8 kv heads of 128, tied.
    "0.6b": {"hidden_size": 1024, "intermediate_size": 3072},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 6144},
}
LAYERS = 28
REMOVE = list(range(3, LAYERS - 1, 4))  # 7 of 28 layers, spread out: 25%
SHARD_BYTES = 2_000_000_000
WORDS = [f"w{i}" for i in range(4000)]


# --- the checkpoint -----------------------------------------------------------------------------


def qwen3_config(size: str) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **SIZES[size],
        "num_hidden_layers": LAYERS,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": 2,
        "eos_token_id": 3,
        "pad_token_id": 0,
        "dtype": "bfloat16",
    }


def tensor_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q, kv, d = 16 * 128, 8 * 128, 128
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "self_attn.q_proj.weight", (q, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, q)),
            (p + "self_attn.q_norm.weight", (d,)),
            (p + "self_attn.k_norm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    return [*out, ("model.norm.weight", (h,))]


def _random_bf16(rng: np.random.Generator, count: int) -> bytes:
    """`count` random bfloat16 values of magnitude 2^-9..2^-5 with random signs, made from
    random bits (bf16 is the upper half of a float32: 1 sign, 8 exponent, 7 mantissa bits)."""
    bits = rng.integers(0, 1 << 16, count, dtype=np.uint16)
    exponent = (np.uint16(118) + ((bits >> np.uint16(7)) & np.uint16(3))) << np.uint16(7)
    return ((bits & np.uint16(0x807F)) | exponent).tobytes()


def _write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> int:
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    encoded += b" " * (-len(encoded) % 8)
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded)
        for _, shape in tensors:
            left = int(np.prod(shape))
            if len(shape) == 1:  # norm weights: 1.0
                fh.write(np.full(left, 0x3F80, np.uint16).tobytes())
                continue
            while left:
                count = min(left, 1 << 24)
                fh.write(_random_bf16(rng, count))
                left -= count
    return offset


def write_checkpoint(root: Path, size: str) -> int:
    """The checkpoint, tokenizer and calibration data under `root`; returns weight bytes."""
    cfg = qwen3_config(size)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in tensor_shapes(cfg):
        nbytes = int(np.prod(shape)) * 2
        if groups[-1] and used + nbytes > SHARD_BYTES:
            groups.append([])
            used = 0
        groups[-1].append((name, shape))
        used += nbytes
    model = root / "model"
    model.mkdir(parents=True, exist_ok=True)
    total, weight_map = 0, {}
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        total += _write_shard(model / name, group, seed=k)
        weight_map.update(dict.fromkeys((n for n, _ in group), name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (model / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (model / "config.json").write_text(json.dumps(cfg, indent=2))
    (model / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0})
    )
    _write_tokenizer(model)
    rng = np.random.default_rng(0)
    lines = [
        {"text": " ".join(rng.choice(WORDS, 48)), "answer": str(rng.choice(WORDS))}
        for _ in range(8)
    ]
    (root / "calib.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return total


def _write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(folder)


# --- measuring ----------------------------------------------------------------------------------


def tree_peak(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(peak RSS of the process tree in bytes, wall seconds, stderr) of running `cmd`."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peak = 0.0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):  # a child that just exited
                    total += p.memory_info().rss
            peak = max(peak, total)
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    poller.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return peak, seconds, err


SPEC = """\
model "model"

domain text {{
  data       "calib.jsonl"
  max_length 64
}}

prune {{
  {prune}
}}

target hf "{out}"
"""

_FORWARD = """
import json, sys, time
import torch
from prunec.arch.loading import load_model
from prunec.arch import locate_decoder
from prunec.pipeline import quiet_transformers
from prunec.scoring.engine import (
    calibration_batches, collect_scores, forward_kwargs, model_inputs, read_all_records,
)
from prunec.syntax import load_spec

quiet_transformers()
plan = load_spec(sys.argv[1])
loaded = load_model(plan.model)
records = read_all_records(plan)
batches = list(calibration_batches(plan, loaded.processor, records))
model = loaded.model
extra = forward_kwargs(model)

def plain(**kwargs):
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(**model_inputs(model, batch.inputs), **kwargs)
    return time.perf_counter() - started

plain(**extra)  # warm-up
same = plain(**extra)
started = time.perf_counter()
collect_scores(model, list(locate_decoder(model).layers), iter(batches), ["text"],
               sum(len(b.records) for b in batches))
scoring = time.perf_counter() - started
same = min(same, plain(**extra))
full = plain(use_cache=False)
print(json.dumps({"plain": same, "plain_full_logits": full, "scoring": scoring,
                  "compute": loaded.compute_dtype, "storage": loaded.storage_dtype}))
"""


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1.7b")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prunec-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "PRUNEC_PROGRESS_INTERVAL": "30",
        "COLUMNS": "250",  # one line per target in the build summary
    }
    try:
        tick = time.perf_counter()
        if not (work / "model" / "config.json").is_file():
            write_checkpoint(work, args.size)
        source = work / "model"
        ckpt = _weights_bytes(source)
        print(
            f"model: Qwen3-{args.size} shape, {LAYERS} layers, {ckpt / 1e9:.2f} GB bfloat16 in "
            f"{len(list(source.glob('*.safetensors')))} shard(s), ready in "
            f"{time.perf_counter() - tick:.0f} s; CPU threads {os.cpu_count()}",
            flush=True,
        )
        (work / "scored.prune").write_text(
            SPEC.format(prune="budget   25%\n  strategy domain", out="out-scored")
        )
        (work / "streamed.prune").write_text(
            SPEC.format(prune="remove " + ", ".join(map(str, REMOVE)), out="out-streamed")
        )

        def cli(name: str, *argv: str) -> tuple[float, float, str]:
            cache = work / f"cache-{name}"
            shutil.rmtree(cache, ignore_errors=True)
            return tree_peak(
                [python, "-m", "prunec.cli", *argv],
                {**env, "PRUNEC_CACHE_DIR": str(cache)},
                work,
            )

        for out in ("out-scored", "out-streamed", "cp-copy"):
            shutil.rmtree(work / out, ignore_errors=True)
        copy_started = time.perf_counter()
        subprocess.run(["cp", "-r", str(source), str(work / "cp-copy")], check=True)
        cp_seconds = time.perf_counter() - copy_started
        shutil.rmtree(work / "cp-copy")

        rows = {}
        rows["score"] = cli("score", "score", "scored.prune", "-o", "scores.json")
        rows["scored build"] = cli("scored", "build", "scored.prune", "--no-lock")
        rows["streamed build"] = cli("streamed", "build", "streamed.prune", "--no-lock")
        forward = subprocess.run(
            [python, "-c", _FORWARD, "scored.prune"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
        )
        if forward.returncode != 0:
            raise SystemExit(f"forward timing failed:\n{forward.stderr[-3000:]}")
        timing = json.loads(forward.stdout.strip().splitlines()[-1])

        removed = len(REMOVE)
        proportional = (LAYERS - removed) / LAYERS * ckpt
        artifact = _weights_bytes(work / "out-scored")
        print(f"\n{'measure':<34} {'value':>10} {'target':>9}  ok")
        results = [
            ("peak RSS / ckpt: score", rows["score"][0] / ckpt, None),
            ("peak RSS / ckpt: scored build", rows["scored build"][0] / ckpt, 1.3),
            ("peak RSS / ckpt: streamed build", rows["streamed build"][0] / ckpt, 0.3),
            ("streamed build time / cp -r time", rows["streamed build"][1] / cp_seconds, 2.0),
            ("artifact / proportional size", artifact / proportional, 1.02),
            ("scoring / plain forward", timing["scoring"] / timing["plain"], 1.10),
            (
                "scoring / plain forward, all logits",
                timing["scoring"] / timing["plain_full_logits"],
                None,
            ),
        ]
        for name, value, target in results:
            mark = "" if target is None else ("yes" if value <= target else "NO")
            shown = "" if target is None else f"<= {target:.2f}"
            print(f"{name:<34} {value:>10.3f} {shown:>9}  {mark}")
        print(
            f"\ncheckpoint {ckpt / 1e9:.2f} GB; peaks: "
            + ", ".join(f"{k} {v[0] / 1e9:.2f} GB in {v[1]:.0f} s" for k, v in rows.items())
            + f"; cp -r {cp_seconds:.1f} s; artifact {artifact / 1e9:.2f} GB for "
            f"{LAYERS - removed}/{LAYERS} layers; forward passes: plain {timing['plain']:.1f} s, "
            f"scoring {timing['scoring']:.1f} s, all logits {timing['plain_full_logits']:.1f} s "
            f"({timing['storage']} weights, computing in {timing['compute']})"
        )
        for name in ("scored build", "streamed build"):
            checks = [line.strip() for line in rows[name][2].splitlines() if "hf " in line]
            print(f"{name} self-check: {checks[-1] if checks else '?'}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
