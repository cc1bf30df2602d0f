"""Power-loss safe file writes: temp file in the same folder, fsync, rename, fsync folder.

A reader of ``path`` sees either the whole old file or the whole new one, never a
torn mix, even if power fails mid-write: ``os.replace`` is atomic within one
filesystem and the directory fsync makes the rename itself durable.

:func:`disk_errors` is the one place where an ``OSError`` of a write becomes an
edgewire error: a full disk or quota is :class:`~edgewire.errors.DiskFull`
wherever it happens, anything else the caller's class; neither names a path.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from edgewire.errors import DiskFull, EdgewireError, ModelError

_CHUNK = 1 << 20
#: The errno values of a file system with no room left for us.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def disk_errors(
    what: str, *, default: type[EdgewireError] | None = ModelError, where: str | None = None
) -> Iterator[None]:
    """Raise an OSError of the block as DiskFull (disk or quota full) or as ``default``.

    ``what`` completes "cannot ..." ("store the model"). ``where`` (a local path)
    goes into ``default``'s message only: a DiskFull, which a remote peer may see,
    never names one. ``default=None`` lets the other OSErrors through unchanged.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in _FULL:
            raise DiskFull(
                f"cannot {what}: the disk is full ({reason}); free some space and retry"
            ) from exc
        if default is None:
            raise
        place = f" {where!r}" if where else ""
        raise default(f"cannot {what}{place}: {reason}") from exc


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


def atomic_write(path: Path, write: Callable[[Path], None], *, what: str | None = None) -> None:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file that then replaces ``path``.

    On any exception the temp file is removed and the error re-raised; the old
    file at ``path`` is left as it was. A full disk is raised as DiskFull ("cannot
    ``what``", by default "cannot write 'NAME'"); other OSErrors as they are.
    """
    path = Path(path)
    parent = path.parent
    # Same directory as the target so that os.replace never crosses filesystems.
    tmp = parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}"
    with disk_errors(what or f"write {path.name!r}", default=None):
        try:
            write(tmp)
            _fsync_file(tmp)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(parent)


def atomic_write_bytes(path: Path, data: bytes, *, what: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def _write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    atomic_write(path, _write, what=what)


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
