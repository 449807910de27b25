"""A safetensors checkpoint on disk: its shards, their headers, and whether they are intact.

Each safetensors file is an 8-byte little-endian header length, a JSON header (tensor name ->
dtype, shape, byte offsets into the data section) and the raw tensor bytes. Reading headers is
cheap (no tensor data), so a checkpoint is checked before anything loads it: a truncated copy
or a corrupt file becomes a BuildError naming the file, never a deserialisation traceback.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from prunec.errors import BuildError

INDEX = "model.safetensors.index.json"
#: Headers larger than this are not safetensors (the format caps them at 100 MB).
MAX_HEADER = 100 << 20


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data starts.

    BuildError naming `path` when the file cannot be read or is not safetensors.
    """
    try:
        with Path(path).open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise BuildError(f"{path}: not a safetensors file (only {len(prefix)} bytes)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER:
                raise BuildError(f"{path}: not a safetensors file (header length {length})")
            raw = fh.read(length)
    except OSError as err:
        raise BuildError(f"cannot read {path}: {err.strerror or err}") from None
    if len(raw) < length:
        raise BuildError(f"{path}: truncated safetensors header ({len(raw)} of {length} bytes)")
    try:
        header = json.loads(raw)
    except ValueError as err:
        raise BuildError(f"{path}: corrupt safetensors header ({err})") from None
    if not isinstance(header, dict):
        raise BuildError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + length


def shard_names(source_dir: Path) -> list[str]:
    """The safetensors files of a checkpoint directory, from its index when sharded.

    BuildError when there are none, when the index is unreadable, or when it names a shard
    that is missing.
    """
    index = source_dir / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise BuildError(f"{index}: not a valid safetensors index ({err})") from None
        missing = [s for s in shards if not (source_dir / s).is_file()]
        if missing:
            raise BuildError(f"{index} names shards that are missing: {', '.join(missing)}")
        return shards
    if (source_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise BuildError(
        f"no safetensors weights in {source_dir} "
        "(expected model.safetensors or model.safetensors.index.json)"
    )


def verify_shard(path: Path) -> None:
    """BuildError naming `path` when its header is corrupt or its data is cut short."""
    header, data_start = read_header(path)
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BuildError(f"{path}: corrupt safetensors header (tensor `{name}`)") from None
        if not 0 <= begin <= stop:
            raise BuildError(f"{path}: corrupt safetensors header (tensor `{name}` offsets)")
        end = max(end, stop)
    size = path.stat().st_size
    if data_start + end > size:
        raise BuildError(
            f"{path} is truncated: its header describes {data_start + end} bytes, the file has "
            f"{size} (an interrupted download or copy?)"
        )


def verify_checkpoint(source_dir: Path) -> None:
    """Check every safetensors shard of a local checkpoint (headers and sizes only).

    A directory without safetensors files passes: other weight formats are left to
    transformers.
    """
    has_weights = (source_dir / INDEX).is_file() or (source_dir / "model.safetensors").is_file()
    if not has_weights:
        return
    for shard in shard_names(source_dir):
        verify_shard(source_dir / shard)


def read_config_json(source_dir: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory as a dict; BuildError naming the file otherwise."""
    path = Path(source_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{path} does not exist: {source_dir} is not a model folder") from None
    except OSError as err:
        raise BuildError(f"cannot read {path}: {err.strerror or err}") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise BuildError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise BuildError(f"{path} is not a JSON object")
    return config


#: safetensors dtype codes of the floating dtypes prunec computes in, by torch name.
FLOAT_CODES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def storage_dtype(source_dir: Path) -> str | None:
    """The floating dtype holding most of a safetensors checkpoint's bytes ("bfloat16", ...);
    None when the directory has no safetensors weights or no float32/16 tensors."""
    try:
        shards = shard_names(Path(source_dir))
    except BuildError:
        return None
    sizes: dict[str, int] = {}
    for shard in shards:
        header, _ = read_header(Path(source_dir) / shard)
        for name, info in header.items():
            code = info.get("dtype") if name != "__metadata__" else None
            if code in FLOAT_CODES:
                begin, end = info["data_offsets"]
                sizes[FLOAT_CODES[code]] = sizes.get(FLOAT_CODES[code], 0) + end - begin
    return max(sizes, key=lambda k: sizes[k]) if sizes else None
