"""Start a real ``edgewire agent`` process on loopback (benchmarks and tests).

The agent runs in a process group of its own (see :mod:`edgewire.bench.procs`):
:meth:`SpawnedAgent.close` stops the whole group, so nothing it started outlives
the benchmark or test, and a Ctrl-C in the terminal reaches the benchmark only,
which then stops the agent itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from edgewire.bench.procs import stop_group

_PORTS = re.compile(r"edgewire agent on \S+: (.*); data in")


class SpawnedAgent:
    """``edgewire agent --port 0 --http-port 0``; ``ports`` maps names to bound ports."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        cpus: set[int] | None = None,
    ) -> None:
        """``cpus``: pin the agent, and every thread it will start, to these cores (set
        in the child before it runs, so model and event-loop threads inherit it)."""
        pin = None
        if cpus is not None and hasattr(os, "sched_setaffinity"):
            cores = set(cpus)

            def pin() -> None:
                os.sched_setaffinity(0, cores)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgewire.cli", "agent", "--port", "0", "--http-port", "0",
             "--data-dir", str(data_dir), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "300", **(env or {})},
            start_new_session=True,
            preexec_fn=pin,
        )  # fmt: skip
        try:  # a failed start, or Ctrl-C during it, leaves nothing running
            self.ports: dict[str, int] = self._read_ports(start_timeout)
        except BaseException:
            self.close()
            raise

    def _read_ports(self, start_timeout: float) -> dict[str, int]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + start_timeout
        seen = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
            seen.append(line)
            match = _PORTS.search(line)
            if match:
                pairs = (item.split() for item in match.group(1).split(", "))
                return {name: int(port) for name, port in pairs}
        raise RuntimeError(f"agent did not start (rc={self.proc.poll()}): {''.join(seen)[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the agent and anything it started (its process group)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Stop the agent (SIGTERM: it drains) and its whole process group."""
        if self.proc.returncode is None:
            stop_group(self.proc, grace=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> SpawnedAgent:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
