"""Streaming emission: write the pruned checkpoint from the source safetensors shards.

Every HF target is written this way when the source has local safetensors files (a local
folder or a hub cache snapshot), whether or not a model is held in memory: pruning drops and
renames tensors, so a kept tensor's bytes are the source's. Each safetensors file is an 8-byte
header length, a JSON header (name -> dtype, shape, byte offsets) and raw tensor bytes; each
output shard gets a rewritten header and the kept byte ranges.

- Unchanged byte ranges are copied by the kernel (`os.copy_file_range`: no pass through
  Python, reflinks where the filesystem has them), in large blocks; runs of adjacent kept
  tensors are one range. Without it (other OSes, some filesystems) blocks go through a
  memory map.
- Each output file's digest (xxh3-128) is computed from the same bytes while they are written
  (the source's, through a memory map of one block at a time), so the manifest needs no
  second read of the output; `verify_digests` reads the output once to check it.
- A target `dtype` converts floating tensors block by block; tensors changed in memory
  (`changed`, by output name) are written from memory instead of the source.

Peak memory is one block (64 MiB) plus one header, whatever the model size.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunec.arch.checkpoint import (
    FLOAT_CODES,
    INDEX,
    read_config_json,
    read_header,
    shard_names,
    verify_shard,
)
from prunec.arch.surgery import validate_remove
from prunec.arch.table import ArchEntry, arch_entry, deepstack_positions, layer_field_updates
from prunec.errors import BuildError

#: Bytes per copy, hash or conversion step (bounds memory; progress moves in these steps).
BLOCK = 64 << 20
#: The digest recorded in the manifest for the weight shards written here.
DIGEST = "xxh3_128"
#: Target `dtype` values: "source" keeps every tensor's stored dtype.
DTYPES = ("source", "float32", "float16", "bfloat16")
_CODES = {name: code for code, name in FLOAT_CODES.items()}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


@dataclass(frozen=True)
class StreamReport:
    """What `stream_prune_checkpoint` wrote.

    files: files written, relative to `out_dir` (manifest included).
    layer_map: old decoder index -> new index for the kept layers.
    tensors_kept / tensors_dropped: tensor counts over all shards.
    bytes_written: total size of the new weight shards.
    seconds: wall time.
    digests: weight shard name -> {DIGEST: hex, "bytes": size}, computed while writing.
    dtype: the floating dtype the weights were written in ("source": unchanged).
    """

    files: tuple[str, ...]
    layer_map: dict[int, int]
    tensors_kept: int
    tensors_dropped: int
    bytes_written: int
    seconds: float
    digests: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtype: str = "source"


@dataclass(frozen=True)
class _Piece:
    """One output tensor: where its bytes come from and how they are written."""

    name: str
    source: str
    begin: int  # absolute offset in the source file
    size: int  # bytes in the source
    source_dtype: str  # safetensors code in the source
    dtype: str  # safetensors code in the output
    shape: list[int]
    convert: bool  # source code differs from `dtype`

    @property
    def out_size(self) -> int:
        if not self.convert:
            return self.size
        count = 1
        for dim in self.shape:
            count *= dim
        return count * _ITEMSIZE[self.dtype]


class _Writer:
    """An output file written front to back while its xxh3-128 digest is computed."""

    def __init__(self, path: Path, bar: Any) -> None:
        import xxhash

        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.digest = xxhash.xxh3_128()
        self.offset = 0
        self.bar = bar
        self.kernel_copy = hasattr(os, "copy_file_range")

    def write(self, data: Any) -> None:
        self.digest.update(data)
        self._put(memoryview(data).cast("B"))

    def _put(self, view: memoryview) -> None:
        while len(view):
            done = os.pwrite(self.fd, view, self.offset)
            view = view[done:]
            self.offset += done

    def copy(self, fd: int, start: int, size: int) -> None:
        """Append `size` bytes of file `fd` from `start`, hashing them on the way."""
        for view, offset, length in _blocks(fd, start, size):
            self.digest.update(view)
            if self.kernel_copy:
                try:
                    _kernel_copy(fd, self.fd, offset, self.offset, length)
                    self.offset += length
                except OSError:  # no in-kernel copy between these files: through the map
                    self.kernel_copy = False
            if not self.kernel_copy:
                self._put(view)
            self.bar.advance(length)

    def close(self) -> dict[str, Any]:
        os.close(self.fd)
        return {DIGEST: self.digest.hexdigest(), "bytes": self.offset}


def _kernel_copy(src: int, dst: int, src_offset: int, dst_offset: int, size: int) -> None:
    while size > 0:
        done = os.copy_file_range(src, dst, size, src_offset, dst_offset)
        if done <= 0:
            raise OSError("copy_file_range copied nothing")
        src_offset, dst_offset, size = src_offset + done, dst_offset + done, size - done


def _blocks(fd: int, start: int, size: int) -> Iterator[tuple[memoryview, int, int]]:
    """(view, offset, length) of consecutive blocks of file `fd`, each mapped only while it
    is used, so mapped pages never add up to more than one block."""
    end = start + size
    offset = start
    while offset < end:
        length = min(BLOCK, end - offset)
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fd, offset + length - base, access=mmap.ACCESS_READ, offset=base) as mm:
            view = memoryview(mm)[offset - base :]
            try:
                yield view, offset, length
            finally:
                view.release()
        offset += length


def file_digest(path: Path) -> dict[str, Any]:
    """{DIGEST: hex, "bytes": size} of a file, read one mapped block at a time."""
    import xxhash

    digest = xxhash.xxh3_128()
    size = path.stat().st_size
    with path.open("rb") as fh:
        for view, _, _ in _blocks(fh.fileno(), 0, size):
            digest.update(view)
    return {DIGEST: digest.hexdigest(), "bytes": size}


def verify_digests(out_dir: Path, digests: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Read every file in `digests` back and name those whose bytes differ from what was
    hashed while writing (the source's bytes, for copied ranges)."""
    problems = []
    for name, want in digests.items():
        got = file_digest(Path(out_dir) / name)
        if got != dict(want):
            problems.append(f"{name}: bytes on disk differ from the bytes streamed")
    return problems


def _pieces(
    src: Path,
    rename: Mapping[str, str],
    dtype: str,
    changed: Mapping[str, Any],
) -> tuple[list[_Piece], dict[str, Any] | None]:
    header, data_start = read_header(src)
    metadata = header.pop("__metadata__", None)
    kept = sorted((n for n in header if n in rename), key=lambda n: header[n]["data_offsets"][0])
    pieces = []
    for name in kept:
        info = header[name]
        begin, end = info["data_offsets"]
        code = info["dtype"]
        out_code = _CODES[dtype] if dtype != "source" and code in FLOAT_CODES else code
        if rename[name] in changed and out_code not in _ITEMSIZE:
            raise BuildError(f"cannot write a changed `{rename[name]}` as {out_code}")
        pieces.append(
            _Piece(
                name=rename[name],
                source=name,
                begin=data_start + begin,
                size=end - begin,
                source_dtype=code,
                dtype=out_code,
                shape=list(info["shape"]),
                convert=out_code != code or rename[name] in changed,
            )
        )
    return pieces, metadata


def _header_bytes(pieces: Sequence[_Piece], metadata: dict[str, Any] | None) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for piece in pieces:
        size = piece.out_size
        header[piece.name] = {
            "dtype": piece.dtype,
            "shape": piece.shape,
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(encoded)) + encoded


def _torch_dtype(code: str) -> Any:
    import torch

    return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[code]


def _write_converted(writer: _Writer, fd: int, piece: _Piece) -> None:
    """Write `piece` converted block by block (blocks hold whole elements)."""
    import torch

    source, target = _torch_dtype(piece.source_dtype), _torch_dtype(piece.dtype)
    for view, _, length in _blocks(fd, piece.begin, piece.size):
        values = torch.frombuffer(bytearray(view), dtype=source)
        writer.write(values.to(target).view(torch.uint8).numpy())
        writer.bar.advance(length)


def _write_changed(writer: _Writer, piece: _Piece, tensor: Any) -> None:
    import torch

    value = tensor.detach().to("cpu", _torch_dtype(piece.dtype)).contiguous()
    if list(value.shape) != piece.shape:
        raise BuildError(
            f"the changed tensor `{piece.name}` has shape {list(value.shape)}, the checkpoint's "
            f"has {piece.shape}"
        )
    writer.write(value.view(torch.uint8).numpy().reshape(-1))
    writer.bar.advance(piece.size)


def rewrite_shard(
    src: Path,
    dst: Path,
    rename: Mapping[str, str],
    *,
    dtype: str = "source",
    changed: Mapping[str, Any] | None = None,
    bar: Any = None,
) -> tuple[int, int, dict[str, Any]]:
    """Write the tensors named in `rename` (old -> new name) from `src` into `dst`.

    Tensors keep their order; their bytes are the source's unless `dtype` converts them or
    `changed` (new name -> tensor) replaces them. Returns (tensors written, bytes of tensor
    data, the file's digest entry). `src` must have passed `verify_shard`.
    """
    changed = changed or {}
    pieces, metadata = _pieces(src, rename, dtype, changed)
    writer = _Writer(dst, bar if bar is not None else _NoBar())
    try:
        writer.write(_header_bytes(pieces, metadata))
        with src.open("rb") as fh:
            for run in _runs(pieces):
                first = run[0]
                if first.name in changed:
                    _write_changed(writer, first, changed[first.name])
                elif first.convert:
                    _write_converted(writer, fh.fileno(), first)
                else:
                    writer.copy(fh.fileno(), first.begin, sum(p.size for p in run))
    finally:
        entry = writer.close()
    return len(pieces), sum(p.out_size for p in pieces), entry


class _NoBar:
    def advance(self, amount: float = 1.0) -> None:
        pass


def _runs(pieces: Sequence[_Piece]) -> Iterator[list[_Piece]]:
    """Maximal runs of unconverted pieces adjacent in the source (one copy each); every
    converted or changed piece is a run of its own."""
    run: list[_Piece] = []
    for piece in pieces:
        if piece.convert:
            if run:
                yield run
                run = []
            yield [piece]
        elif run and run[-1].begin + run[-1].size == piece.begin:
            run.append(piece)
        else:
            if run:
                yield run
            run = [piece]
    if run:
        yield run


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


def _set_config_dtype(config: dict[str, Any], dtype: str) -> None:
    """Record a converted checkpoint's dtype wherever the config names one."""
    sections = [config, *(v for v in config.values() if isinstance(v, dict))]
    for section in sections:
        for key in ("dtype", "torch_dtype"):
            if key in section or (key == "dtype" and section is config):
                section[key] = dtype


@dataclass(frozen=True)
class PrunedLayout:
    """How the source checkpoint maps onto the pruned one (computed from headers only).

    config: the pruned config.json. layer_map: old -> new decoder index. renames: per source
    shard, old tensor name -> new name (removed tensors absent). dropped: tensors removed.
    num_layers: the original decoder layer count. entry: the architecture table entry.
    """

    config: dict[str, Any]
    layer_map: dict[int, int]
    renames: dict[str, dict[str, str]]
    dropped: int
    num_layers: int
    entry: ArchEntry

    @property
    def removed(self) -> list[int]:
        return [i for i in range(self.num_layers) if i not in self.layer_map]


def pruned_layout(source_dir: Path, remove: Sequence[int]) -> PrunedLayout:
    """Plan the pruned checkpoint of `source_dir` without removing `remove` yet.

    BuildError on unusable input: no safetensors, corrupt or truncated shards, indices out
    of range, or tensor names that the architecture table cannot place.
    """
    source_dir = Path(source_dir)
    config = read_config_json(source_dir)
    shards = shard_names(source_dir)
    headers = {}
    for shard in shards:
        verify_shard(source_dir / shard)
        headers[shard] = [n for n in read_header(source_dir / shard)[0] if n != "__metadata__"]
    model_type = str(config.get("model_type", ""))
    entry = arch_entry(model_type) or _infer_entry(config, [n for s in shards for n in headers[s]])
    text = config[entry.text_config] if entry.text_config else config
    num_layers = int(text[entry.num_layers_key])
    removed = validate_remove(remove, num_layers)
    keep = [i for i in range(num_layers) if i not in set(removed)]
    layer_map = {old: new for new, old in enumerate(keep)}
    deepstack_map = _patch_config(config, entry, keep, num_layers)
    renames, dropped = {}, 0
    for shard in shards:
        rename = {
            n: new
            for n in headers[shard]
            if (new := entry.rename_tensor(n, layer_map, deepstack_map))
        }
        dropped += len(headers[shard]) - len(rename)
        renames[shard] = rename
    if removed and dropped == 0:
        # No tensor name matched the table's layer templates: writing would keep every layer
        # under a config that claims fewer. Name what was expected so the table can be fixed.
        raise BuildError(
            f"streaming found no tensors of the removed layers in {source_dir}; the "
            f"{entry.model_type} layer-name templates {list(entry.tensor_templates)} match "
            "none of its tensor names"
        )
    return PrunedLayout(config, layer_map, renames, dropped, num_layers, entry)


def stream_prune_checkpoint(
    source_dir: Path,
    out_dir: Path,
    remove: Sequence[int],
    *,
    spec_text: str = "",
    dtype: str = "source",
    changed: Mapping[str, Any] | None = None,
    scores: Mapping[str, Sequence[float]] | None = None,
    source: str = "",
    how_chosen: str = "",
) -> StreamReport:
    """Write a pruned copy of the safetensors checkpoint `source_dir` into `out_dir`.

    Drops the removed layers' tensors, renames kept layers to their new indices (using the
    architecture table's tensor-name templates), patches config.json exactly as
    `remove_layers` patches the in-memory config, copies processor files and writes a model
    card (with `scores` when given) and manifest. One output shard per input shard.
    dtype: "source" keeps stored dtypes, else floating tensors are converted to it.
    changed: output tensor name -> tensor to write instead of the source's bytes.
    `out_dir` is normally a staging directory (prunec.backends.atomic). BuildError on
    unusable input.
    """
    from prunec.backends.atomic import write_manifest
    from prunec.backends.hf.emit import PROCESSOR_GLOBS, model_card
    from prunec.progress import progress

    if dtype not in DTYPES:
        raise BuildError(f"unknown checkpoint dtype `{dtype}` (choose from {', '.join(DTYPES)})")
    started = time.perf_counter()
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    layout = pruned_layout(source_dir, remove)
    changed = dict(changed or {})
    unknown = set(changed) - {n for r in layout.renames.values() for n in r.values()}
    if unknown:
        raise BuildError(f"changed tensors not in the pruned checkpoint: {sorted(unknown)}")
    config = layout.config
    if dtype != "source":
        _set_config_dtype(config, dtype)

    out_dir.mkdir(parents=True, exist_ok=True)
    kept_total = written = 0
    weight_map: dict[str, str] = {}
    digests: dict[str, dict[str, Any]] = {}
    shards = list(layout.renames)
    total = sum(_kept_bytes(source_dir / s, layout.renames[s]) for s in shards)
    with progress("writing hf weights", total=total, unit="bytes") as bar:
        for shard, out_name in zip(shards, _output_names(len(shards)), strict=True):
            rename = layout.renames[shard]
            count, size, entry = rewrite_shard(
                source_dir / shard,
                out_dir / out_name,
                rename,
                dtype=dtype,
                changed={k: v for k, v in changed.items() if k in rename.values()},
                bar=bar,
            )
            kept_total += count
            written += size
            digests[out_name] = entry
            weight_map.update(dict.fromkeys(rename.values(), out_name))
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
        source or str(source_dir),
        spec_text,
        layout.layer_map,
        layout.num_layers,
        scores,
        how_chosen=how_chosen,
    )
    (out_dir / "README.md").write_text(card)
    meta = {
        "source": source or str(source_dir),
        "removed": layout.removed,
        "layer_map": {str(k): v for k, v in layout.layer_map.items()},
        "mode": "streaming",
        "dtype": dtype,
    }
    files = write_manifest(out_dir, meta, digests)
    return StreamReport(
        files=files,
        layer_map=layout.layer_map,
        tensors_kept=kept_total,
        tensors_dropped=layout.dropped,
        bytes_written=written,
        seconds=time.perf_counter() - started,
        digests=digests,
        dtype=dtype,
    )


def _kept_bytes(src: Path, rename: Mapping[str, str]) -> int:
    header, _ = read_header(src)
    return sum(
        info["data_offsets"][1] - info["data_offsets"][0]
        for name, info in header.items()
        if name in rename
    )


def _output_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
