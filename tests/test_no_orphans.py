"""What a benchmark or test starts, it stops: on error, Ctrl-C and SIGTERM too.

Each child runs in a process group of its own (``edgewire.bench.procs``), and
the whole group goes when the block ends, grandchildren included: LitServe's
workers outlived its server when only the server was stopped.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edgewire.bench.procs import group_members, process_group
from edgewire.bench.spawn import SpawnedAgent

ROOT = Path(__file__).resolve().parents[1]

# A parent that starts a grandchild which ignores SIGTERM, as a stubborn worker would.
FAMILY = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    child = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
            "print('worker', flush=True); time.sleep(600)"
    worker = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    worker.stdout.readline()
    print("ready", flush=True)
    time.sleep(600)
    """
)


def eventually(check: Callable[[], bool], *, within: float = 30.0) -> bool:
    """Whether ``check()`` comes true within ``within`` s (killed processes take a moment)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_an_error_inside_the_block_stops_the_whole_group() -> None:
    seen: dict[str, int] = {}

    def benchmark() -> None:
        with process_group(
            [sys.executable, "-c", FAMILY], stdout=subprocess.PIPE, text=True, grace=5
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            seen["pgid"] = os.getpgid(proc.pid)
            assert seen["pgid"] == proc.pid != os.getpgid(0)  # a group of its own
            assert len(group_members(proc.pid)) == 2
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        benchmark()
    assert eventually(lambda: not group_members(seen["pgid"])), group_members(seen["pgid"])


# The driver: a benchmark-like script that starts the family and then waits.
DRIVER = textwrap.dedent(
    f"""
    import subprocess, sys, time
    from edgewire.bench.procs import process_group
    family = {FAMILY!r}
    with process_group([sys.executable, "-c", family], stdout=subprocess.PIPE, text=True,
                       grace=5) as proc:
        proc.stdout.readline()
        print(proc.pid, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_to_the_benchmark_stops_the_group(signum: int) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as driver:
        assert driver.stdout is not None
        line = driver.stdout.readline()
        assert line.strip().isdigit(), driver.stderr.read() if driver.stderr else line
        pgid = int(line)
        assert len(group_members(pgid)) == 2
        driver.send_signal(signum)
        try:
            driver.wait(60)
        finally:
            if driver.poll() is None:
                driver.kill()
    assert eventually(lambda: not group_members(pgid)), group_members(pgid)


def test_spawned_agent_runs_in_its_own_group_and_leaves_nothing(tmp_path: Path) -> None:
    seen: dict[str, int] = {}

    def benchmark() -> None:
        with SpawnedAgent(tmp_path / "agent") as agent:
            seen["pgid"] = os.getpgid(agent.proc.pid)
            assert seen["pgid"] == agent.proc.pid != os.getpgid(0)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        benchmark()
    assert eventually(lambda: not group_members(seen["pgid"])), group_members(seen["pgid"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(importlib.util.find_spec("litserve") is None, reason="litserve not installed")
def test_litserve_as_serve_py_starts_it_leaves_no_worker(tmp_path: Path) -> None:
    import httpx

    from tests.serve.models import linear_model

    model = tmp_path / "m.onnx"
    linear_model(model, in_features=784, out_features=10, seed=0)
    port = free_port()
    seen: dict[str, int] = {}

    def benchmark() -> None:
        with process_group(
            [sys.executable, str(ROOT / "benchmarks" / "litserve_app.py"), str(model),
             str(port), "4", "0.002"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, grace=10,
        ) as proc:  # fmt: skip
            seen["pgid"] = proc.pid

            def healthy() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success
                except httpx.HTTPError:
                    return proc.poll() is not None  # stop waiting if it died

            assert eventually(healthy, within=120) and proc.poll() is None
            assert len(group_members(proc.pid)) >= 2  # the server and its inference worker
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        benchmark()
    assert eventually(lambda: not group_members(seen["pgid"])), group_members(seen["pgid"])


def test_no_benchmark_starts_a_process_by_hand() -> None:
    """Benchmarks start servers through process_group or SpawnedAgent, never a bare Popen."""
    offenders = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text("utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "Popen":
                offenders.append(f"{script.name}:{node.lineno}")
    assert offenders == []
