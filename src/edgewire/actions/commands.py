"""A class's command: an argv from the agent's own actions file, run without a shell,
with a timeout (the whole process group is killed past it) and its output capped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

#: Bytes of a command's output kept (the rest is read and dropped).
MAX_OUTPUT = 4096


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    #: None when it did not finish in time (or could not start).
    returncode: int | None
    timed_out: bool
    output: str
    seconds: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"argv": list(self.argv), "returncode": self.returncode,
                "timed_out": self.timed_out, "output": self.output,
                "seconds": round(self.seconds, 4), "error": self.error}  # fmt: skip


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    max_output: int = MAX_OUTPUT,
) -> CommandResult:
    """Run ``argv`` (blocking: call it in a thread) and wait at most ``timeout_s``."""
    args = tuple(argv)
    began = time.monotonic()
    try:
        process = subprocess.Popen(  # an argv list, never a shell
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            shell=False,
            env=None if env is None else dict(env),
            start_new_session=True,  # its own group, so a timeout kills its children too
        )
    except OSError as exc:
        return CommandResult(args, None, False, "", time.monotonic() - began,
                             error=f"cannot run {args[0]!r}: {exc.strerror}")  # fmt: skip
    assert process.stdout is not None
    kept = bytearray()
    reader = threading.Thread(target=_drain, args=(process.stdout, kept, max_output), daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    # The leader is gone or out of time: so is its group. A child it left behind would
    # otherwise hold the pipe open, and the reader with it, past the timeout.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # A process that left the group (setsid) may still hold the pipe: the reader then
    # closes it when that one ends; what was read so far is the output.
    reader.join(timeout=1.0)
    return CommandResult(
        args,
        None if timed_out else process.returncode,
        timed_out,
        bytes(kept).decode("utf-8", "replace"),
        time.monotonic() - began,
        error=f"timed out after {timeout_s:g} s" if timed_out else None,
    )


def _drain(stream: IO[bytes], kept: bytearray, cap: int) -> None:
    # The reader closes the pipe: a close from elsewhere would wait on its read.
    with contextlib.suppress(OSError, ValueError), stream:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            room = cap - len(kept)
            if room > 0:
                kept += chunk[:room]
