"""Cores for the roles of a benchmark that stands for several machines.

In the field the agent (a Jetson) and its load (microcontrollers, or the
workstation that streams training data) are different machines. A benchmark
on one box stands for that by pinning each role to a core of its own: the
agent and its model thread on one, the load generator (or the sending host and
the link emulator) on another. The baseline runs on the agent's core.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Roles:
    """Which cores the agent and the load run on; None where pinning is not possible."""

    agent: set[int] | None
    load: set[int] | None

    @property
    def pinned(self) -> bool:
        return self.agent is not None

    def describe(self) -> str:
        if self.agent is None or self.load is None:
            return "unpinned (roles share the cores)"
        return f"agent on core {_cores(self.agent)}, load on core {_cores(self.load)}"


def roles() -> Roles:
    """The agent on the last usable core, the load on the others (unpinned with one core)."""
    if not hasattr(os, "sched_getaffinity"):
        return Roles(None, None)
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Roles(None, None)
    return Roles(agent={usable[-1]}, load=set(usable[:-1]))


@contextlib.contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Run the calling thread, and the processes and threads it starts meanwhile, on
    ``cores``; then as before (other threads already running keep their cores)."""
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (10^6 bytes), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def _cores(cores: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))
