"""What a benchmark or test starts, it stops: on error, Ctrl-C and SIGTERM too.

Each child runs in a process group of its own (``edgewire.bench.procs``), and
the whole group goes when the block ends, grandchildren included: LitServe's
workers outlived its server when only the server was stopped.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from benchmarks import http_peers

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


@pytest.mark.parametrize(
    "peer",
    [
        pytest.param(
            name,
            marks=pytest.mark.skipif(
                not http_peers.available(name), reason=f"{name} not installed"
            ),
        )
        for name in http_peers.PEERS
    ],
)
def test_http_peer_as_serve_py_starts_it_leaves_no_worker(peer: str, tmp_path: Path) -> None:
    import httpx

    from tests.serve.models import linear_model

    model = tmp_path / "m.onnx"
    linear_model(model, in_features=784, out_features=10, seed=0)
    port = http_peers.free_port()
    seen: dict[str, list[int]] = {}

    def benchmark() -> None:
        with http_peers.peer_server(
            peer, model, port, max_batch=4, delay_s=0.002, cpus=None
        ) as server:
            reply = httpx.post(
                f"http://127.0.0.1:{port}/predict", json={"input": [0.5] * 784}, timeout=30
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            outputs = body["output"] if isinstance(body, dict) else body
            assert len(np.ravel(outputs)) == 10
            seen["pgid"] = [server.pid]
            seen["tree"] = server.pids()
            assert len(seen["tree"]) >= 2  # the server and its inference worker
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        benchmark()

    def all_gone() -> bool:
        return not group_members(seen["pgid"][0]) and not any(map(_alive, seen["tree"]))

    assert eventually(all_gone), (group_members(seen["pgid"][0]), seen["tree"])


@pytest.mark.skipif(not http_peers.available("bentoml"), reason="bentoml not installed")
def test_bentoml_worker_outside_the_group_goes_when_its_manager_is_killed(tmp_path: Path) -> None:
    from tests.serve.models import linear_model

    model = tmp_path / "m.onnx"
    linear_model(model, in_features=784, out_features=10, seed=0)
    port = http_peers.free_port()
    with http_peers.peer_server(
        "bentoml", model, port, max_batch=4, delay_s=0.002, cpus=None
    ) as server:
        workers = [pid for pid in server.pids() if os.getpgid(pid) != server.pid]
        assert workers  # circus gives its worker a session of its own
        os.kill(server.pid, signal.SIGKILL)  # the manager dies without stopping it
        assert eventually(lambda: not _alive(server.pid))  # its worker has another parent now
    assert eventually(lambda: not any(map(_alive, workers))), workers


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs and is not a zombie (BentoML's worker is not in the group)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_no_benchmark_starts_a_process_by_hand() -> None:
    """Benchmarks start servers through process_group or SpawnedAgent, never a bare Popen."""
    offenders = []
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text("utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "Popen":
                offenders.append(f"{script.name}:{node.lineno}")
    assert offenders == []
