"""The HTTP peers benchmarks/serve.py compares edgewire against: LitServe and BentoML.

Each serves the same ONNX model with the same max batch size and one model
thread, behind ``POST /predict {"input": [floats]}``, and answers every request
within its 60 s timeout. The batching delay is LitServe's batch timeout; BentoML
has no such knob (it waits as long as its model of the batch time advises), and
its ``max_latency_ms`` is a budget past which it answers 503, so it gets the
timeout as its budget. They come from the benchmark-only extra:
``pip install -e '.[peers]'``.

A peer runs in a process group of its own, pinned with all its children to the
given cores, and everything it started is stopped when the block ends. BentoML's
process manager (circus) puts its worker in a session of its own, out of the
group, so the worker is tracked as a descendant and killed if it outlives the group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgewire.bench.cores import process_cpu_s
from edgewire.bench.procs import process_group

HERE = Path(__file__).resolve().parent

PEERS = ("litserve", "bentoml")

#: Where each peer's app lives, and the path that answers 200 once it serves.
_APPS = {"litserve": HERE / "litserve_app.py", "bentoml": HERE / "bentoml_app.py"}
_HEALTH = {"litserve": "/health", "bentoml": "/readyz"}

START_TIMEOUT_S = 120.0

#: BentoML's latency budget, LitServe's request timeout: a budget of the batching
#: delay (2 ms) had BentoML answer 503 to nearly every request under load.
BENTOML_LATENCY_BUDGET_S = 60.0


def available(name: str) -> bool:
    """Whether the peer's package is installed (the ``peers`` extra)."""
    _check(name)
    return importlib.util.find_spec(name) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Peer:
    """A running peer: ``pid`` leads its process group."""

    name: str
    port: int
    pid: int

    def pids(self) -> list[int]:
        """The peer's live processes: its leader and every descendant."""
        return [pid for pid, _ in _tree(self.pid)]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the peer's live processes, all threads."""
        total = 0.0
        for pid in self.pids():
            with contextlib.suppress(OSError):  # gone meanwhile
                total += process_cpu_s(pid)
        return total


@contextlib.contextmanager
def peer_server(
    name: str,
    model: Path,
    port: int,
    *,
    max_batch: int,
    delay_s: float,
    cpus: set[int] | None,
) -> Iterator[Peer]:
    """Peer ``name`` serving ``model`` on 127.0.0.1:``port`` until the block ends,
    pinned (with every process it starts) to ``cpus``; None leaves it unpinned.
    ``delay_s`` is LitServe's batch timeout; BentoML gets BENTOML_LATENCY_BUDGET_S."""
    _check(name)
    pin = None
    if cpus is not None and hasattr(os, "sched_setaffinity"):
        cores = set(cpus)

        def pin() -> None:
            os.sched_setaffinity(0, cores)

    with tempfile.TemporaryDirectory(prefix=f"edgewire-{name}-") as tmp:
        log_path = Path(tmp) / "server.log"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "BENTOML_DO_NOT_TRACK": "True",
            "BENTOML_HOME": str(Path(tmp) / "bentoml"),
        }
        delay_or_budget = BENTOML_LATENCY_BUDGET_S if name == "bentoml" else delay_s
        args = [sys.executable, str(_APPS[name]), str(model.resolve()), str(port),
                str(max_batch), str(delay_or_budget)]  # fmt: skip
        tree: list[tuple[int, int]] = []
        try:
            with (
                log_path.open("wb") as log,
                process_group(
                    args, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin
                ) as proc,
            ):
                try:
                    url = f"http://127.0.0.1:{port}{_HEALTH[name]}"
                    _wait_healthy(name, url, proc.poll, log_path)
                    # Seen now and at the end: a worker whose manager died meanwhile
                    # has another parent by then.
                    tree = _tree(proc.pid)
                    yield Peer(name, port, proc.pid)
                finally:
                    tree = sorted({*tree, *_tree(proc.pid)})  # before the leader is reaped
        finally:
            _kill_survivors(tree)


def _check(name: str) -> None:
    if name not in PEERS:
        raise ValueError(f"unknown HTTP peer {name!r}: choose one of {', '.join(PEERS)}")


def _wait_healthy(name: str, url: str, exit_code: Callable[[], int | None], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if (code := exit_code()) is not None:
            raise RuntimeError(f"{name} exited with code {code} before serving: {_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"{name} was not healthy at {url} after {START_TIMEOUT_S:.0f} s "
        f"(exit code {exit_code()}): {_tail(log_path)}"
    )


def _tail(log_path: Path, chars: int = 2000) -> str:
    text = log_path.read_text("utf-8", errors="replace")
    return text[-chars:] if text else "(no output)"


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (state first)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].decode().split()


def _tree(root: int) -> list[tuple[int, int]]:
    """``root`` and its live descendants, as (pid, start time) pairs."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:  # gone meanwhile
            continue
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        started[int(entry)] = int(fields[19])
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in started:
            found.append((pid, started[pid]))
        todo.extend(children.get(pid, []))
    return found


def _kill_survivors(tree: list[tuple[int, int]]) -> None:
    """SIGKILL what of ``tree`` outlived its group (a worker in a session of its own);
    the start time tells a survivor from a new process given the same pid."""
    for pid, start in tree:
        try:
            if int(_stat(pid)[19]) != start:
                continue
            os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError, ValueError):  # gone, as it should be
            continue
