"""User cache folder and atomic writes.

Built reference indexes live under ``platformdirs.user_cache_dir("siibra-anchor")`` (override with the
environment variable ``SIIBRA_ANCHOR_CACHE``), one folder per key. Everything is written to a temporary
sibling first and renamed into place, so an interrupted build never leaves a half-written entry.
A folder entry carries a manifest (sha256 of every file, :func:`write_manifest`) that loaders check with
:func:`verify_manifest`; builds of one entry by several processes are serialised by :func:`cache_lock`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "cache_dir",
    "cache_key",
    "atomic_dir",
    "atomic_file",
    "atomic_write_text",
    "save_figure",
    "file_sha256",
    "cache_lock",
    "remove_stale_temps",
    "write_manifest",
    "verify_manifest",
    "MANIFEST_NAME",
    "LOCK_TIMEOUT_S",
]

#: File inside a cache folder that lists the sha256 of every other file in it.
MANIFEST_NAME = ".siibra-anchor-manifest.json"
#: Default seconds to wait for another process that builds the same cache entry
#: (override with the environment variable ``SIIBRA_ANCHOR_LOCK_TIMEOUT``).
LOCK_TIMEOUT_S = 1800.0


def cache_dir(*parts: str) -> Path:
    """The cache folder (created if needed), optionally a subfolder of it."""
    root = os.environ.get("SIIBRA_ANCHOR_CACHE")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("siibra-anchor")
    p = Path(root).joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_key(params: dict[str, Any]) -> str:
    """Short sha256 of a JSON-serialisable parameter dict (keys sorted)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a written folder gets the user's usual mode
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file path next to ``target``; on success it replaces ``target`` in one rename.

    The file exists (empty) when yielded; on any error it is removed and ``target`` is untouched.
    ``suffix`` matters to writers that pick a format from the name (``np.savez`` wants ``.npz``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the user's usual mode
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: Any, target: str | os.PathLike[str], dpi: int = 90) -> Path:
    """Lay out a matplotlib figure, write it as PNG to ``target`` atomically, close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(target)
    with atomic_file(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return out


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no partial files)."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def cache_lock(target: str | os.PathLike[str], timeout_s: float | None = None) -> Iterator[Path]:
    """Hold an inter-process lock on cache entry ``target`` (lock file ``<target>.lock`` beside it).

    A second process that wants the same entry waits until the first releases it (then typically finds
    the entry built). The lock is an OS file lock, so a killed holder releases it. Raises
    :class:`~siibra_anchor.errors.CacheLockTimeoutError` after ``timeout_s`` (default
    :data:`LOCK_TIMEOUT_S` or ``SIIBRA_ANCHOR_LOCK_TIMEOUT``).
    """
    import filelock

    from .errors import CacheLockTimeoutError

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if timeout_s is None:
        timeout_s = float(os.environ.get("SIIBRA_ANCHOR_LOCK_TIMEOUT", LOCK_TIMEOUT_S))
    lock = filelock.FileLock(str(target.with_name(target.name + ".lock")))
    try:
        lock.acquire(timeout=timeout_s)
    except filelock.Timeout as exc:
        raise CacheLockTimeoutError(
            f"cache entry {target} stayed locked by another process for {timeout_s:.0f} s; wait for that "
            "process to finish, or if none runs, delete the .lock file (or raise SIIBRA_ANCHOR_LOCK_TIMEOUT)"
        ) from exc
    try:
        yield target
    finally:
        lock.release()


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary siblings of ``target`` left by an interrupted :func:`atomic_dir` / :func:`atomic_file`.

    Call it only while holding :func:`cache_lock` on ``target`` (then no live writer owns them).
    Returns the removed paths.
    """
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.glob(f".{target.name}.*"):
        if p.name.endswith(".tmp") or ".old-" in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(folder: str | os.PathLike[str]) -> Path:
    """Write :data:`MANIFEST_NAME` into ``folder``: relative path -> [size, sha256] of every file."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): [p.stat().st_size, file_sha256(p)] for p in _folder_files(folder)}
    out = folder / MANIFEST_NAME
    atomic_write_text(out, json.dumps({"version": 1, "files": files}, indent=0, sort_keys=True))
    return out


def verify_manifest(folder: str | os.PathLike[str]) -> None:
    """Check every file of ``folder`` against its manifest.

    Raises :class:`~siibra_anchor.errors.CorruptFileError` naming the first missing, extra, resized or
    changed file (or a missing / unreadable manifest).
    """
    from .errors import CorruptFileError

    folder = Path(folder)
    man = folder / MANIFEST_NAME
    try:
        files = json.loads(man.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except FileNotFoundError as exc:
        raise CorruptFileError(f"{folder} has no checksum manifest ({MANIFEST_NAME}); rebuild it") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"checksum manifest of {folder} is unreadable ({exc}); rebuild it") from exc
    present = {p.relative_to(folder).as_posix() for p in _folder_files(folder)}
    for rel in sorted(set(files) | present):
        if rel not in present:
            raise CorruptFileError(f"{folder}: file {rel} listed in the manifest is missing; rebuild it")
        if rel not in files:
            raise CorruptFileError(f"{folder}: file {rel} is not in the manifest; rebuild it")
        p = folder / rel
        size, digest = files[rel]
        if p.stat().st_size != size or file_sha256(p) != digest:
            raise CorruptFileError(f"{folder}: file {rel} fails its sha256 check (changed or truncated); rebuild it")
