"""``edgewire bench``: many concurrent clients against an agent; latency table, JSON, plot."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgewire.bench.loadgen import PROTOCOLS
from edgewire.cli.common import console
from edgewire.errors import ConfigError, ConnectError, DependencyMissing, RemoteError
from edgewire.ports import DEFAULT_HTTP_PORT, DEFAULT_NATIVE_PORT, parse_address, port_spec

#: Error kinds from the load generator that mean the agent could not be reached or went away.
_CONNECTION_KINDS = {
    "OSError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
    "BrokenPipeError", "TimeoutError", "IncompleteReadError", "gaierror",
}  # fmt: skip


def default_port(protocol: str) -> int:
    """The port ``--to`` means when it names none: the agent's, or the seed's for a legacy port."""
    if protocol == "native":
        return DEFAULT_NATIVE_PORT
    if protocol == "http":
        return DEFAULT_HTTP_PORT
    return port_spec(protocol).seed_port


def _check_protocol(value: str) -> str:
    if value not in PROTOCOLS:
        raise typer.BadParameter(f"{value!r} is not one of: {', '.join(PROTOCOLS)}")
    return value


_DEFAULT_PORTS = ", ".join(f"{p} {default_port(p)}" for p in PROTOCOLS)


def bench_command(
    to: str = typer.Option(
        "127.0.0.1",
        "--to",
        help=f"Agent HOST[:PORT] for the chosen protocol; the port defaults to {_DEFAULT_PORTS}.",
    ),
    protocol: str = typer.Option(
        "native", callback=_check_protocol, help=f"One of: {', '.join(PROTOCOLS)}."
    ),
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
    processes: int = typer.Option(
        0, min=0, show_default=False, help=r"Client processes \[default: one per core]."
    ),
    input_shape: str | None = typer.Option(
        None, help=r"Request shape, e.g. 1,1,28,28 \[default: asked from the agent]."
    ),
    http_format: str = typer.Option("binary", help="HTTP bodies: binary, json, or litserve."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    plot: Path | None = typer.Option(None, help="Write a PNG of latency against concurrency."),
    token: str | None = typer.Option(
        None,
        help=r"The agent's token (native: sent in each connection's hello) \[env: EDGEWIRE_TOKEN].",
    ),
) -> None:
    from edgewire.bench.loadgen import LoadSpec, run_load

    token = token or os.environ.get("EDGEWIRE_TOKEN") or None
    host, port = parse_address(to, default_port=default_port(protocol))
    try:
        levels = [int(c) for c in clients.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--clients takes numbers separated by commas, got {clients!r}") from None
    if requests is None and duration is None:
        requests = 100
    if plot is not None:
        check_plot_path(plot)
    shape = (
        _shape(input_shape) if input_shape else discover_shape(host, port, protocol, model, token)
    )
    rows: list[dict[str, Any]] = []
    for level in levels:
        spec = LoadSpec(
            host=host, port=port, protocol=protocol, model=model, clients=level,
            requests=requests, duration=duration, one_shot=one_shot, processes=processes,
            input_shape=shape, http_format=http_format, token=token,
        )  # fmt: skip
        if not as_json:
            console.print(f"{protocol}: {level} clients ...", highlight=False)
        rows.append(_finite(run_load(spec).summary()))
    if as_json:
        print(json.dumps(rows, allow_nan=False))
    else:
        console.print(
            results_table(
                rows, title=f"{protocol} on {host}:{port}" + (" (one-shot)" if one_shot else "")
            )
        )
    if plot is not None and any(r["ok"] for r in rows):
        plot_latency(rows, plot, title=f"edgewire {protocol}" + (" one-shot" if one_shot else ""))
    if not any(r["ok"] for r in rows) and any(r["errors"] for r in rows):
        raise all_failed_error(rows, protocol=protocol, host=host, port=port)


def check_plot_path(plot: Path) -> None:
    """Refuse a --plot path that cannot be written, before the benchmark runs."""
    folder = plot.parent if str(plot.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"--plot: folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--plot: folder {str(folder)!r} is not writable")
    if plot.is_dir():
        raise ConfigError(f"--plot: {str(plot)!r} is a folder; give a file name such as bench.png")
    if importlib.util.find_spec("matplotlib") is None:
        raise DependencyMissing(
            "--plot needs matplotlib; install it with: pip install 'edgewire[plot]'"
        )


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN figures (no request succeeded) as None, so that --json stays valid JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def all_failed_error(
    failed: list[dict[str, Any]], *, protocol: str, host: str, port: int
) -> ConnectError | RemoteError:
    """The error for levels where every request failed: connection trouble, or the agent said no."""
    kinds: dict[str, int] = {}
    for r in failed:
        for kind, n in (r.get("error_kinds") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    top = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:3])
    total = sum(r["errors"] for r in failed)
    message = f"all {total:,} requests failed against {protocol} on {host}:{port}" + (
        f" ({top})" if top else ""
    )
    if kinds and set(kinds) <= _CONNECTION_KINDS:
        return ConnectError(
            message + "; is the agent running and the address and --protocol right?"
        )
    return RemoteError(message + "; is the model served there (see `edgewire models`)?")


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--input-shape takes numbers separated by commas, got {text!r}"
        ) from None


def discover_shape(
    host: str, port: int, protocol: str, model: str, token: str | None = None
) -> tuple[int, ...]:
    """One row of the model's input, asked from the agent (unless the protocol fixes it)."""
    from edgewire.bench.loadgen import load_client

    fixed = load_client(protocol).input_shape
    if fixed is not None:
        return fixed
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
        async with await Client.connect(host, port, token=token) as client:
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
            *(_ms(r[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
        )  # fmt: skip
    return table


def _ms(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f}"


def plot_latency(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["clients"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        y = [math.nan if r[key] is None else r[key] for r in rows]
        ax.plot(x, y, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
