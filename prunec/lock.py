"""The lockfile `NAME.prune.lock`: what a build was made from and what it chose.

Stable, sorted, diff-friendly JSON (one value per line). `prunec build --locked` compares the
current inputs with the lock and fails with a LockError listing everything that changed.
What is compared: the spec's meaning (formatting and comments do not count), the model and
calibration data fingerprints, and the selected layers. Versions are recorded, not compared:
a newer torch that picks the same layers is not a different build. So is how `auto` chose
(`search`: every measured candidate and the winner), and what `heal` did (`healing`).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunec.errors import LockError
from prunec.plan.model import Plan

if TYPE_CHECKING:
    from prunec.arch.loading import LoadedModel
    from prunec.planning import Selection
    from prunec.scoring import LayerScores

LOCK_VERSION = 1


def lock_path_for(plan: Plan) -> Path:
    """`NAME.prune.lock` beside the spec (`./spec.prune.lock` for a spec without a file)."""
    if plan.spec_path is None:
        return Path.cwd() / "spec.prune.lock"
    return plan.spec_path.with_name(plan.spec_path.name + ".lock")


def spec_settings(plan: Plan) -> dict[str, Any]:
    """What the spec means, flattened to dotted keys ("prune.max_run": 2, "domains.0.weight").

    Text, comments and spans do not count; absolute paths are written relative to the spec's
    directory so a moved checkout still matches its lock.
    """
    meaning = plan.model_dump(mode="json", exclude={"spec_text", "spec_path"})
    if not plan.prune.heal.enabled:
        # `heal none` is the default: left out, so locks written before `heal` still match.
        meaning["prune"].pop("heal", None)
    base = plan.spec_path.parent if plan.spec_path is not None else None
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for index, item in enumerate(value):
                walk(f"{prefix}.{index}", item)
        else:
            if base is not None and isinstance(value, str) and os.path.isabs(value):
                value = os.path.relpath(value, base)
            flat[prefix] = value

    walk("", meaning)
    return flat


def spec_fingerprint(plan: Plan) -> str:
    """Digest of `spec_settings(plan)`."""
    text = json.dumps(spec_settings(plan), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _model_fingerprint(loaded: LoadedModel | None, scores: LayerScores | None) -> str:
    if scores is not None and scores.fingerprints.get("model"):
        return scores.fingerprints["model"]
    if loaded is None:
        return ""
    from prunec.scoring.cache import default_cache_dir, model_fingerprint, state_dict_fingerprint

    if loaded.source_dir is not None and Path(loaded.source_dir).is_dir():
        return model_fingerprint(Path(loaded.source_dir), default_cache_dir())
    return state_dict_fingerprint(loaded.model)


def lock_data(
    plan: Plan,
    loaded: LoadedModel | None,
    scores: LayerScores | None,
    selection: Selection,
) -> dict[str, Any]:
    """The lockfile's content as a dict (see the module docstring)."""
    from prunec import __version__

    data_fps = {
        key.removeprefix("data."): value
        for key, value in (scores.fingerprints.items() if scores is not None else [])
        if key.startswith("data.")
    }
    return {
        "lock_version": LOCK_VERSION,
        "spec": spec_settings(plan),
        "inputs": {
            "spec": spec_fingerprint(plan),
            "model": _model_fingerprint(loaded, scores),
            "data": data_fps,
            "scoring": {
                k: v
                for k, v in (scores.fingerprints.items() if scores else [])
                if k in ("settings", "code")
            },
        },
        "scores": (
            {name: list(scores.importance(name)) for name in scores.domains}
            if scores is not None
            else {}
        ),
        "selection": {
            "removed": list(selection.removed),
            "kept": list(selection.kept),
            "strategy": selection.strategy,
            "ranking": selection.ranking,
            "regime": selection.regime,
            "objective": selection.objective,
            "spacing_weight": selection.spacing_weight,
            "num_layers": selection.num_layers,
        },
        # Recorded, not compared: how `auto` chose (every measured candidate, the winner).
        "search": selection.search.to_json() if selection.search is not None else None,
        # Recorded, not compared: which runs `heal` corrected, and the objective before/after.
        "healing": selection.healing.to_json() if selection.healing is not None else None,
        "versions": {
            "prunec": __version__,
            "torch": _version("torch"),
            "transformers": _version("transformers"),
        },
    }


def dumps(data: dict[str, Any]) -> str:
    """Canonical lockfile text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def write_lock(
    path: Path,
    plan: Plan,
    loaded: LoadedModel | None,
    scores: LayerScores | None,
    selection: Selection,
) -> Path:
    """Write the lockfile atomically; returns its path."""
    return write_lock_data(path, lock_data(plan, loaded, scores, selection))


def write_lock_data(path: Path, data: dict[str, Any]) -> Path:
    """Write `lock_data(...)` taken earlier (a build releases its model before publishing)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dumps(data))
    os.replace(tmp, path)
    return path


def read_lock(path: Path) -> dict[str, Any]:
    """The lockfile as a dict; LockError when it is missing or not a prunec lockfile."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise LockError(f"{path} does not exist; build once without --locked to create it") from err
    except (OSError, ValueError) as err:
        raise LockError(f"{path} is not a readable lockfile: {err}") from err
    if not isinstance(data, dict) or data.get("lock_version") != LOCK_VERSION:
        raise LockError(f"{path} is not a version {LOCK_VERSION} prunec lockfile")
    return data


def lock_differences(locked: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences in the compared parts (inputs and selected layers)."""
    changes: list[str] = []
    was, now = locked.get("inputs", {}), current["inputs"]
    if was.get("spec") != now["spec"]:
        changes.extend(_spec_changes(locked.get("spec", {}), current["spec"]))
    if was.get("model") != now["model"]:
        changes.append("the model weights or config changed")
    old_data, new_data = was.get("data", {}), now["data"]
    for name in sorted(set(old_data) | set(new_data)):
        if name not in new_data:
            changes.append(f"calibration domain `{name}` is no longer used")
        elif name not in old_data:
            changes.append(f"calibration domain `{name}` is new")
        elif old_data[name] != new_data[name]:
            changes.append(f"calibration data of `{name}` changed")
    if was.get("scoring", {}) != now["scoring"]:
        changes.append("scorer settings or scoring code version changed")
    old_removed = locked.get("selection", {}).get("removed")
    new_removed = current["selection"]["removed"]
    if old_removed != new_removed:
        changes.append(f"selected layers changed: {old_removed} -> {new_removed}")
    return changes


def _spec_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not keys:
        return ["the spec changed"]
    return [f"spec: {k} changed: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


def check_lock(
    path: Path,
    plan: Plan,
    loaded: LoadedModel | None,
    scores: LayerScores | None,
    selection: Selection,
) -> None:
    """Raise LockError listing what differs between the lockfile and the current inputs."""
    changes = lock_differences(read_lock(path), lock_data(plan, loaded, scores, selection))
    if changes:
        listing = "\n".join(f"  - {c}" for c in changes)
        raise LockError(f"inputs no longer match {path}:\n{listing}")
