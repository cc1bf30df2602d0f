"""File descriptors: the cap arithmetic, idle eviction, and an agent at ``ulimit -n 256``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from edgewire.agent import fdlimits
from edgewire.agent.fdlimits import Connection, ConnectionTable, FdPlan, RateLimit
from edgewire.client.native import Client
from tests.serve.models import linear_model

# --- the arithmetic ------------------------------------------------------------------------


def test_the_reserve_is_64_and_5_percent() -> None:
    assert fdlimits.reserve_for(256) == 64 + 12
    assert fdlimits.reserve_for(1024) == 64 + 51
    assert fdlimits.reserve_for(1_048_576) == 64 + 52_428


def test_native_and_http_share_the_usable_fds_60_40() -> None:
    assert fdlimits.split_caps(100, ["native", "http"], max_connections=20_000) == {
        "native": 60,
        "http": 40,
    }


def test_opt_in_ports_get_one_share_each() -> None:
    caps = fdlimits.split_caps(700, ["native", "mnistprot", "bts0", "http"], max_connections=10**6)
    assert caps == {"native": 300, "mnistprot": 100, "bts0": 100, "http": 200}
    assert sum(caps.values()) <= 700


def test_no_cap_is_above_max_connections_and_the_rest_goes_to_the_others() -> None:
    assert fdlimits.split_caps(10**6, ["native", "http"], max_connections=20_000) == {
        "native": 20_000,
        "http": 20_000,
    }
    # native's 60 % would be 18,000: it gets 15,000 and http the other 15,000.
    assert fdlimits.split_caps(30_000, ["native", "http"], max_connections=15_000) == {
        "native": 15_000,
        "http": 15_000,
    }
    caps = fdlimits.split_caps(30_000, ["native", "mnistprot", "http"], max_connections=14_000)
    assert caps["native"] == 14_000 and sum(caps.values()) <= 30_000


def test_with_no_fds_to_spare_each_port_still_gets_one() -> None:
    assert fdlimits.split_caps(-50, ["native", "http"], max_connections=20_000) == {
        "native": 1,
        "http": 1,
    }


def test_the_plan_at_ulimit_256() -> None:
    plan = fdlimits.plan(
        limit=256, hard=256, open_now=20, ports=["native", "http"], max_connections=20_000
    )
    assert plan.reserve == 76
    assert plan.caps == {"native": 96, "http": 64}  # 160 usable, 60/40
    assert plan.open_at_start + plan.reserve + sum(plan.caps.values()) <= plan.limit
    assert plan.high == 230 and plan.low == 217
    assert "limit 256 (hard 256)" in plan.describe()
    assert "native 96, http 64" in plan.describe()


@pytest.mark.parametrize("connections", [1, 100, 20_000, 60_000])
@pytest.mark.parametrize("open_now", [0, 30, 500])
def test_the_limit_wanted_fits_the_connections(connections: int, open_now: int) -> None:
    limit = fdlimits.limit_wanted(connections, open_now=open_now)
    assert limit - fdlimits.reserve_for(limit) - open_now >= connections
    # and it is not wildly more than needed
    assert limit - fdlimits.reserve_for(limit) - open_now <= connections + 5


def test_evictions_start_past_the_high_water_and_go_down_to_the_low() -> None:
    plan = FdPlan(limit=1000, hard=1000, open_at_start=10, reserve=114, caps={})
    assert fdlimits.evictions_needed(900, plan) == 0
    assert fdlimits.evictions_needed(901, plan) == 901 - 850
    assert fdlimits.evictions_needed(1000, plan) == 150


def test_raising_the_soft_limit_never_lowers_it() -> None:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert fdlimits.raise_soft_limit(1)[0] == soft
    assert fdlimits.count_open_fds() is not None


def test_a_rate_limit_says_yes_once_per_interval_per_key() -> None:
    limit = RateLimit(10.0)
    assert limit.due("native", 100.0)
    assert not limit.due("native", 105.0)
    assert limit.due("http", 105.0)
    assert limit.due("native", 110.0)


# --- which connection goes first -------------------------------------------------------------


@dataclass
class _Clock:
    last_active: float


def _table(
    times: dict[str, float], *, port: str = "native"
) -> tuple[ConnectionTable, dict[str, Connection]]:
    table = ConnectionTable(caps={port: len(times)})
    conns = {}
    for name, when in times.items():
        conns[name] = Connection(port, _Clock(when), lambda: None)
        table.add(conns[name])
    return table, conns


def test_the_longest_silent_connection_goes_first() -> None:
    table, conns = _table({"a": 5.0, "b": 1.0, "c": 3.0})
    assert table.full("native")
    assert table.most_idle("native", now=20.0, min_idle=10.0) is conns["b"]
    table.remove(conns["b"])
    assert table.most_idle("native", now=20.0, min_idle=10.0) is conns["c"]
    table.remove(conns["c"])
    assert not table.full("native") and table.count("native") == 1 and table.total() == 1


def test_none_goes_that_has_not_been_silent_long_enough() -> None:
    table, conns = _table({"a": 5.0, "b": 8.0})
    assert table.most_idle("native", now=10.0, min_idle=10.0) is None
    assert table.most_idle("native", now=14.9, min_idle=10.0) is None  # remembered, no scan
    assert table.most_idle("native", now=15.0, min_idle=10.0) is conns["a"]


def test_a_candidate_that_spoke_since_is_passed_over() -> None:
    times = {f"c{i}": float(i) for i in range(40)}
    table, conns = _table(times)
    first = table.most_idle("native", now=100.0, min_idle=10.0)
    assert first is conns["c0"]
    table.remove(first)
    conns["c1"].activity.last_active = 99.0  # type: ignore[misc]
    assert table.most_idle("native", now=100.0, min_idle=10.0) is conns["c2"]


def test_any_port_may_give_its_connection_under_fd_pressure() -> None:
    table = ConnectionTable()
    native = Connection("native", _Clock(50.0), lambda: None)
    mnist = Connection("mnistprot", _Clock(2.0), lambda: None)
    table.add(native)
    table.add(mnist)
    assert table.most_idle(None, now=100.0, min_idle=1.0) is mnist


# --- an agent at ulimit -n 256 -------------------------------------------------------------

_PORTS = re.compile(r"edgewire agent on \S+: (.*); data in")
_CAPS = re.compile(r"connections per port: (.*)$")
_LAUNCH = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
sys.argv = ["edgewire", "-v", "agent", "--port", "0", "--http-port", "0", "--data-dir", sys.argv[1]]
runpy.run_module("edgewire.cli", run_name="__main__", alter_sys=True)
"""


@dataclass
class _Agent:
    proc: subprocess.Popen[str]
    lines: list[str]
    ports: dict[str, int]
    caps: dict[str, int]


@contextmanager
def _agent_at_256_fds(data_dir: Path, *, idle_evict_after: float) -> Iterator[_Agent]:
    env = {
        **os.environ,
        "COLUMNS": "300",
        "EDGEWIRE_IDLE_EVICT_AFTER": str(idle_evict_after),
        "EDGEWIRE_DRAIN_TIMEOUT": "3",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    started = threading.Event()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:  # keep reading, so that the agent never blocks on a full pipe
        for line in stdout:
            lines.append(line)
            if _PORTS.search(line):
                started.set()
        started.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert started.wait(60) and proc.poll() is None, "".join(lines)[-3000:]
        ports_line = next(m for line in lines if (m := _PORTS.search(line)))
        caps_line = next(m for line in lines if (m := _CAPS.search(line.strip())))
        pairs = (item.split() for item in ports_line.group(1).split(", "))
        caps = (item.split() for item in caps_line.group(1).split(", "))
        yield _Agent(
            proc,
            lines,
            {name: int(port) for name, port in pairs},
            {name: int(cap) for name, cap in caps},
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(10)
        stdout.close()
        if os.environ.get("EDGEWIRE_TEST_SHOW_AGENT"):
            sys.stderr.write("".join(lines))


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _native_infer(port: int) -> None:
    async with await Client.connect("127.0.0.1", port, timeout=10) as client:
        answer = await client.infer("m", [np.zeros((1, 784), np.float32)])
        assert next(iter(answer.outputs.values())).shape == (1, 10)


@pytest.mark.slow
def test_idle_native_connections_past_the_cap_cost_http_and_new_clients_nothing(
    tmp_path: Path,
) -> None:
    model = tmp_path / "m.onnx"
    linear_model(model)
    data = model.read_bytes()
    # The sockets close first, then the agent stops (and has nothing left to drain).
    with _agent_at_256_fds(tmp_path / "agent", idle_evict_after=3.0) as agent, ExitStack() as stack:
        assert any("limit 256 (hard 256)" in line for line in agent.lines)
        native_cap = agent.caps["native"]
        assert 0 < native_cap < 256 and agent.caps["http"] > 0
        http = f"http://127.0.0.1:{agent.ports['http']}"
        put = httpx.put(
            f"{http}/api/models/m",
            params={"sha256": hashlib.sha256(data).hexdigest(), "filename": "m.onnx"},
            content=data,
            timeout=60,
        )
        assert put.status_code == 201, put.text

        flood_began = time.monotonic()
        extra = 200
        for _ in range(native_cap + extra):  # more than 256 in all: past the fd limit itself
            sock = stack.enter_context(
                socket.create_connection(("127.0.0.1", agent.ports["native"]), timeout=10)
            )
            sock.setblocking(False)
        metrics = ""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            metrics = httpx.get(f"{http}/metrics", timeout=10).text
            refused = _metric(metrics, "edgewire_connections_rejected_total", protocol="native")
            evicted = _metric(
                metrics, "edgewire_connections_evicted_total", protocol="native", reason="port_full"
            )
            if refused + evicted >= extra:
                break
            time.sleep(0.1)
        assert refused > 0, metrics
        assert refused + evicted == extra, metrics
        assert _metric(metrics, "edgewire_open_connections", protocol="native") == native_cap

        # HTTP inference still works: its share of the fds is its own.
        answer = httpx.post(
            f"{http}/v2/models/m/infer",
            json={"inputs": [{"name": "input_0", "shape": [1, 784], "datatype": "FP32",
                              "data": [0.0] * 784}]},
            timeout=30,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text

        # A new native client takes the place of the one silent longest.
        time.sleep(max(0.0, flood_began + 3.5 - time.monotonic()))
        asyncio.run(_native_infer(agent.ports["native"]))
        metrics = httpx.get(f"{http}/metrics", timeout=10).text
        assert (
            _metric(
                metrics, "edgewire_connections_evicted_total", protocol="native", reason="port_full"
            )
            >= evicted + 1
        ), metrics
        assert any("refusing new native connections" in line for line in agent.lines)


def test_http_connections_past_the_cap_are_closed_at_once_and_counted(tmp_path: Path) -> None:
    from tests.helpers import agent_in_thread

    with agent_in_thread(tmp_path / "agent", max_connections=3) as running, ExitStack() as stack:
        assert running.agent.fd_plan is not None
        assert running.agent.fd_plan.caps == {"native": 3, "http": 3}
        socks = [
            stack.enter_context(socket.create_connection(("127.0.0.1", running.http), timeout=10))
            for _ in range(5)
        ]
        closed = 0
        for sock in socks[3:]:
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed == 2
        registry = running.agent.metrics.registry
        sample = registry.get_sample_value(
            "edgewire_connections_rejected_total", {"protocol": "http"}
        )
        assert sample == 2
