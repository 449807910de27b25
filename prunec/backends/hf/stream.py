"""Streaming emission: prune a safetensors checkpoint on disk shard by shard, never loading it.

Each safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte
offsets) and raw tensor bytes. Pruning only drops and renames tensors, so every kept tensor's
bytes are copied verbatim in bounded chunks under a rewritten header: peak memory is a copy
buffer plus one header, whatever the shard size, and any dtype (bf16, fp8) passes untouched.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from prunec.arch.checkpoint import (
    INDEX,
    read_config_json,
    read_header,
    shard_names,
    verify_shard,
)
from prunec.arch.surgery import validate_remove
from prunec.arch.table import ArchEntry, arch_entry, deepstack_positions, layer_field_updates
from prunec.errors import BuildError

COPY_CHUNK = 16 << 20  # bytes per read while copying tensor data


@dataclass(frozen=True)
class StreamReport:
    """What `stream_prune_checkpoint` wrote.

    files: files written, relative to `out_dir` (manifest included).
    layer_map: old decoder index -> new index for the kept layers.
    tensors_kept / tensors_dropped: tensor counts over all shards.
    bytes_written: total size of the new weight shards.
    seconds: wall time.
    """

    files: tuple[str, ...]
    layer_map: dict[int, int]
    tensors_kept: int
    tensors_dropped: int
    bytes_written: int
    seconds: float


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, size: int) -> None:
    src.seek(start)
    while size > 0:
        block = src.read(min(COPY_CHUNK, size))
        if not block:
            raise BuildError(f"{src.name}: truncated safetensors file while copying tensor data")
        dst.write(block)
        size -= len(block)


def rewrite_shard(src: Path, dst: Path, rename: Mapping[str, str]) -> tuple[int, int]:
    """Copy the tensors named in `rename` (old -> new name) from `src` into `dst`.

    Returns (tensors written, bytes of tensor data). Tensors keep their order and bytes.
    """
    header, data_start = read_header(src)
    metadata = header.pop("__metadata__", None)
    kept = sorted((n for n in header if n in rename), key=lambda n: header[n]["data_offsets"][0])
    new_header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in kept:
        begin, end = header[name]["data_offsets"]
        new_header[rename[name]] = {
            "dtype": header[name]["dtype"],
            "shape": header[name]["shape"],
            "data_offsets": [offset, offset + end - begin],
        }
        offset += end - begin
    encoded = json.dumps(new_header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned, as safetensors does
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(struct.pack("<Q", len(encoded)))
        fout.write(encoded)
        for name in kept:
            begin, end = header[name]["data_offsets"]
            _copy_range(fin, fout, data_start + begin, end - begin)
    return len(kept), offset


_NON_TEXT = re.compile(r"vision|visual|image|audio|encoder|merger|projector|patch")


def _infer_entry(config: Mapping[str, Any], names: Sequence[str]) -> ArchEntry:
    """For a model type not in the table: the one `...layers.N.` prefix outside towers."""
    model_type = str(config.get("model_type", ""))
    prefixes = {m.group(1) for n in names if (m := re.match(r"(.*?layers\.)\d+\.", n))}
    prefixes = {p for p in prefixes if not _NON_TEXT.search(p)}
    if len(prefixes) != 1:
        raise BuildError(
            f"cannot tell which tensors are the decoder layers of model type `{model_type}` "
            f"(layer prefixes found: {sorted(prefixes) or 'none'}); add an entry under "
            "prunec/arch/data/"
        )
    prefix = prefixes.pop()
    return ArchEntry(
        model_type=model_type,
        decoder_path=prefix.rstrip("."),
        text_config="text_config" if isinstance(config.get("text_config"), dict) else "",
        tensor_templates=(prefix + "${layer_index}.",),
        notes="inferred from tensor names",
    )


def _patch_config(
    config: dict[str, Any], entry: ArchEntry, keep: list[int], num_layers: int
) -> dict[int, int]:
    """Apply the same config changes as `remove_layers`; returns the deepstack map."""
    text = config[entry.text_config] if entry.text_config else config
    text.update(layer_field_updates(text, entry, keep, num_layers))
    if entry.deepstack is None:
        return {}
    vision = config[entry.deepstack.vision_config]
    indexes = list(vision[entry.deepstack.indexes_key])
    positions = deepstack_positions(len(indexes), keep)
    vision[entry.deepstack.indexes_key] = [indexes[j] for j in positions]
    return {old: new for new, old in enumerate(positions)}


def stream_prune_checkpoint(
    source_dir: Path,
    out_dir: Path,
    remove: Sequence[int],
    *,
    spec_text: str = "",
    how_chosen: str = "",
) -> StreamReport:
    """Write a pruned copy of the safetensors checkpoint `source_dir` into `out_dir`.

    Drops the removed layers' tensors, renames kept layers to their new indices (using the
    architecture table's tensor-name templates), patches config.json exactly as
    `remove_layers` patches the in-memory config, copies processor files and writes a model
    card and manifest. One output shard per input shard. `out_dir` is normally a staging
    directory (prunec.backends.atomic). Raises BuildError on unusable input.
    """
    from prunec.backends.atomic import write_manifest
    from prunec.backends.hf.emit import PROCESSOR_GLOBS, model_card

    started = time.perf_counter()
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    config = read_config_json(source_dir)
    shards = shard_names(source_dir)
    for shard in shards:
        verify_shard(source_dir / shard)
    model_type = str(config.get("model_type", ""))
    entry = arch_entry(model_type) or _infer_entry(
        config, [n for s in shards for n in read_header(source_dir / s)[0]]
    )
    text = config[entry.text_config] if entry.text_config else config
    num_layers = int(text[entry.num_layers_key])
    removed = validate_remove(remove, num_layers)
    keep = [i for i in range(num_layers) if i not in set(removed)]
    layer_map = {old: new for new, old in enumerate(keep)}
    deepstack_map = _patch_config(config, entry, keep, num_layers)

    out_dir.mkdir(parents=True, exist_ok=True)
    kept_total = dropped = written = 0
    weight_map: dict[str, str] = {}
    out_names = _output_names(len(shards))
    for shard, out_name in zip(shards, out_names, strict=True):
        names = list(read_header(source_dir / shard)[0])
        names = [n for n in names if n != "__metadata__"]
        rename = {
            n: new for n in names if (new := entry.rename_tensor(n, layer_map, deepstack_map))
        }
        dropped += len(names) - len(rename)
        count, size = rewrite_shard(source_dir / shard, out_dir / out_name, rename)
        kept_total += count
        written += size
        weight_map.update(dict.fromkeys(rename.values(), out_name))
    if remove and dropped == 0:
        # No tensor name matched the table's layer templates: writing would keep every layer
        # under a config that claims fewer. Name what was expected so the table can be fixed.
        raise BuildError(
            f"streaming found no tensors of the removed layers in {source_dir}; the "
            f"{entry.model_type} layer-name templates {list(entry.tensor_templates)} match "
            "none of its tensor names"
        )
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": written},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for pattern in (*PROCESSOR_GLOBS, "generation_config.json"):
        for path in source_dir.glob(pattern):
            if path.is_file() and path.name != INDEX:
                shutil.copy2(path, out_dir / path.name)
    card = model_card(
        str(source_dir),
        spec_text,
        layer_map,
        num_layers,
        how_chosen=how_chosen,
    )
    (out_dir / "README.md").write_text(card)
    meta = {
        "source": str(source_dir),
        "removed": removed,
        "layer_map": {str(k): v for k, v in layer_map.items()},
        "mode": "streaming",
    }
    files = write_manifest(out_dir, meta)
    return StreamReport(
        files=files,
        layer_map=layer_map,
        tensors_kept=kept_total,
        tensors_dropped=dropped,
        bytes_written=written,
        seconds=time.perf_counter() - started,
    )


def _output_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
