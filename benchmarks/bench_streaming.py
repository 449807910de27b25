"""Peak memory of HF emission: streaming shard rewrite vs load-everything, side by side.

Builds a random Llama-like checkpoint (>= 2 GB, float16) on disk shard by shard, never holding
it whole, then prunes it twice, each path in its own subprocess so peak RSS (ru_maxrss) is
that path's alone:

  streaming        prunec.backends.hf_stream.stream_prune_checkpoint (byte-level shard copy)
  load-everything  load_model + remove_layers + emit_hf (self-check off: it would load again)

Usage: python benchmarks/bench_streaming.py [--size-gb 2.1] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD_BYTES = 1 << 30  # 1 GiB shards, so the largest shard is about half the model
CHUNK = 1 << 23  # elements generated at a time while writing a tensor


def llama_config(size_gb: float) -> dict:
    """A Llama-7B-shaped-but-narrower config with enough layers to reach `size_gb` in fp16."""
    hidden, inter, vocab = 2048, 5632, 32000
    per_layer = 2 * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden)
    fixed = 2 * (2 * vocab * hidden + hidden)
    layers = max(4, int(np.ceil((size_gb * 1e9 - fixed) / per_layer)))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "dtype": "float16",
    }


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Llama checkpoint tensor names and shapes, in checkpoint order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [(p + f"self_attn.{x}_proj.weight", (h, h)) for x in "qkvo"]
        out += [(p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h))]
        out += [(p + "mlp.down_proj.weight", (h, i))]
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> int:
    """Write one fp16 safetensors shard, generating each tensor in chunks."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * 2
        header[name] = {
            "dtype": "F16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    encoded += b" " * (-len(encoded) % 8)
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)) + encoded)
        for _name, shape in tensors:
            left = int(np.prod(shape))
            while left:
                n = min(CHUNK, left)
                chunk = rng.standard_normal(n, dtype=np.float32) * 0.02
                if len(shape) == 1:
                    chunk[:] = 1.0  # norm weights
                fh.write(chunk.astype(np.float16).tobytes())
                left -= n
    return offset


def build_checkpoint(root: Path, size_gb: float) -> tuple[Path, int, int]:
    """Write the random checkpoint; returns (dir, total weight bytes, largest shard bytes)."""
    cfg = llama_config(size_gb)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for name, shape in tensor_shapes(cfg):
        size = int(np.prod(shape)) * 2
        if groups[-1] and used + size > SHARD_BYTES:
            groups.append([])
            used = 0
        groups[-1].append((name, shape))
        used += size
    root.mkdir(parents=True, exist_ok=True)
    weight_map, total, largest = {}, 0, 0
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        size = write_shard(root / name, group, seed=k)
        total += size
        largest = max(largest, size)
        weight_map.update(dict.fromkeys((n for n, _ in group), name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text(json.dumps(cfg, indent=2))
    return root, total, largest


_STREAM = """
import resource, sys, time
from pathlib import Path
t = time.perf_counter()
from prunec.backends.hf.stream import stream_prune_checkpoint
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stream_prune_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), eval(sys.argv[3]))
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""

_LOAD_ALL = """
import resource, sys, time
from pathlib import Path
t = time.perf_counter()
import torch, transformers
from prunec.arch import remove_layers
from prunec.arch.loading import load_model
from prunec.backends.hf import emit_hf
from prunec.plan.model import ModelSpec
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
remove = eval(sys.argv[3])
loaded = load_model(ModelSpec(source=sys.argv[1], local=True, dtype="float16"))
remove_layers(loaded.model, remove)
emit_hf(loaded, remove, Path(sys.argv[2]), self_check=False)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - t)
"""


def measure(script: str, src: Path, out: Path, remove: list[int]) -> tuple[float, float, float]:
    """(RSS after imports MB, peak RSS MB, seconds) of one path in a fresh subprocess."""
    cmd = [sys.executable, "-c", script, str(src), str(out), repr(remove)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-2000:]}")
    base_kb, peak_kb, seconds = proc.stdout.strip().splitlines()[-1].split()
    return int(base_kb) / 1024, int(peak_kb) / 1024, float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only:
        _, total, largest = build_checkpoint(args.build_only, args.size_gb)
        print(total, largest)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prunec-bench-stream-"))
    try:
        tick = time.perf_counter()
        # Generate in a child: Linux carries a parent's RSS high-water mark into forked
        # children's ru_maxrss, so this process must stay small while it measures.
        src = work / "source"
        cmd = [sys.executable, __file__, "--size-gb", str(args.size_gb), "--build-only", str(src)]
        built = subprocess.run(cmd, capture_output=True, text=True, check=True)
        total, largest = (int(x) for x in built.stdout.split())
        layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
        remove = list(range(3, layers - 1, 4))  # every 4th layer, about 25%
        print(
            f"model: {layers} layers, {total / 1e9:.2f} GB fp16 in "
            f"{len(list(src.glob('*.safetensors')))} shards (largest {largest / 1e9:.2f} GB), "
            f"written in {time.perf_counter() - tick:.0f} s; removing {remove}"
        )
        model_mb = total / 2**20
        rows = []
        for name, script in (("streaming", _STREAM), ("load-everything", _LOAD_ALL)):
            out = work / name
            base, peak, seconds = measure(script, src, out, remove)
            rows.append((name, base, peak, peak / model_mb, seconds))
            shutil.rmtree(out, ignore_errors=True)
        print(
            f"{'path':<16} {'RSS after imports':>18} {'peak RSS':>10} {'peak/model':>11} {'time':>7}"
        )
        for name, base, peak, ratio, seconds in rows:
            print(f"{name:<16} {base:>15.0f} MB {peak:>7.0f} MB {ratio:>11.3f} {seconds:>6.1f}s")
        print(f"model size {model_mb:.0f} MB; target for streaming: peak/model <= 0.3")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
