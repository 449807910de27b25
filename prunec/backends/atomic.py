"""Publishing targets safely: complete or absent, only over what prunec published, one build at a time.

- Atomic: a build writes into a hidden staging directory beside the target
  (`.NAME.prunec-staging-*`) and renames it into place only after every file is written and
  every self-check passed. A failed or interrupted build removes its staging directory.
- Never destroys what prunec did not write: a target path is replaced only when it is absent,
  an empty directory, or a directory holding a prunec manifest (`prunec-manifest.json`, written
  into every published target). Anything else needs an explicit `force`.
- One build per target: `target_lock` holds an exclusive `flock` on `.NAME.prunec-lock` beside
  the target from before the model loads until the target is published. A second build of the
  same target fails at once. While the lock is held, staging directories of the same target
  can only be left over from dead builds: they are removed (and reported).
- Published files follow the umask (staging directories are created private, 0700).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunec.errors import BuildError

#: The file that marks a directory as published by prunec (digests of every other file).
MANIFEST = "prunec-manifest.json"
#: Manifests of earlier prunec releases that also mark a directory as prunec's.
LEGACY_MANIFESTS = ("onnx-manifest.json",)
STAGING_INFIX = ".prunec-staging-"
LOCK_SUFFIX = ".prunec-lock"


# -- manifests --------------------------------------------------------------------------------


def prunec_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prunec")
    except PackageNotFoundError:
        return "unknown"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(
    out_dir: Path,
    meta: Mapping[str, Any],
    known: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[str, ...]:
    """Write `prunec-manifest.json`: a digest and the size of every other file, plus `meta`.

    Files are hashed with sha256, except those in `known` (relative name -> entry such as
    `{"xxh3_128": ..., "bytes": ...}`), whose digests were computed while they were written
    (large weight shards: reading them again would cost as much as writing them).
    Returns every file of the directory (manifest included), relative to it.
    """
    known = known or {}
    files = {
        name: dict(known[name])
        if name in known
        else {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(out_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST
        for name in [str(p.relative_to(out_dir))]
    }
    manifest = {"prunec_version": prunec_version(), **meta, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return (*files, MANIFEST)


def published_by_prunec(directory: Path) -> bool:
    """True when `directory` holds a manifest that only prunec writes."""
    for name in (MANIFEST, *LEGACY_MANIFESTS):
        try:
            data = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and ("prunec_version" in data or "graphs" in data):
            return True
    return False


def replaceable(path: Path) -> str | None:
    """Why publishing at `path` would destroy something prunec did not write; None if safe.

    Safe: nothing there, an empty directory, or a directory prunec published.
    """
    if not os.path.lexists(path):
        return None
    if path.is_symlink():
        return "is a symbolic link"
    if not path.is_dir():
        return "is an existing file"
    try:
        empty = not any(path.iterdir())
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if empty or published_by_prunec(path):
        return None
    return f"exists and was not written by prunec (it has no {MANIFEST})"


# -- staging and publishing -------------------------------------------------------------------


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting and restoring
    os.umask(mask)
    return mask


def apply_umask(root: Path) -> None:
    """Give `root` and everything under it the modes a plain `mkdir`/`open` would have.

    Staging directories are created 0700 (private while incomplete), and copied files keep
    their source's mode; a published target must look like any other folder the user made.
    """
    mask = _umask()
    dir_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    os.chmod(root, dir_mode)
    for parent, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(parent, name), dir_mode)
        for name in files:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)


def _stage_dir(target: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_INFIX}", dir=target.parent))


def publish(staged: Path, target: Path, *, force: bool = False) -> None:
    """Move a complete staged directory onto `target`, replacing an earlier prunec target.

    Refuses (BuildError) to replace anything `replaceable` objects to, unless `force` and the
    path is a directory. The old target is first renamed aside, so at every instant either the
    old or the new complete directory sits at `target` (except between two renames on the
    same filesystem); `target_lock` restores the old one if a build dies in between.
    """
    reason = replaceable(target)
    if reason is not None and not (force and target.is_dir() and not target.is_symlink()):
        raise BuildError(f"refusing to replace {target}: it {reason}")
    apply_umask(staged)
    backup = None
    if os.path.lexists(target):
        backup = target.with_name(f".{target.name}{STAGING_INFIX}old-{os.getpid()}")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(target, backup)
    try:
        os.replace(staged, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def staging_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh private directory beside `target`; remove it if the block fails.

    The caller publishes with `publish(staged, target)` once every check passed (publishing
    is separate so several targets of one build can all be checked before any goes live).
    """
    staged = _stage_dir(target)
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@contextmanager
def atomic_directory(target: Path, *, force: bool = False) -> Iterator[Path]:
    """Stage into a temporary directory and publish it at `target` when the block succeeds."""
    with target_lock(target), staging_directory(target) as staged:
        yield staged
        publish(staged, target, force=force)


# -- one build per target ---------------------------------------------------------------------

#: Locks this process holds: target -> (open lock file, nesting depth), so that `build` and
#: the `emit` it calls can both take the lock.
_HELD: dict[Path, list[Any]] = {}


def _lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def _open_locked(lock: Path, target: Path) -> Any:
    """Open and exclusively flock `lock`; BuildError at once when another build holds it."""
    while True:
        fh = open(lock, "a+")  # noqa: SIM115 - held until `target_lock` exits
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise BuildError(
                f"another prunec build{who} is writing {target}; wait for it to finish "
                f"(or stop it) and build again"
            ) from None
        # The holder before us may have unlinked the file after we opened it: lock the file
        # that is at the path now, or two builds could each hold a different inode.
        try:
            same = os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            return fh
        fh.close()


def _recover(target: Path, say: Callable[[str], None] | None) -> None:
    """Clean what dead builds of `target` left beside it (we hold the lock, so they are dead).

    A publish that died between its two renames left the previous target aside: put it back.
    Every other staging directory is removed.
    """
    leftovers = sorted(target.parent.glob(f".{glob_escape(target.name)}{STAGING_INFIX}*"))
    legacy = sorted(target.parent.glob(f".{glob_escape(target.name)}.tmp-*"))
    for path in [*leftovers, *legacy]:
        if not path.is_dir() or path.is_symlink():
            continue
        aside = f"{STAGING_INFIX}old-" in path.name
        if aside and not os.path.lexists(target):
            os.replace(path, target)
            if say is not None:
                say(f"restored {target} from {path.name}, left aside by an interrupted build")
            continue
        shutil.rmtree(path, ignore_errors=True)
        if say is not None:
            say(f"removed {path}, left by an interrupted build")


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


@contextmanager
def target_lock(target: Path, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the build lock of `target` (reentrant within this process).

    Creates the target's parent directory if needed. BuildError (exit 3) when the parent
    cannot be created or written, or when another build holds the lock.
    """
    target = Path(os.path.abspath(target))
    held = _HELD.get(target)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fh = _open_locked(_lock_path(target), target)
    except OSError as err:
        reason = err.strerror or str(err)
        raise BuildError(
            f"cannot write target {target}: {reason} ({err.filename or target.parent})"
        ) from None
    _HELD[target] = [fh, 1]
    try:
        _recover(target, say)
        yield
    finally:
        del _HELD[target]
        with contextlib.suppress(OSError):
            os.unlink(_lock_path(target))  # before unlocking: see `_open_locked`
        fh.close()
