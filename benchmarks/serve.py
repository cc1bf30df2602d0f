"""Serving throughput, as separate machines see it: agent and load on their own cores.

In one run, on one ONNX model (the demo's MNIST CNN, trained here on real
digits) and this machine. In the field the agent (a Jetson) and its clients
(ESP8266s, or a workstation) are different machines, so the targets are measured
**pinned**: the agent and its one model thread on one core, the load generator
(and the burst tool, the idle connections) on the other (``edgewire.bench.cores``):

1. the compute ceiling: ONNX Runtime alone, one thread on the agent's core, at its
   best batch size, no network;
2. the seed's stress pattern (500 one-shot clients at once) against a faithful
   copy of the seed's server (single-threaded, backlog 5, global lock) and
   against edgewire's MnistProt port, both on the agent's core;
3. edgewire with 1,000 persistent clients, native and MnistProt: requests/s, p99,
   the agent's CPU per request split into the model's (its thread's clock, from
   ``edgewire_model_cpu_seconds_total``) and everything else, the load
   generator's CPU per request;
4. the same 1,000 native clients while 10,000 idle connections are held open:
   requests/s and the agent's resident memory;
5. HTTP inference (KServe v2, JSON and binary tensors) against LitServe and
   BentoML serving the same ONNX model with the same batching and one model
   thread (the benchmark-only ``peers`` extra; a peer not installed is skipped);
6. unpinned, as before (every role on every core, ONNX Runtime's default
   threads): 1,000 native and MnistProt clients against that ceiling, as labelled
   extra rows.

Usage: python benchmarks/serve.py [--quick]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from rich.console import Console

import http_peers  # benchmarks/http_peers.py, beside this file
from edgewire.bench.cores import Roles, pinned, process_cpu_s, process_rss_mb, roles
from edgewire.bench.loadgen import LoadResult, LoadSpec, run_load
from edgewire.bench.procs import sigterm_as_exit
from edgewire.bench.report import json_line, markdown_table, print_table, write_section
from edgewire.bench.seed_stress import run_burst
from edgewire.bench.spawn import SpawnedAgent
from edgewire.data.datasets import load_dataset
from edgewire.serve.store import ModelStore
from edgewire.train.local import train_local
from edgewire.train.trainer import Trainer, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
console = Console()


def make_model(path: Path, *, samples: int) -> None:
    data = load_dataset("mnist5k").subset(samples)
    trainer = Trainer(
        TrainSpec(model="mnist_cnn", in_channels=1, height=28, width=28, num_classes=10)
    )
    train_local(trainer, data, None, epochs=1, batch_size=32)
    trainer.export_onnx(path)


def ceiling(path: Path, *, seconds: float, threads: int = 0) -> tuple[float, int, dict[int, float]]:
    """ONNX Runtime alone: samples/s at its best batch (``threads``: 0 is its default)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rates: dict[int, float] = {}
    for batch in (1, 4, 8, 16, 32, 64):
        x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
        for _ in range(3):
            session.run(None, {name: x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {name: x})
            n += batch
        rates[batch] = n / (time.perf_counter() - start)
    best = max(rates, key=lambda b: rates[b])
    return rates[best], best, rates


def _seed_server_process(model: str, cpus: set[int] | None, ports: Any, stop: Any) -> None:
    from edgewire.bench.seed_server import SeedServer

    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def infer(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run(None, {name: x.reshape(1, 1, 28, 28)})[0]
        return out

    with SeedServer(infer) as server:  # entering starts it
        ports.put(server.port)
        stop.wait()


class Burst:
    """The seed's stress pattern: the C copy of its tool when gcc is here, else the Python copy."""

    def __init__(self, tmp: Path) -> None:
        from edgewire.wire.mnistprot import encode_request

        self.request = tmp / "request.bin"
        self.request.write_bytes(
            encode_request(np.random.default_rng(0).random(784, dtype=np.float32))
        )
        self.tool: Path | None = tmp / "seed_stress"
        source = ROOT / "benchmarks" / "c" / "seed_stress.c"
        cc = shutil.which("gcc") or shutil.which("cc")
        built = (
            cc is not None
            and subprocess.run(
                [cc, "-std=c99", "-O2", "-pthread", "-o", str(self.tool), str(source)],
                capture_output=True,
            ).returncode
            == 0
        )
        if not built:
            self.tool = None
        self.kind = (
            "C copy of the seed's stress tool"
            if self.tool
            else "Python copy of the seed's stress tool"
        )

    def __call__(self, port: int, clients: int, timeout: float = 120.0) -> tuple[float, int]:
        if self.tool is None:
            result = run_burst("127.0.0.1", port, clients=clients, timeout=timeout)
            return result.seconds, result.ok
        done = subprocess.run(
            [str(self.tool), "127.0.0.1", str(port), str(clients), str(self.request), str(int(timeout))],
            capture_output=True, text=True, timeout=timeout + 60, check=True,
        )  # fmt: skip
        fields = dict(item.split("=") for item in done.stdout.split())
        return float(fields["seconds"]), int(fields["ok"])


def seed_burst(
    model: Path, burst: Burst, clients: int, timeout: float, cpus: set[int] | None
) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(
        target=_seed_server_process, args=(str(model), cpus, ports, stop), daemon=True
    )
    proc.start()
    try:
        return burst(ports.get(timeout=60), clients, timeout)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


@dataclass(frozen=True)
class Run:
    """One load run and where the CPU went (µs per answered request)."""

    load: LoadResult
    agent_us: float
    model_us: float
    loadgen_us: float
    mean_batch: float

    @property
    def nonmodel_us(self) -> float:
        return self.agent_us - self.model_us

    def cpu_line(self) -> str:
        return (
            f"agent {self.agent_us:.0f} µs/req (model {self.model_us:.0f}, other "
            f"{self.nonmodel_us:.0f}), load generator {self.loadgen_us:.0f} µs/req, "
            f"mean batch {self.mean_batch:.1f}"
        )


_BATCHER = re.compile(
    r'^(edgewire_model_cpu_seconds_total|edgewire_batches_total|edgewire_batch_rows_total)'
    r'\{model="mnist"\} (\S+)$', re.M
)  # fmt: skip


def batcher_counters(agent: SpawnedAgent) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{agent.ports['http']}/metrics", timeout=30).text
    return {name: float(value) for name, value in _BATCHER.findall(text)}


def measured(agent: SpawnedAgent, protocol: str, clients: int, seconds: float, **kw: Any) -> Run:
    """A load run against ``agent``, with the agent's CPU (its clock) and the model's."""
    before, cpu0 = batcher_counters(agent), process_cpu_s(agent.proc.pid)
    result = load(agent.ports[protocol], protocol, clients, seconds, **kw)
    cpu1, after = process_cpu_s(agent.proc.pid), batcher_counters(agent)
    ok = max(result.ok, 1)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return Run(
        load=result,
        agent_us=(cpu1 - cpu0) / ok * 1e6,
        model_us=delta("edgewire_model_cpu_seconds_total") / ok * 1e6,
        loadgen_us=result.client_cpu_s / ok * 1e6,
        mean_batch=delta("edgewire_batch_rows_total") / max(delta("edgewire_batches_total"), 1),
    )


def warm_then_measure(agent: SpawnedAgent, protocol: str, clients: int, seconds: float) -> Run:
    """A 2 s warm-up, then a :func:`measured` run, said in one line."""
    load(agent.ports[protocol], protocol, clients, 2.0)
    run = measured(agent, protocol, clients, seconds)
    console.print(
        f"{protocol}, {clients} clients, pinned: {run.load.rps:,.0f} req/s, "
        f"p99 {run.load.percentile(99):.1f} ms; {run.cpu_line()}"
    )
    return run


def load(port: int, protocol: str, clients: int, seconds: float, **kw: Any) -> LoadResult:
    spec = LoadSpec(
        host="127.0.0.1", port=port, protocol=protocol, model="mnist", clients=clients,
        duration=seconds, input_shape=(1, 1, 28, 28), **kw,
    )  # fmt: skip
    return run_load(spec)


async def _hold_idle(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, count, 500):
        opened = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(500, count - start)))
        )
        writers.extend(w for _, w in opened)
    return writers


def open_idle(port: int, count: int) -> tuple[asyncio.AbstractEventLoop, list[Any]]:
    """``count`` idle connections to ``port``, held by this process until closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 4096)), hard))
    loop = asyncio.new_event_loop()
    return loop, loop.run_until_complete(_hold_idle(port, count))


def agent_env(threads: int | None) -> dict[str, str]:
    env = {"EDGEWIRE_MAX_BATCH_SIZE": "32", "EDGEWIRE_MAX_QUEUE_DELAY_MS": "2"}
    if threads:
        env |= {"EDGEWIRE_INTRA_OP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few minutes")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument(
        "--http-clients", default="8,64", help="client counts for the HTTP comparison"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    seconds = 6.0 if args.quick else 20.0
    http_clients = [int(c) for c in args.http_clients.split(",")]
    cores = roles()
    tmp = Path(tempfile.mkdtemp(prefix="edgewire-serve-"))
    f: dict[str, Any] = {}
    try:
        model = tmp / "mnist_cnn.onnx"
        make_model(model, samples=1000 if args.quick else 5000)
        with pinned(cores.agent):
            f["pinned_ceiling_sps"], f["pinned_ceiling_batch"], rates = ceiling(
                model, seconds=1.0 if args.quick else 3.0, threads=1
            )
        console.print(
            f"[bold]serve[/]: {cores.describe()}; ceiling, 1 thread on the agent's core: "
            f"{f['pinned_ceiling_sps']:,.0f} samples/s at batch {f['pinned_ceiling_batch']} "
            f"({ {b: round(r) for b, r in rates.items()} })"
        )
        burst_tool = Burst(tmp)
        store = ModelStore(tmp / "models")
        store.add("mnist", model)
        store.set_alias("mnist", "production", 1)
        with pinned(cores.load):
            pinned_runs(args, f, model, cores, burst_tool, seconds, http_clients, tmp)
        unpinned_runs(args, f, model, seconds, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = report(args, f, cores, burst_tool.kind, seconds, http_clients)
    print(json_line(figures))
    return 0


def _copy_store(tmp: Path, name: str) -> Path:
    data_dir = tmp / name
    shutil.copytree(tmp / "models", data_dir / "models")
    return data_dir


def pinned_runs(
    args: argparse.Namespace,
    f: dict[str, Any],
    model: Path,
    cores: Roles,
    burst_tool: Burst,
    seconds: float,
    http_clients: list[int],
    tmp: Path,
) -> None:
    """Everything measured with the roles on their own cores (this process: the load's)."""
    burst_timeout = 30.0 if args.quick else 120.0
    # The seed server drops SYNs beyond its backlog of 5; clients retry for minutes.
    # Those still unanswered at the timeout count as failed, and the seed's time is
    # then a lower bound (so the speed-up is too).
    f["seed_burst_s"], f["seed_burst_ok"] = seed_burst(
        model, burst_tool, args.burst, burst_timeout, cores.agent
    )
    console.print(f"seed server copy, {args.burst}-client burst: {f['seed_burst_s']:.2f} s")
    env = agent_env(1)
    # Native and HTTP: an agent without the MnistProt port, so that the fd plan gives
    # the native port room for the idle connections as well (agent/fdlimits.py).
    with SpawnedAgent(_copy_store(tmp, "pinned"), env=env, cpus=cores.agent) as agent:
        f["native_pinned"] = warm_then_measure(agent, "native", args.clients, seconds)
        f["rss_before_idle_mb"] = process_rss_mb(agent.proc.pid)
        loop, idle = open_idle(agent.ports["native"], args.idle)
        try:
            time.sleep(1.0)
            f["idle_rss_mb"] = process_rss_mb(agent.proc.pid)
            with_idle = measured(agent, "native", args.clients, seconds)
            f["idle10k_rss_mb"] = process_rss_mb(agent.proc.pid)
        finally:
            for writer in idle:
                writer.close()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
        f["native_idle"] = with_idle
        console.print(
            f"native, {args.clients} clients + {args.idle:,} idle: {with_idle.load.rps:,.0f} req/s, "
            f"p99 {with_idle.load.percentile(99):.1f} ms; agent RSS {f['idle10k_rss_mb']:.0f} MB"
        )
        for c in http_clients:
            for fmt in ("json", "binary"):
                run = measured(agent, "http", c, seconds, http_format=fmt)
                f[f"http_{fmt}_{c}"] = run
                console.print(
                    f"HTTP KServe v2 {fmt}, {c} clients: {run.load.rps:,.0f} req/s, "
                    f"p99 {run.load.percentile(99):.1f} ms; {run.cpu_line()}"
                )
    with SpawnedAgent(
        _copy_store(tmp, "pinned-mnistprot"), "--legacy-mnistprot-port", "0", env=env,
        cpus=cores.agent,
    ) as agent:  # fmt: skip
        f["edgewire_burst_s"], f["edgewire_burst_ok"] = burst_tool(
            agent.ports["mnistprot"], args.burst, burst_timeout
        )
        console.print(
            f"edgewire MnistProt, {args.burst}-client burst: {f['edgewire_burst_s']:.3f} s"
        )
        f["mnistprot_pinned"] = warm_then_measure(agent, "mnistprot", args.clients, seconds)
    for name in http_peers.PEERS:
        if not http_peers.available(name):
            console.print(f"{name} is not installed (pip install -e '.[peers]'): skipped")
            continue
        port = http_peers.free_port()
        with http_peers.peer_server(
            name, model, port, max_batch=32, delay_s=0.002, cpus=cores.agent
        ) as peer:
            for c in http_clients:
                cpu0 = peer.cpu_s()
                result = load(port, "http", c, seconds, http_format="litserve")
                cpu_us = (peer.cpu_s() - cpu0) / max(result.ok, 1) * 1e6
                f[f"{name}_{c}"] = (result, cpu_us)
                console.print(
                    f"{name}, {c} clients: {result.rps:,.0f} req/s, p99 "
                    f"{result.percentile(99):.1f} ms, errors {result.errors}; server {cpu_us:.0f} µs/req"
                )


def unpinned_runs(
    args: argparse.Namespace, f: dict[str, Any], model: Path, seconds: float, tmp: Path
) -> None:
    """Today's rows: every role on every core, ONNX Runtime's default threads."""
    f["ceiling_sps"], f["ceiling_batch"], _ = ceiling(model, seconds=1.0 if args.quick else 3.0)
    with SpawnedAgent(
        _copy_store(tmp, "unpinned"), "--legacy-mnistprot-port", "0", env=agent_env(None)
    ) as agent:
        for protocol in ("native", "mnistprot"):
            run = measured(agent, protocol, args.clients, seconds)
            f[f"{protocol}_unpinned"] = run
            console.print(
                f"{protocol}, {args.clients} clients, unpinned: {run.load.rps:,.0f} req/s, "
                f"p99 {run.load.percentile(99):.1f} ms; {run.cpu_line()}"
            )


def _best_peer(f: dict[str, Any], clients: int) -> tuple[str, LoadResult] | None:
    found = [(n, f[f"{n}_{clients}"][0]) for n in http_peers.PEERS if f"{n}_{clients}" in f]
    return max(found, key=lambda item: item[1].rps) if found else None


def report(
    args: argparse.Namespace,
    f: dict[str, Any],
    cores: Roles,
    burst_kind: str,
    seconds: float,
    http_clients: list[int],
) -> dict[str, Any]:
    native, mnistprot, idle = f["native_pinned"], f["mnistprot_pinned"], f["native_idle"]
    un_native, un_mnistprot = f["native_unpinned"], f["mnistprot_unpinned"]
    pc, uc = f["pinned_ceiling_sps"], f["ceiling_sps"]
    figures: dict[str, Any] = {
        # Unpinned, as before.
        "ceiling_sps": uc,
        "ceiling_batch": f["ceiling_batch"],
        "native_1000_rps": un_native.load.rps,
        "native_1000_p99_ms": un_native.load.percentile(99),
        "native_1000_errors": un_native.load.errors,
        "mnistprot_1000_rps": un_mnistprot.load.rps,
        "mnistprot_1000_p99_ms": un_mnistprot.load.percentile(99),
        "mnistprot_1000_errors": un_mnistprot.load.errors,
        "native_vs_ceiling": un_native.load.rps / uc,
        "native_agent_cpu_us_per_request": un_native.agent_us,
        "native_client_cpu_us_per_request": un_native.loadgen_us,
        "mnistprot_vs_ceiling": un_mnistprot.load.rps / uc,
        # Pinned: the targets.
        "pinned_ceiling_sps": pc,
        "pinned_ceiling_batch": f["pinned_ceiling_batch"],
        "native_1000_pinned_rps": native.load.rps,
        "native_1000_pinned_p99_ms": native.load.percentile(99),
        "native_1000_pinned_errors": native.load.errors,
        "native_1000_pinned_vs_ceiling": native.load.rps / pc,
        "mnistprot_1000_pinned_rps": mnistprot.load.rps,
        "mnistprot_1000_pinned_p99_ms": mnistprot.load.percentile(99),
        "mnistprot_1000_pinned_errors": mnistprot.load.errors,
        "mnistprot_1000_pinned_vs_ceiling": mnistprot.load.rps / pc,
        "agent_nonmodel_us_per_req": native.nonmodel_us,
        "agent_model_us_per_req": native.model_us,
        "mnistprot_agent_nonmodel_us_per_req": mnistprot.nonmodel_us,
        "native_loadgen_us_per_req": native.loadgen_us,
        "idle10k_rps": idle.load.rps,
        "idle10k_rps_ratio": idle.load.rps / native.load.rps if native.load.rps else 0.0,
        "idle10k_rss_mb": f["idle10k_rss_mb"],
        "rss_before_idle_mb": f["rss_before_idle_mb"],
        "seed_burst_s": f["seed_burst_s"],
        "seed_burst_ok": f["seed_burst_ok"],
        "edgewire_burst_s": f["edgewire_burst_s"],
        "edgewire_burst_ok": f["edgewire_burst_ok"],
        "burst_speedup": f["seed_burst_s"] / f["edgewire_burst_s"],
    }
    c_main = max(http_clients)
    for c in http_clients:
        for fmt in ("json", "binary"):
            run = f[f"http_{fmt}_{c}"]
            figures[f"http_{fmt}_{c}_rps"] = run.load.rps
            figures[f"http_{fmt}_{c}_p99_ms"] = run.load.percentile(99)
        for name in http_peers.PEERS:
            if f"{name}_{c}" in f:
                result, _ = f[f"{name}_{c}"]
                figures[f"{name}_{c}_rps"] = result.rps
                figures[f"{name}_{c}_p99_ms"] = result.percentile(99)
                figures[f"{name}_{c}_errors"] = result.errors
    # The old keys: HTTP JSON at the largest client count, against LitServe there.
    http_main = f[f"http_json_{c_main}"].load
    figures["http_rps"], figures["http_p99_ms"] = http_main.rps, http_main.percentile(99)
    if f"litserve_{c_main}" in f:
        lit = f[f"litserve_{c_main}"][0]
        figures["litserve_rps"], figures["litserve_p99_ms"] = lit.rps, lit.percentile(99)
        figures["http_vs_litserve"] = http_main.rps / lit.rps if lit.rps else float("inf")
    # The target: at each client count, against the better peer there; the worst of those.
    vs: dict[str, list[float]] = {"json": [], "binary": []}
    p99_ok = True
    for c in http_clients:
        best = _best_peer(f, c)
        if best is None:
            continue
        for fmt in vs:
            run = f[f"http_{fmt}_{c}"].load
            vs[fmt].append(run.rps / best[1].rps if best[1].rps else float("inf"))
            p99_ok = p99_ok and run.percentile(99) <= best[1].percentile(99)
    figures["http_vs_best_peer"] = min(vs["json"]) if vs["json"] else None
    figures["http_binary_vs_best_peer"] = min(vs["binary"]) if vs["binary"] else None
    figures["http_p99_at_or_below_peers"] = p99_ok if vs["json"] else None

    header = ["run", "req/s", "p99 ms", "errors", "ratio", "target"]
    rows = [
        [f"ONNX Runtime alone, 1 thread, agent's core, batch {f['pinned_ceiling_batch']} (ceiling)", f"{pc:,.0f}", "", "", "1.00", ""],
        [f"native, {args.clients} clients", f"{native.load.rps:,.0f}", f"{native.load.percentile(99):.1f}", str(native.load.errors), f"{native.load.rps / pc:.2f} of ceiling", "≥ 0.80"],
        [f"MnistProt, {args.clients} clients", f"{mnistprot.load.rps:,.0f}", f"{mnistprot.load.percentile(99):.1f}", str(mnistprot.load.errors), f"{mnistprot.load.rps / pc:.2f} of ceiling", "≥ 0.80"],
        [f"native, {args.clients} clients + {args.idle:,} idle", f"{idle.load.rps:,.0f}", f"{idle.load.percentile(99):.1f}", str(idle.load.errors), f"{figures['idle10k_rps_ratio']:.2f} of without", "≥ 0.90; RSS ≤ 150 MB"],
        [f"seed server copy, {args.burst}-client burst", f"{f['seed_burst_s']:.2f} s total", "", str(args.burst - f["seed_burst_ok"]), "1.00", ""],
        [f"MnistProt, {args.burst}-client burst", f"{f['edgewire_burst_s']:.3f} s total", "", str(args.burst - f["edgewire_burst_ok"]), f"{figures['burst_speedup']:.0f}× faster", "≥ 50×"],
    ]  # fmt: skip
    for c in http_clients:
        best = _best_peer(f, c)
        for fmt in ("json", "binary"):
            run = f[f"http_{fmt}_{c}"].load
            ratio = f"{run.rps / best[1].rps:.2f}× {best[0]}" if best and best[1].rps else ""
            rows.append([f"HTTP KServe v2 {fmt}, {c} clients", f"{run.rps:,.0f}", f"{run.percentile(99):.1f}", str(run.errors), ratio, "≥ 1.5× better peer, ≤ its p99"])  # fmt: skip
        for name in http_peers.PEERS:
            if f"{name}_{c}" in f:
                result, _ = f[f"{name}_{c}"]
                rows.append([f"{name}, same model and batching, {c} clients", f"{result.rps:,.0f}", f"{result.percentile(99):.1f}", str(result.errors), "", ""])  # fmt: skip
    rows += [
        [f"unpinned: ONNX Runtime alone, default threads, batch {f['ceiling_batch']}", f"{uc:,.0f}", "", "", "1.00", ""],
        [f"unpinned: native, {args.clients} clients", f"{un_native.load.rps:,.0f}", f"{un_native.load.percentile(99):.1f}", str(un_native.load.errors), f"{un_native.load.rps / uc:.2f} of ceiling", ""],
        [f"unpinned: MnistProt, {args.clients} clients", f"{un_mnistprot.load.rps:,.0f}", f"{un_mnistprot.load.percentile(99):.1f}", str(un_mnistprot.load.errors), f"{un_mnistprot.load.rps / uc:.2f} of ceiling", ""],
    ]  # fmt: skip
    print_table(console, "serving", header, rows)

    cpu_header = [
        "run",
        "agent µs/req",
        "model µs/req",
        "other µs/req",
        "load generator µs/req",
        "mean batch",
    ]
    cpu_runs = [
        (f"native, {args.clients} clients", native),
        (f"MnistProt, {args.clients} clients", mnistprot),
        (f"native, {args.clients} clients + {args.idle:,} idle", idle),
        *((f"HTTP {fmt}, {c} clients", f[f"http_{fmt}_{c}"]) for c in http_clients for fmt in ("json", "binary")),
        (f"unpinned: native, {args.clients} clients", un_native),
        (f"unpinned: MnistProt, {args.clients} clients", un_mnistprot),
    ]  # fmt: skip
    # Unpinned, ONNX Runtime computes in a pool of threads whose CPU the model call's
    # thread clock does not see: only the agent's total is meaningful there.
    cpu_rows = [
        [name, f"{r.agent_us:.0f}",
         "n/a" if name.startswith("unpinned") else f"{r.model_us:.0f}",
         "n/a" if name.startswith("unpinned") else f"{r.nonmodel_us:.0f}",
         f"{r.loadgen_us:.0f}", f"{r.mean_batch:.1f}"]
        for name, r in cpu_runs
    ]  # fmt: skip
    print_table(console, "CPU per request", cpu_header, cpu_rows)
    verdicts = {
        "native 1,000 clients ≥ 0.80 of the ceiling": figures["native_1000_pinned_vs_ceiling"] >= 0.8,
        "MnistProt 1,000 clients ≥ 0.80 of the ceiling": figures["mnistprot_1000_pinned_vs_ceiling"] >= 0.8,
        "agent's non-model CPU ≤ 30 µs/request": figures["agent_nonmodel_us_per_req"] <= 30,
        "10,000 idle: throughput within 10%": figures["idle10k_rps_ratio"] >= 0.9,
        "10,000 idle: agent RSS ≤ 150 MB": figures["idle10k_rss_mb"] <= 150,
        "burst ≥ 50× the seed copy": figures["burst_speedup"] >= 50,
        "HTTP ≥ 1.5× the better peer at ≤ its p99": bool(
            figures["http_vs_best_peer"] is not None
            and min(figures["http_vs_best_peer"], figures["http_binary_vs_best_peer"]) >= 1.5
            and figures["http_p99_at_or_below_peers"]
        ),
    }  # fmt: skip
    if not args.no_write:
        command = "python benchmarks/serve.py" + (" --quick" if args.quick else "")
        peers = [n for n in http_peers.PEERS if any(f"{n}_{c}" in f for c in http_clients)]
        body = (
            "## Serving (`benchmarks/serve.py`)\n\n"
            f"Command: `{command}` (after `pip install -e '.[peers]'` for the HTTP peers; "
            f"`make bench` does both). Model: the demo's MNIST CNN trained on real digits, ONNX, CPU. "
            f"Roles: {cores.describe()}: the agent and its one model thread "
            "(`EDGEWIRE_INTRA_OP_THREADS=1`) on its own core, as a Jetson is its own machine; "
            "the load generator, the burst tool and the idle connections on the other, as the "
            "microcontrollers are. The ceiling is ONNX Runtime alone with one thread on the agent's core. "
            f"Agent batching: max batch 32, max queue delay 2 ms. {seconds:g} s per load run; bursts by "
            f"the {burst_kind}; HTTP peers ({', '.join(peers) or 'none installed'}) pinned like the "
            "agent, one model thread, max batch 32, LitServe's batch timeout 2 ms (BentoML's "
            "max latency is a budget past which it answers 503: it gets 60 s, see "
            "`benchmarks/http_peers.py`). The rows marked unpinned run every role on both cores "
            "with ONNX Runtime's default threads, as this benchmark did before.\n\n"
            + markdown_table(header, rows)
            + "\n\nCPU per answered request, from the agent's own CPU clock (`/proc`) and the "
            'model calls\' thread clock (`edgewire_model_cpu_seconds_total`); "other" is '
            "everything else the agent does for a request (sockets, decoding, checks, batching, "
            "answers):\n\n"
            + markdown_table(cpu_header, cpu_rows)
            + f"\n\nAgent resident memory: {f['rss_before_idle_mb']:.0f} MB after the first "
            f"native run, {f['idle_rss_mb']:.0f} MB with {args.idle:,} idle connections, "
            f"{f['idle10k_rss_mb']:.0f} MB after the run beside them.\n\nTargets: "
            + "; ".join(
                f"{name}: **{'met' if ok else 'not met'}**" for name, ok in verdicts.items()
            )
            + ".\n"
        )
        write_section(ROOT / "docs" / "benchmarks.md", "serve", body)
    return figures


if __name__ == "__main__":
    with sigterm_as_exit():  # SIGTERM runs the clean-ups, as Ctrl-C does
        sys.exit(main())
