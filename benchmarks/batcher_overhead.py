"""Dynamic batcher overhead: requests/s through the batcher vs calling the model directly.

Two numpy "models" on one MNIST-sized row (784 float32): ``trivial`` (``2x + 1``,
almost no compute, so the figures are the batcher's own cost) and ``mlp``
(784→256→10, a small real model). For each, in one run:

1. direct, one request per call (no batching, no event loop);
2. the ceiling: direct calls at ``--batch-size`` rows, in samples/s;
3. the batcher with 1, 100 and 1000 concurrent closed-loop submitters of one
   row each (and 1 with ``max_queue_delay_ms=0``), the model on a dedicated
   thread as the agent runs it.

Usage: python benchmarks/batcher_overhead.py [--quick] [--batch-size 32] [--no-uvloop]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.console import Console

from edgewire.bench.report import json_line, print_table
from edgewire.serve.batcher import Batcher, BatchPolicy

Arrays = dict[str, np.ndarray[Any, Any]]
Model = Callable[[Arrays], Arrays]
console = Console(width=110)


def make_models() -> dict[str, Model]:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((784, 256), dtype=np.float32) * 0.05
    w2 = rng.standard_normal((256, 10), dtype=np.float32) * 0.05

    def trivial(d: Arrays) -> Arrays:
        return {"y": d["x"] * 2 + 1}

    def mlp(d: Arrays) -> Arrays:
        return {"y": np.maximum(d["x"] @ w1, 0) @ w2}

    return {"trivial": trivial, "mlp": mlp}


def direct_rate(model: Model, rows: int, seconds: float) -> float:
    """Samples/s calling the model in a loop with ``rows`` rows per call."""
    x = {"x": np.ones((rows, 784), dtype=np.float32)}
    for _ in range(20):
        model(x)
    calls, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        for _ in range(50):
            model(x)
        calls += 50
        now = time.perf_counter()
        if now >= end:
            return calls * rows / (now - start)


async def batcher_run(
    model: Model, submitters: int, seconds: float, policy: BatchPolicy
) -> dict[str, float]:
    """Requests/s, latency and batch size with ``submitters`` closed-loop callers."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model") as pool:
        batcher = Batcher(model, policy=policy, executor=pool, name="bench")
        await batcher.start()
        latencies: list[float] = []
        stop_at = 0.0

        async def submitter() -> None:
            x = {"x": np.ones((1, 784), dtype=np.float32)}
            clock = time.perf_counter
            while True:
                start = clock()
                await batcher.submit(x)
                now = clock()
                latencies.append(now - start)
                if now >= stop_at:
                    return

        stop_at = time.perf_counter() + seconds * 0.2  # warm-up
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        latencies.clear()
        before = batcher.stats
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        elapsed = time.perf_counter() - start
        after = batcher.stats
        await batcher.stop()
    batches = after["batches"] - before["batches"]
    lat = np.array(latencies) * 1000.0
    return {
        "rps": len(latencies) / elapsed,
        "mean_batch": (after["rows"] - before["rows"]) / batches if batches else 0.0,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about half a minute")
    parser.add_argument("--batch-size", type=int, default=32, help="max_batch_size and ceiling")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="max_queue_delay_ms")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    parser.add_argument(
        "--blas-threads", type=int, default=1, help="BLAS threads of the mlp model (default 1)"
    )
    args = parser.parse_args(argv)
    try:
        # The agent runs a model on one dedicated thread; a multi-threaded BLAS
        # would also fight the event loop for this machine's two cores.
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(args.blas_threads)
    except ImportError:
        pass
    seconds = 1.0 if args.quick else 4.0
    policy = BatchPolicy(max_batch_size=args.batch_size, max_queue_delay_ms=args.delay_ms)

    loop_name = "asyncio"
    runner: Callable[[Any], Any] = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            runner, loop_name = uvloop.run, "uvloop"
        except ImportError:
            pass

    figures: dict[str, Any] = {"loop": loop_name, "batch_size": args.batch_size}
    figures["blas_threads"] = args.blas_threads
    rows: list[list[str]] = []
    for name, model in make_models().items():
        single = direct_rate(model, 1, seconds)
        ceiling = direct_rate(model, args.batch_size, seconds)
        figures[f"{name}_direct_rps"] = single
        figures[f"{name}_ceiling_sps"] = ceiling
        rows.append([name, "direct, 1 row/call", f"{single:,.0f}", "", "1", "", ""])
        rows.append(
            [name, f"direct, {args.batch_size}/call", f"{ceiling:,.0f}", "100%", "", "", ""]
        )
        no_delay = BatchPolicy(max_batch_size=args.batch_size, max_queue_delay_ms=0)
        runs = [("c1_nodelay", "c=1, delay 0", 1, no_delay)]
        runs += [(f"c{n}", f"c={n}", n, policy) for n in (1, 100, 1000)]
        for key, label, submitters, run_policy in runs:
            r = runner(batcher_run(model, submitters, seconds, run_policy))
            pct = 100.0 * r["rps"] / ceiling
            figures.update(
                {
                    f"{name}_{key}_rps": r["rps"],
                    f"{name}_{key}_pct_ceiling": pct,
                    f"{name}_{key}_mean_batch": r["mean_batch"],
                    f"{name}_{key}_p99_ms": r["p99_ms"],
                }
            )
            rows.append(
                [
                    name,
                    f"batcher, {label}",
                    f"{r['rps']:,.0f}",
                    f"{pct:.0f}%",
                    f"{r['mean_batch']:.1f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                ]
            )
        # Event-loop cost per request at full load, beyond the model's own compute.
        busy = figures[f"{name}_c1000_rps"]
        figures[f"{name}_overhead_us_per_req"] = max(0.0, 1e6 / busy - 1e6 / ceiling)

    header = ["model", "path", "req/s", "of ceiling", "batch", "p50 ms", "p99 ms"]
    print_table(console, f"batcher overhead ({loop_name}, 1 row per request)", header, rows)
    print(json_line(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
