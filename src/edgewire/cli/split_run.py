"""``edgewire split run``: classify files through a split head on a device agent.

The device runs the head, sends the coded bottleneck to its tail's server and
answers with the tail's output; the table shows where each answer's time went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edgewire.cli.common import console, run
from edgewire.cli.infer import describe, load_input, served_model
from edgewire.errors import ConfigError, EdgewireError, RemoteError, error_for_code
from edgewire.ports import DEFAULT_NATIVE_PORT, parse_address
from edgewire.split.codec import TENSOR_CODERS

_TIMES = ("head_ms", "encode_ms", "transfer_ms", "tail_ms", "decode_ms", "total_ms")


def split_run_command(
    files: list[Path] = typer.Argument(
        ..., exists=True, dir_okay=False, help="Images, or .npy arrays of one input row."
    ),
    to: str = typer.Option(
        f"127.0.0.1:{DEFAULT_NATIVE_PORT}", "--to", help="The device agent, HOST:PORT (native)."
    ),
    model: str = typer.Option(..., "--model", help="The split head's name on the device."),
    fallback: str = typer.Option(
        "none",
        "--fallback",
        help="local: when the tail server is unreachable, the device's full model answers.",
    ),
    coder: str | None = typer.Option(
        None, "--coder", help="Override the head's coder: raw, zstd or rans."
    ),
    top: int = typer.Option(1, min=1, help="Classes to show per file."),
    token: str | None = typer.Option(
        None, help=r"The device agent's token \[env: EDGEWIRE_TOKEN]."
    ),
) -> None:
    """Print each file's class and the time its answer spent in head, encode, transfer,
    tail and decode, with the bytes that crossed to the server."""
    if fallback not in ("none", "local"):
        raise ConfigError(f"--fallback is 'none' or 'local', got {fallback!r}")
    if coder is not None and coder not in TENSOR_CODERS:
        raise ConfigError(f"unknown --coder {coder!r}; one of: {', '.join(TENSOR_CODERS)}")
    host, port = parse_address(to, default_port=DEFAULT_NATIVE_PORT)
    try:
        rows = run(_run(host, port, model, files, top, fallback=fallback, coder=coder, token=token))
    except RemoteError as exc:
        # The device's own reason as its local class, so the exit code says what to fix
        # (7: the tail server is unreachable; 11: no such model; ...).
        kind = error_for_code(exc.remote_code)
        if kind is EdgewireError:
            raise
        raise kind(exc.message.removesuffix(f" [{exc.remote_code}]")) from None
    table = Table(title=f"{model} split from {host}:{port}")
    for column in ("file", "class", "probability", *(t.removesuffix("_ms") + " ms" for t in _TIMES),
                   "bytes up"):  # fmt: skip
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    console.print(table)


async def _run(
    host: str,
    port: int,
    model: str,
    files: list[Path],
    top: int,
    *,
    fallback: str,
    coder: str | None,
    token: str | None,
) -> list[list[str]]:
    from edgewire.client.native import Client

    async with await Client.connect(host, port, token=token) as client:
        info, scale = await served_model(client, model)
        rows = []
        for path in files:
            x = load_input(path, info["inputs"][0], scale)
            answer = await client.infer(
                model, [x], fallback=fallback if fallback != "none" else None, coder=coder
            )
            split: dict[str, Any] = answer.split or {}
            if split.get("fallback"):
                times = ["-"] * (len(_TIMES) - 1) + [f"{split.get('total_ms', 0.0):.2f}"]
                label = f"local: {split['fallback']}"
            else:
                times = [f"{float(split.get(t, 0.0)):.2f}" for t in _TIMES]
                label = str(split.get("bytes_up", "-"))
            scores = next(iter(answer.outputs.values())).reshape(-1)
            name, probability, _ = describe(scores, info.get("labels"), top)
            rows.append([path.name, name, probability, *times, label])
        return rows
