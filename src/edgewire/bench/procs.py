"""Child processes that cannot outlive the benchmark or test that started them.

A server started by a benchmark (an agent, LitServe and the worker processes
it forks) runs in a process group of its own (``start_new_session=True``), and
the whole group is stopped when the ``with`` block ends, however it ends: an
error, Ctrl-C (KeyboardInterrupt) or SIGTERM (turned into ``SystemExit`` for
that block, so that ``finally`` clauses run). First SIGTERM to the group, then,
after ``grace`` seconds, SIGKILL to whatever of it is left. POSIX only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

#: How long a group gets to stop after SIGTERM before SIGKILL.
DEFAULT_GRACE_S = 10.0


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises ``SystemExit(143)`` in the main thread, so that
    ``finally`` and ``with`` clean-ups run as they do for Ctrl-C. Elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def _leader_exited(proc: subprocess.Popen[Any]) -> bool:
    """Whether the leader has exited, without reaping it: while it is a zombie its pid,
    and so the group id, cannot be given to another process."""
    if proc.returncode is not None:
        return True
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere
        return True
    return info is not None


def stop_group(proc: subprocess.Popen[Any], *, grace: float = DEFAULT_GRACE_S) -> int | None:
    """SIGTERM the group ``proc`` leads, SIGKILL what is left after ``grace`` s; its return code."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not _leader_exited(proc):
        time.sleep(0.02)
    # The leader's children may outlive it (LitServe's workers did): kill the group
    # before reaping the leader, while the group id still names only this group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:  # unkillable (uninterruptible sleep): leave it
        return None


@contextlib.contextmanager
def process_group(
    args: Sequence[str], *, grace: float = DEFAULT_GRACE_S, **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """``subprocess.Popen(args, **popen)`` in a new session; the whole group is stopped
    when the block ends, on error, Ctrl-C and SIGTERM too."""
    with sigterm_as_exit():
        proc = subprocess.Popen(args, start_new_session=True, **popen)
        try:
            yield proc
        finally:
            stop_group(proc, grace=grace)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
