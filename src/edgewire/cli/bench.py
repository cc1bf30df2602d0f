"""``edgewire bench``: many concurrent clients against an agent; latency table, JSON, plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgewire.cli.common import console, parse_address
from edgewire.errors import ConfigError


def bench_command(
    to: str = typer.Option(
        "127.0.0.1:7700", "--to", help="Agent HOST:PORT for the chosen protocol."
    ),
    protocol: str = typer.Option("native", help="native, mnistprot or http."),
    clients: str = typer.Option(
        "100", help="Concurrent clients; a comma list runs each level in turn."
    ),
    requests: int | None = typer.Option(None, min=1, help="Requests per client."),
    duration: float | None = typer.Option(
        None, min=0.1, help="Seconds to run instead of --requests."
    ),
    one_shot: bool = typer.Option(
        False, "--one-shot", help="One connection per request (the seed's stress pattern)."
    ),
    model: str = typer.Option("mnist", help="Model name (native and http)."),
    processes: int = typer.Option(0, min=0, help="Client processes [default: one per core]."),
    input_shape: str | None = typer.Option(
        None, help="Request shape, e.g. 1,1,28,28 [default: asked from the agent]."
    ),
    http_format: str = typer.Option("binary", help="HTTP bodies: binary, json, or litserve."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    plot: Path | None = typer.Option(None, help="Write a PNG of latency against concurrency."),
) -> None:
    from edgewire.bench.loadgen import LoadSpec, run_load

    host, port = parse_address(to, default_port=7700)
    try:
        levels = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--clients takes numbers separated by commas, got {clients!r}") from None
    if requests is None and duration is None:
        requests = 100
    shape = _shape(input_shape) if input_shape else discover_shape(host, port, protocol, model)
    rows: list[dict[str, Any]] = []
    for level in levels:
        spec = LoadSpec(
            host=host, port=port, protocol=protocol, model=model, clients=level,
            requests=requests, duration=duration, one_shot=one_shot, processes=processes,
            input_shape=shape, http_format=http_format,
        )  # fmt: skip
        if not as_json:
            console.print(f"{protocol}: {level} clients ...", highlight=False)
        rows.append(run_load(spec).summary())
    if as_json:
        print(json.dumps(rows))
    else:
        console.print(
            results_table(
                rows, title=f"{protocol} on {host}:{port}" + (" (one-shot)" if one_shot else "")
            )
        )
    if plot is not None:
        plot_latency(rows, plot, title=f"edgewire {protocol}" + (" one-shot" if one_shot else ""))


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--input-shape takes numbers separated by commas, got {text!r}"
        ) from None


def discover_shape(host: str, port: int, protocol: str, model: str) -> tuple[int, ...]:
    """One row of the model's input, asked from the agent (MnistProt is always 784 floats)."""
    if protocol == "mnistprot":
        return (1, 784)
    if protocol == "http":
        import httpx

        try:
            meta = httpx.get(f"http://{host}:{port}/v2/models/{model}", timeout=10).json()
            dims = meta["inputs"][0]["shape"]
        except (httpx.HTTPError, KeyError, ValueError, IndexError):
            return (1, 784)
        return (1, *[int(d) for d in dims[1:]])
    from edgewire.cli.common import run
    from edgewire.client.native import Client

    async def ask() -> tuple[int, ...]:
        async with await Client.connect(host, port) as client:
            models = (await client.hello()).get("models", [])
        info = next((m for m in models if m["name"] == model), None)
        if info is None:
            return (1, 784)
        return (1, *[int(d) for d in info["inputs"][0]["shape"][1:]])

    return run(ask())


def results_table(rows: list[dict[str, Any]], *, title: str) -> Table:
    table = Table(title=title)
    for column in ("clients", "ok", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["clients"]), f"{r['ok']:,}", f"{r['errors']:,}", f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
            f"{r['max_ms']:.2f}" if r["max_ms"] is not None else "-",
        )  # fmt: skip
    return table


def plot_latency(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["clients"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        ax.plot(x, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
