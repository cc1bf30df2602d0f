"""Power-loss safe file writes: temp file in the same folder, fsync, rename, fsync folder.

A reader of ``path`` sees either the whole old file or the whole new one, never a
torn mix, even if power fails mid-write: ``os.replace`` is atomic within one
filesystem and the directory fsync makes the rename itself durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside the directory ``path`` durable."""
    # O_DIRECTORY is absent on some platforms; opening read-only is enough on POSIX.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file that then replaces ``path``.

    On any exception the temp file is removed and the error re-raised; the old
    file at ``path`` is left as it was.
    """
    path = Path(path)
    parent = path.parent
    # Same directory as the target so that os.replace never crosses filesystems.
    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""

    def _write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    atomic_write(path, _write)


def lock_folder(path: Path) -> int | None:
    """Take an exclusive lock on ``path/.lock``; the open fd, or None when another process holds it.

    The kernel drops the lock when the process dies, SIGKILL included, so a
    crash never leaves a folder locked. Platforms without ``fcntl`` get no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return -1
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock_folder(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks so large models need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
