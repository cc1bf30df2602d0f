"""Serving throughput: compute ceiling, seed server copy, 1,000 clients, HTTP vs LitServe.

In one run, on one ONNX model (the demo's MNIST CNN, trained here on real
digits) and this machine:

1. the model's compute ceiling: ONNX Runtime samples/s at its best batch size,
   no network;
2. the seed's stress pattern (500 one-shot clients at once) against a faithful
   copy of the seed's server (single-threaded, backlog 5, global lock) and
   against edgewire's MnistProt port;
3. edgewire with 1,000 persistent clients, native and MnistProt;
4. HTTP inference (KServe v2 JSON) against LitServe serving the same ONNX model
   with the same batching settings (JSON bodies on both sides).

Usage: python benchmarks/serve.py [--quick]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from rich.console import Console

from edgewire.bench.loadgen import LoadResult, LoadSpec, run_load
from edgewire.bench.procs import process_group, sigterm_as_exit
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


def ceiling(path: Path, *, seconds: float) -> tuple[float, int, dict[int, float]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rates: dict[int, float] = {}
    for batch in (1, 4, 8, 16, 32, 64):
        x = np.random.default_rng(0).random((batch, 1, 28, 28), dtype=np.float32)
        session.run(None, {name: x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {name: x})
            n += batch
        rates[batch] = n / (time.perf_counter() - start)
    best = max(rates, key=lambda b: rates[b])
    return rates[best], best, rates


def _seed_server_process(model: str, ports: Any, stop: Any) -> None:
    from edgewire.bench.seed_server import SeedServer

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
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


def seed_burst(model: Path, burst: Burst, clients: int, timeout: float) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_seed_server_process, args=(str(model), ports, stop), daemon=True)
    proc.start()
    try:
        return burst(ports.get(timeout=60), clients, timeout)
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


@contextlib.contextmanager
def litserve_server(model: Path, port: int, max_batch: int, delay_s: float) -> Iterator[None]:
    """LitServe on ``port`` until the block ends; then it and its workers are stopped
    (its own process group: stopping only the server left the workers running)."""
    with process_group(
        [sys.executable, str(ROOT / "benchmarks" / "litserve_app.py"), str(model), str(port),
         str(max_batch), str(delay_s)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as proc:  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"LitServe did not start (exit code {proc.poll()})")
        yield


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, protocol: str, clients: int, seconds: float, **kw: Any) -> LoadResult:
    spec = LoadSpec(
        host="127.0.0.1", port=port, protocol=protocol, model="mnist", clients=clients,
        duration=seconds, input_shape=(1, 1, 28, 28), **kw,
    )  # fmt: skip
    return run_load(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of a couple of minutes")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--http-clients", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    seconds = 6.0 if args.quick else 20.0
    tmp = Path(tempfile.mkdtemp(prefix="edgewire-serve-"))
    figures: dict[str, Any] = {}
    try:
        model = tmp / "mnist_cnn.onnx"
        make_model(model, samples=1000 if args.quick else 5000)
        ceiling_sps, best_batch, rates = ceiling(model, seconds=1.0 if args.quick else 3.0)
        console.print(
            f"compute ceiling: {ceiling_sps:,.0f} samples/s at batch {best_batch} ({ {b: round(r) for b, r in rates.items()} })"
        )
        max_batch = max(best_batch, 8)
        delay_ms = 2.0

        burst_tool = Burst(tmp)
        # The seed server drops SYNs beyond its backlog of 5; clients retry for
        # minutes. Those still unanswered at the timeout count as failed, and the
        # seed's time is then a lower bound (so the speed-up is too).
        burst_timeout = 30.0 if args.quick else 120.0
        seed_s, seed_ok = seed_burst(model, burst_tool, args.burst, burst_timeout)
        console.print(
            f"seed server copy, {args.burst}-client burst: {seed_s:.2f} s ({seed_ok} answered)"
        )

        data_dir = tmp / "agent"
        store = ModelStore(data_dir / "models")
        store.add("mnist", model)
        store.set_alias("mnist", "production", 1)
        env = {
            "EDGEWIRE_MAX_BATCH_SIZE": str(max_batch),
            "EDGEWIRE_MAX_QUEUE_DELAY_MS": str(delay_ms),
        }
        with SpawnedAgent(data_dir, "--legacy-mnistprot-port", "0", env=env) as agent:
            burst_s, burst_ok = burst_tool(agent.ports["mnistprot"], args.burst, burst_timeout)
            console.print(
                f"edgewire MnistProt, {args.burst}-client burst: {burst_s:.3f} s ({burst_ok} answered)"
            )
            cpu0 = process_cpu_s(agent.proc.pid)
            native = load(agent.ports["native"], "native", args.clients, seconds)
            agent_cpu_us = (process_cpu_s(agent.proc.pid) - cpu0) / max(native.ok, 1) * 1e6
            client_cpu_us = native.client_cpu_s / max(native.ok, 1) * 1e6
            console.print(
                f"CPU per native request: agent {agent_cpu_us:.0f} µs (model included), "
                f"clients {client_cpu_us:.0f} µs; model alone {1e6 / ceiling_sps * 2:.0f} µs of 2 cores"
            )
            console.print(
                f"native, {args.clients} clients: {native.rps:,.0f} req/s, p99 {native.percentile(99):.1f} ms"
            )
            mnistprot = load(agent.ports["mnistprot"], "mnistprot", args.clients, seconds)
            console.print(
                f"MnistProt, {args.clients} clients: {mnistprot.rps:,.0f} req/s, p99 {mnistprot.percentile(99):.1f} ms"
            )
            http = load(agent.ports["http"], "http", args.http_clients, seconds, http_format="json")
            console.print(
                f"HTTP (KServe v2 JSON), {args.http_clients} clients: {http.rps:,.0f} req/s, p99 {http.percentile(99):.1f} ms"
            )
        port = free_port()
        with litserve_server(model, port, max_batch, delay_ms / 1000):
            litserve = load(port, "http", args.http_clients, seconds, http_format="litserve")
        console.print(
            f"LitServe, {args.http_clients} clients: {litserve.rps:,.0f} req/s, p99 {litserve.percentile(99):.1f} ms"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    figures = {
        "ceiling_sps": ceiling_sps,
        "ceiling_batch": best_batch,
        "native_1000_rps": native.rps,
        "native_1000_p99_ms": native.percentile(99),
        "native_1000_errors": native.errors,
        "mnistprot_1000_rps": mnistprot.rps,
        "mnistprot_1000_p99_ms": mnistprot.percentile(99),
        "mnistprot_1000_errors": mnistprot.errors,
        "native_vs_ceiling": native.rps / ceiling_sps,
        "native_agent_cpu_us_per_request": agent_cpu_us,
        "native_client_cpu_us_per_request": client_cpu_us,
        "mnistprot_vs_ceiling": mnistprot.rps / ceiling_sps,
        "seed_burst_s": seed_s,
        "seed_burst_ok": seed_ok,
        "edgewire_burst_s": burst_s,
        "edgewire_burst_ok": burst_ok,
        "burst_speedup": seed_s / burst_s,
        "http_rps": http.rps,
        "http_p99_ms": http.percentile(99),
        "litserve_rps": litserve.rps,
        "litserve_p99_ms": litserve.percentile(99),
        "http_vs_litserve": http.rps / litserve.rps if litserve.rps else float("inf"),
    }
    header = ["run", "req/s (samples/s)", "p99 ms", "errors", "ratio", "target"]
    rows = [
        [f"ONNX Runtime alone, batch {best_batch} (ceiling)", f"{ceiling_sps:,.0f}", "", "", "1.00", ""],
        [f"edgewire native, {args.clients} clients", f"{native.rps:,.0f}", f"{native.percentile(99):.1f}", str(native.errors), f"{figures['native_vs_ceiling']:.2f} of ceiling", "≥ 0.80"],
        [f"edgewire MnistProt, {args.clients} clients", f"{mnistprot.rps:,.0f}", f"{mnistprot.percentile(99):.1f}", str(mnistprot.errors), f"{figures['mnistprot_vs_ceiling']:.2f} of ceiling", ""],
        [f"seed server copy, {args.burst}-client burst", f"{seed_s:.2f} s total", "", str(args.burst - seed_ok), "1.00", ""],
        [f"edgewire MnistProt, {args.burst}-client burst", f"{burst_s:.3f} s total", "", str(args.burst - burst_ok), f"{figures['burst_speedup']:.0f}× faster", "≥ 50×"],
        [f"edgewire HTTP (KServe v2 JSON), {args.http_clients} clients", f"{http.rps:,.0f}", f"{http.percentile(99):.1f}", str(http.errors), f"{figures['http_vs_litserve']:.2f}× LitServe", "≥ 1.5× at ≤ p99"],
        [f"LitServe, same model and batching, {args.http_clients} clients", f"{litserve.rps:,.0f}", f"{litserve.percentile(99):.1f}", str(litserve.errors), "1.00", ""],
    ]  # fmt: skip
    print_table(console, "serving", header, rows)
    verdicts = {
        "1,000 clients ≥ 80% of the compute ceiling": figures["native_vs_ceiling"] >= 0.8,
        "burst ≥ 50× faster than the seed copy": figures["burst_speedup"] >= 50,
        "HTTP ≥ 1.5× LitServe at equal or better p99": figures["http_vs_litserve"] >= 1.5
        and figures["http_p99_ms"] <= figures["litserve_p99_ms"],
    }
    if not args.no_write:
        command = "python benchmarks/serve.py" + (" --quick" if args.quick else "")
        body = (
            "## Serving (`benchmarks/serve.py`)\n\n"
            f"Command: `{command}` (model: the demo's MNIST CNN trained on real digits, ONNX, CPU; "
            f"agent batching: max batch {max_batch}, max queue delay {delay_ms} ms; load from "
            f"`edgewire.bench.loadgen` in separate processes on the same 2 cores; {seconds:g} s per load run; "
            f"bursts by the {burst_tool.kind}).\n\n"
            + markdown_table(header, rows)
            + f"\n\nCPU per native request at {args.clients} clients: agent {agent_cpu_us:.0f} µs (model call included), "
            f"load generator {client_cpu_us:.0f} µs; the model alone needs {2e6 / ceiling_sps:.0f} µs of CPU per sample "
            "at its best batch (2 cores busy).\n\nTargets: "
            + "; ".join(
                f"{name}: **{'met' if ok else 'not met'}**" for name, ok in verdicts.items()
            )
            + ".\n"
        )
        write_section(ROOT / "docs" / "benchmarks.md", "serve", body)
    print(json_line(figures))
    return 0


if __name__ == "__main__":
    with sigterm_as_exit():  # SIGTERM runs the clean-ups, as Ctrl-C does
        sys.exit(main())
