"""The loads RELIABILITY.md says the agent holds: idle connections, and a full queue.

On loopback, one spawned agent at a time, serving a small ONNX model (an MLP,
784 -> 1024 -> 10, built here with ``onnx.helper``):

a. **idle connections**: 100 active native clients at full rate, first alone,
   then while 10,000 idle native connections are held open (2,000 with
   ``--quick``): requests/s and p99 both times, their ratio, and the agent's
   resident memory (VmRSS) before and after the idle ones connect. Skipped, with
   the reason, when the hard fd limit cannot hold that many connections.
b. **queue full**: an agent with ``max_queue = 8`` (``EDGEWIRE_MAX_QUEUE``)
   flooded by many pipelined clients: how many requests were answered ``busy``
   and how fast (p50/p99 of a rejection), then the rate of a few clients once
   the flood stops, against the same clients before it (recovery).

Usage: python benchmarks/loads.py [--quick] [--no-write]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console

from edgewire.agent import fdlimits
from edgewire.bench.cores import process_rss_mb
from edgewire.bench.loadgen import LoadResult, LoadSpec, run_load
from edgewire.bench.procs import sigterm_as_exit
from edgewire.bench.report import json_line, markdown_table, print_table, write_section
from edgewire.bench.spawn import SpawnedAgent
from edgewire.wire.frames import HEADER, MsgType, encode_frame
from edgewire.wire.messages import encode_message

ROOT = Path(__file__).resolve().parent.parent
console = Console()
MODEL = "m"
FEATURES = 784


def make_model(path: Path) -> None:
    """A small MLP with fixed random weights: enough compute for a queue to fill."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.05, (1024, FEATURES)).astype(np.float32)
    w2 = rng.normal(0, 0.05, (10, 1024)).astype(np.float32)
    b1, b2 = np.zeros(1024, np.float32), np.zeros(10, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input_0", "W1", "B1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"], transB=1),
            helper.make_node("Softmax", ["logits"], ["output_0"], axis=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("input_0", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 10])],
        initializer=[
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "B1"),
            numpy_helper.from_array(w2, "W2"),
            numpy_helper.from_array(b2, "B2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


@contextlib.contextmanager
def agent_with_model(data_dir: Path, model: Path, env: dict[str, str]) -> Iterator[SpawnedAgent]:
    """A spawned agent serving ``model``; its output is drained so that it never blocks."""
    with SpawnedAgent(data_dir, env=env) as agent:
        out = agent.proc.stdout

        def drain() -> None:
            with contextlib.suppress(ValueError, OSError):
                for _ in out or ():
                    pass

        threading.Thread(target=drain, daemon=True).start()
        data = model.read_bytes()
        put = httpx.put(
            f"http://127.0.0.1:{agent.ports['http']}/api/models/{MODEL}",
            params={"sha256": hashlib.sha256(data).hexdigest(), "filename": model.name},
            content=data,
            timeout=120,
        )
        put.raise_for_status()
        yield agent


def load(agent: SpawnedAgent, *, clients: int, seconds: float) -> LoadResult:
    return run_load(
        LoadSpec(
            host="127.0.0.1",
            port=agent.ports["native"],
            protocol="native",
            model=MODEL,
            clients=clients,
            duration=seconds,
            input_shape=(1, FEATURES),
        )
    )


def open_metric(agent: SpawnedAgent, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{agent.ports['http']}/metrics", timeout=30).text
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def raise_own_fd_limit(wanted: int) -> int:
    soft, _ = fdlimits.raise_soft_limit(wanted)
    return soft


# --- a. idle connections ---------------------------------------------------------------


def idle_phase(
    tmp: Path, model: Path, *, idle: int, clients: int, seconds: float
) -> dict[str, Any] | str:
    """The figures, or why the phase was skipped."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    own = raise_own_fd_limit(idle + 2_000)  # the idle sockets' client ends live here
    if own < idle + 1_000:
        return f"the hard fd limit ({hard}) cannot hold {idle:,} idle connections here"
    # What the agent will make of the same hard limit (see agent/fdlimits.py).
    open_guess = 30
    agent_limit = min(hard, fdlimits.limit_wanted(2 * 20_000, open_now=open_guess))
    plan = fdlimits.plan(
        limit=agent_limit,
        hard=hard,
        open_now=open_guess,
        ports=["native", "http"],
        max_connections=20_000,
    )
    if plan.caps["native"] < idle + clients:
        return (
            f"the agent's native cap at this hard fd limit would be {plan.caps['native']}, "
            f"under {idle} idle + {clients} active connections; raise `ulimit -Hn`"
        )
    socks: list[socket.socket] = []
    with agent_with_model(tmp / "idle", model, {}) as agent:
        try:
            load(agent, clients=clients, seconds=min(seconds, 3.0))  # warm-up
            before = load(agent, clients=clients, seconds=seconds)
            rss_before = process_rss_mb(agent.proc.pid)
            began = time.perf_counter()
            for _ in range(idle):
                sock = socket.create_connection(("127.0.0.1", agent.ports["native"]), timeout=30)
                socks.append(sock)
            deadline = time.monotonic() + 60
            while open_metric(agent, "edgewire_open_connections", protocol="native") < idle:
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not accept all the idle connections")
                time.sleep(0.2)
            connect_s = time.perf_counter() - began
            rss_idle = process_rss_mb(agent.proc.pid)
            during = load(agent, clients=clients, seconds=seconds)
            rss_after = process_rss_mb(agent.proc.pid)
            refused = open_metric(agent, "edgewire_connections_rejected_total", protocol="native")
        finally:
            for sock in socks:
                sock.close()
    return {
        "idle": idle,
        "clients": clients,
        "connect_s": connect_s,
        "rps_alone": before.rps,
        "p99_alone_ms": before.percentile(99),
        "rps_with_idle": during.rps,
        "p99_with_idle_ms": during.percentile(99),
        "rps_ratio": during.rps / before.rps if before.rps else float("nan"),
        "errors": before.errors + during.errors,
        "rss_before_mb": rss_before,
        "rss_idle_mb": rss_idle,
        "rss_after_mb": rss_after,
        "kb_per_idle": (rss_idle - rss_before) * 1024 / idle,
        "refused": int(refused),
    }


# --- b. queue full ----------------------------------------------------------------------


async def _flood_client(
    port: int, request: bytes, stop_at: float, ok: list[float], busy: list[float], other: list[str]
) -> None:
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        other.append(type(exc).__name__)
        return
    try:
        while loop.time() < stop_at:
            t0 = time.perf_counter()
            writer.write(request)
            header = await reader.readexactly(HEADER.size)
            fields = HEADER.unpack(header)
            payload = await reader.readexactly(fields[6])
            ms = (time.perf_counter() - t0) * 1000
            if fields[2] == MsgType.INFER_RESPONSE:
                ok.append(ms)
            elif b"busy" in payload:
                busy.append(ms)
            else:
                other.append(payload[:80].decode(errors="replace"))
    except (OSError, asyncio.IncompleteReadError) as exc:
        other.append(type(exc).__name__)
    finally:
        writer.close()


async def _flood(
    port: int, *, clients: int, seconds: float
) -> tuple[list[float], list[float], list[str]]:
    x = np.random.default_rng(0).random((1, FEATURES), dtype=np.float32)
    request = encode_frame(
        MsgType.INFER_REQUEST, encode_message({"model": MODEL}, [x]), request_id=1
    )
    ok: list[float] = []
    busy: list[float] = []
    other: list[str] = []
    stop_at = asyncio.get_running_loop().time() + seconds
    await asyncio.gather(
        *(_flood_client(port, request, stop_at, ok, busy, other) for _ in range(clients))
    )
    return ok, busy, other


def queue_phase(
    tmp: Path, model: Path, *, flood_clients: int, seconds: float, calm_clients: int
) -> dict[str, Any]:
    env = {"EDGEWIRE_MAX_QUEUE": "8"}
    with agent_with_model(tmp / "queue", model, env) as agent:
        load(agent, clients=calm_clients, seconds=min(seconds, 3.0))  # warm-up
        calm = load(agent, clients=calm_clients, seconds=seconds)
        began = time.perf_counter()
        ok, busy, other = asyncio.run(
            _flood(agent.ports["native"], clients=flood_clients, seconds=seconds)
        )
        flood_s = time.perf_counter() - began
        after = load(agent, clients=calm_clients, seconds=seconds)
    busy_ms = np.asarray(busy) if busy else np.asarray([np.nan])
    return {
        "max_queue": 8,
        "flood_clients": flood_clients,
        "flood_s": flood_s,
        "flood_ok": len(ok),
        "flood_busy": len(busy),
        "flood_other": len(other),
        "busy_p50_ms": float(np.percentile(busy_ms, 50)),
        "busy_p99_ms": float(np.percentile(busy_ms, 99)),
        "ok_p99_ms": float(np.percentile(ok, 99)) if ok else float("nan"),
        "calm_clients": calm_clients,
        "rps_before_flood": calm.rps,
        "rps_after_flood": after.rps,
        "recovery_ratio": after.rps / calm.rps if calm.rps else float("nan"),
        "errors_after_flood": after.errors,
    }


# --- the run ---------------------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a couple of minutes")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--idle", type=int, default=None, help="idle connections (10,000)")
    parser.add_argument("--clients", type=int, default=100, help="active clients")
    parser.add_argument("--flood", type=int, default=None, help="flooding clients (500)")
    parser.add_argument("--seconds", type=float, default=None, help="each phase (20 s)")
    args = parser.parse_args(argv)
    idle = args.idle or (2_000 if args.quick else 10_000)
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    flood = args.flood or (200 if args.quick else 500)
    figures: dict[str, Any] = {"quick": args.quick}
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="edgewire-loads-") as name:
        tmp = Path(name)
        model = tmp / "mlp.onnx"
        make_model(model)

        console.print(f"a. {idle:,} idle native connections, {args.clients} active clients")
        idle_figures = idle_phase(tmp, model, idle=idle, clients=args.clients, seconds=seconds)
        if isinstance(idle_figures, str):
            console.print(f"   skipped: {idle_figures}")
            figures["idle_skipped"] = idle_figures
            rows.append(["idle connections", "skipped", idle_figures, "", ""])
        else:
            figures.update({f"idle_{k}": v for k, v in idle_figures.items()})
            i = idle_figures
            rows.append([f"{args.clients} clients alone", _f(i["rps_alone"], 0),
                         _f(i["p99_alone_ms"], 2), _f(i["rss_before_mb"]), ""])  # fmt: skip
            rows.append([f"{args.clients} clients + {idle:,} idle", _f(i["rps_with_idle"], 0),
                         _f(i["p99_with_idle_ms"], 2), _f(i["rss_after_mb"]),
                         f"rps ×{i['rps_ratio']:.2f}, {i['kb_per_idle']:.1f} kB/idle conn"])  # fmt: skip

        console.print(f"b. queue full: max_queue 8, {flood} flooding clients")
        q = queue_phase(
            tmp,
            model,
            flood_clients=flood,
            seconds=seconds,
            calm_clients=8,
        )
        figures.update({f"queue_{k}": v for k, v in q.items()})
        rows.append(["8 clients before the flood", _f(q["rps_before_flood"], 0), "", "", ""])
        rows.append([f"flood: {q['flood_clients']} clients", _f(q["flood_ok"] / q["flood_s"], 0),
                     _f(q["ok_p99_ms"], 2), "",
                     f"{q['flood_busy']:,} busy, p50 {q['busy_p50_ms']:.2f} ms, "
                     f"p99 {q['busy_p99_ms']:.2f} ms; {q['flood_other']} other"])  # fmt: skip
        rows.append(["8 clients after the flood", _f(q["rps_after_flood"], 0), "", "",
                     f"recovery ×{q['recovery_ratio']:.2f}, {q['errors_after_flood']} errors"])  # fmt: skip

    header = ["load", "answered/s", "p99 ms", "agent RSS MB", "notes"]
    print_table(console, "Loads (loopback, one agent)", header, rows)
    if not args.no_write:
        body = (
            "## Loads\n\n`python benchmarks/loads.py"
            + (" --quick" if args.quick else "")
            + "`: native clients against one agent on loopback, a small ONNX MLP.\n\n"
            + markdown_table(header, rows)
        )
        write_section(ROOT / "docs" / "benchmarks.md", "loads", body)
    print(json_line(figures))
    return 0


if __name__ == "__main__":
    with sigterm_as_exit():  # SIGTERM runs the clean-ups, as Ctrl-C does
        sys.exit(main())
