"""The agent's disk budget: what the data dir may hold, and the free space it keeps.

Training runs, BTS0 sessions and uploads ask :meth:`DiskBudget.check` before
they write, with an estimate of what they will write; past either limit they
are refused with :class:`~edgewire.errors.DiskFull`, before anything is written.
Measuring the data dir walks it, so the figure is cached for a moment: a burst
of checks costs one walk.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edgewire.errors import DiskFull

#: Seconds a measured size of the data dir is reused.
CACHE_S = 2.0
#: A training checkpoint, in model sizes: the weights and the optimizer's state
#: (Adam keeps two more tensors per weight).
CHECKPOINT_FACTOR = 3


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: figures for a person, in error messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (symlinks not followed; vanishing files skipped)."""
    total = 0
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


class DiskBudget:
    """``max_bytes`` for the data dir, ``min_free_bytes`` kept free on its file system.

    Thread-safe: the event loop and the training thread both ask it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        max_bytes: int,
        min_free_bytes: int,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._used: int | None = None
        self._measured = 0.0

    def used(self) -> int:
        """Bytes in the data dir (measured at most every ``cache_s`` seconds)."""
        with self._lock:
            now = self._clock()
            if self._used is None or now - self._measured >= self._cache_s:
                self._used = tree_bytes(self.data_dir)
                self._measured = now
            return self._used

    def free(self) -> int:
        """Bytes free on the data dir's file system, for this user."""
        try:
            return shutil.disk_usage(self.data_dir).free
        except OSError:
            return 0

    def changed(self) -> None:
        """Something was written or removed: measure again at the next check."""
        with self._lock:
            self._used = None

    def check(self, need_bytes: int, what: str) -> None:
        """Refuse ``what`` (``"a training run"``) if writing ``need_bytes`` more would
        pass ``max_disk_bytes`` or leave less than ``min_free_disk_bytes`` free.

        The message names the limit and the figures, never the data dir's path
        (it may go to a remote peer).
        """
        need = max(int(need_bytes), 0)
        used = self.used()
        if used + need > self.max_bytes:
            raise DiskFull(
                f"{what} needs about {human_bytes(need)}, but the data dir holds "
                f"{human_bytes(used)} of its {human_bytes(self.max_bytes)} budget "
                "(max_disk_bytes); delete old runs or models, or raise max_disk_bytes"
            )
        free = self.free()
        if free - need < self.min_free_bytes:
            raise DiskFull(
                f"{what} needs about {human_bytes(need)}, but the disk has "
                f"{human_bytes(free)} free and keeps {human_bytes(self.min_free_bytes)} "
                "free (min_free_disk_bytes); free some space or lower min_free_disk_bytes"
            )
