"""How to batch a TFLite model whose batch size is fixed at 1 (the seed's MNIST model).

Two strategies of the LiteRT backend, on the same real digits, one LiteRT
thread, pinned to one core:

- ``rows``: one batch-1 interpreter, invoked once per row of the batch;
- ``resize``: one interpreter per batch size, its input resized to the batch.

The baseline is LiteRT called directly, one digit per invoke, in the same run;
figures are samples/s and their ratio to that baseline. The backend picks
``resize`` by default when it is the faster at the agent's batch size.

Usage: python benchmarks/tflite_batching.py [--quick] [--no-write]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgewire.bench.report import json_line, markdown_table, print_table, write_section
from edgewire.serve.model import RuntimeOptions
from edgewire.serve.runtime import load_model
from edgewire.serve.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT.parent / "shared" / "models" / "seed_mnist.tflite"
DOC = ROOT / "docs" / "benchmarks.md"
console = Console(width=110)


def rate(call: Any, rows: int, seconds: float) -> float:
    for _ in range(5):
        call()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        calls += 1
    return calls * rows / (time.perf_counter() - start)


def direct_baseline(x: np.ndarray, seconds: float) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(SEED), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def one() -> None:
        interpreter.set_tensor(inp, x[:1])
        interpreter.invoke()
        interpreter.get_tensor(out)

    return rate(one, 1, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per figure instead of 4 s")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 4.0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})  # the agent's core, as on a board with one free core

    from edgewire.data.datasets import load_dataset

    data = load_dataset("mnist5k", limit=64)
    x = (data.x.astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)[:32]
    baseline = direct_baseline(x, seconds)
    figures: dict[str, Any] = {"direct_batch1_sps": baseline}
    rows_out = [["LiteRT direct, 1 digit per invoke (baseline)", "1", f"{baseline:,.0f}", "1.00"]]
    with tempfile.TemporaryDirectory() as tmp:
        store = ModelStore(Path(tmp))
        version = store.add("seed", SEED)
        for mode in ("rows", "resize"):
            options = RuntimeOptions(
                intra_op_threads=1,
                max_batch_size=32,
                warmup_batch_sizes=(1, 8, 32),
                fixed_batch=mode,
            )
            loaded = load_model(version, options)
            for batch in (1, 8, 32):
                feed = {"conv2d_input": x[:batch]}
                sps = rate(functools.partial(loaded.run, feed), batch, seconds)
                figures[f"{mode}_b{batch}_sps"] = sps
                figures[f"{mode}_b{batch}_ratio"] = sps / baseline
                rows_out.append(
                    [
                        f"backend, fixed_batch={mode}",
                        str(batch),
                        f"{sps:,.0f}",
                        f"{sps / baseline:.2f}",
                    ]
                )
    best = max(("rows", "resize"), key=lambda m: figures[f"{m}_b32_sps"])
    figures["faster_at_b32"] = best
    header = ["strategy", "batch", "samples/s", "× direct"]
    print_table(console, "TFLite batching, seed_mnist.tflite, 1 thread, core 0", header, rows_out)
    console.print(f"faster at batch 32: {best}")
    if not args.no_write:
        body = (
            "## TFLite batching (`benchmarks/tflite_batching.py`)\n\n"
            "The seed's model fixes its batch at 1. Command: "
            "`python benchmarks/tflite_batching.py"
            + (" --quick" if args.quick else "")
            + "`\n\n"
            + markdown_table(header, rows_out)
            + f"\n\nFaster at batch 32: `{best}`."
        )
        write_section(DOC, "tflite_batching", body)
    print(json_line(figures))


if __name__ == "__main__":
    main()
