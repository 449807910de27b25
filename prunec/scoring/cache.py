"""Content-addressed score cache and the fingerprints that address it.

A cache entry is keyed by sha256 over: the model fingerprint (config + weight file digests),
each domain's data fingerprint (the content of the chosen records, image bytes included, in
whatever layout the file has, + samples/seed/max_length), the scorer settings and
`SCORING_VERSION`. Budget, strategy and spacing are not part of the key: re-planning with
other values reuses the scores with no forward pass.

The same directory holds other content-addressed results beside the scores (`auto`'s measured
search under `search/`), each keyed by everything it depends on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunec.scoring.scores import LayerScores

#: Bump when the statistics the scorer computes change meaning or numerics.
SCORING_VERSION = "1"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CONFIG_FILES = ("config.json", "generation_config.json")


def default_cache_dir() -> Path:
    """`$PRUNEC_CACHE_DIR`, else `~/.cache/prunec`."""
    env = os.environ.get("PRUNEC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "prunec"


def _digest_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path, memo_dir: Path | None = None) -> str:
    """sha256 of a file's bytes, memoised by (path, size, mtime) so big weights hash once."""
    path = Path(path).resolve()
    stat = path.stat()
    if path.parent.name == "blobs" and len(path.name) == 64:
        return path.name  # the HF hub cache names blobs by their sha256 already
    memo = None
    if memo_dir is not None:
        token = _digest_json([str(path), stat.st_size, stat.st_mtime_ns])
        memo = memo_dir / "file-digests" / token
        if memo.is_file():
            return memo.read_text().strip()
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    digest = sha.hexdigest()
    if memo is not None:
        _atomic_write(memo, digest)
    return digest


def model_fingerprint(source_dir: Path, memo_dir: Path | None = None) -> str:
    """Digest of a checkpoint directory: its config files and every weight file's bytes."""
    source_dir = Path(source_dir)
    parts: dict[str, str] = {}
    for path in sorted(source_dir.iterdir()):
        if path.name in _CONFIG_FILES or path.name.endswith(_WEIGHT_SUFFIXES):
            parts[path.name] = file_digest(path, memo_dir)
    if not parts:
        raise FileNotFoundError(f"no config or weight files in {source_dir}")
    return _digest_json(parts)


def state_dict_fingerprint(model: Any) -> str:
    """A stable digest of an in-memory model: config plus every tensor's bytes.

    Used when a model has no checkpoint directory (built in Python). Costs one pass over the
    weights on CPU; fine for the small models that are built that way.
    """
    sha = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        sha.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        sha.update(name.encode())
        sha.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        sha.update(_tensor_bytes(tensor))
    return sha.hexdigest()


def _tensor_bytes(tensor: Any) -> bytes:
    import torch

    flat = tensor.detach().to("cpu").contiguous().view(-1)
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def data_fingerprint(content: str, settings: Mapping[str, Any]) -> str:
    """Digest of a domain's calibration input: the chosen records' content digest
    (`prunec.data.records_digest`: texts, turns, answers, image bytes) and the settings."""
    return _digest_json({"records": content, "settings": dict(settings)})


def cache_key(fingerprints: Mapping[str, Any]) -> str:
    return _digest_json(dict(fingerprints))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ScoreCache:
    """Scores on disk, one JSON file per key under `<dir>/scores/`; other results (see
    `get_json`) under `<dir>/<kind>/`."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.directory / "scores" / f"{key}.json"

    def get(self, key: str) -> LayerScores | None:
        path = self.path(key)
        try:
            return LayerScores.from_json(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None  # absent or corrupt: recompute

    def put(self, key: str, scores: LayerScores) -> Path:
        path = self.path(key)
        _atomic_write(path, json.dumps(scores.to_json(), sort_keys=True))
        return path

    def get_json(self, kind: str, key: str) -> Any | None:
        """The JSON stored under `<dir>/<kind>/<key>.json`, or None when absent or corrupt."""
        try:
            return json.loads((self.directory / kind / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_json(self, kind: str, key: str, data: Any) -> Path:
        path = self.directory / kind / f"{key}.json"
        _atomic_write(path, json.dumps(data, sort_keys=True))
        return path
