"""``edgewire deploy``, ``models`` and ``delete``: manage the models (ONNX, TFLite) of agents over HTTP."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from edgewire.cli.agent_http import auth_headers, check, send
from edgewire.cli.common import console
from edgewire.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    EdgewireError,
    ModelError,
    RemoteError,
    error_for_code,
)
from edgewire.ports import DEFAULT_HTTP_PORT, DEFAULT_NATIVE_PORT, parse_address
from edgewire.serve.store import DEFAULT_ALIAS, check_alias, check_name

CHUNK = 256 * 1024


def upload_model(
    model: Path,
    *,
    host: str,
    port: int,
    name: str,
    alias: str,
    token: str | None,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
    gate: Gate | None = None,
) -> dict[str, Any]:
    """Upload one model file to one agent; the agent checks, loads and serves it.

    The file's name goes along: the agent reads the format from the content and
    refuses a name that contradicts it."""
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    size = model.stat().st_size

    def chunks() -> Iterator[bytes]:
        with model.open("rb") as f:
            while chunk := f.read(CHUNK):
                if on_progress is not None:
                    on_progress(len(chunk))
                yield chunk

    params = {"sha256": digest, "alias": alias, "filename": model.name}
    if gate is not None:
        params |= _send_gate(gate, host=host, port=port, token=token, timeout=timeout)
    response = send(
        "PUT",
        host,
        port,
        f"/api/models/{name}",
        params=params,
        content=chunks(),
        headers={
            **auth_headers(token),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
        },
        timeout=timeout,
    )
    return check(response, f"deploy to {host}:{port}")


@dataclasses.dataclass(frozen=True)
class Gate:
    """The packed gate samples and thresholds one gated deploy sends to each agent."""

    npz: bytes
    samples: int
    min_accuracy: float | None
    no_worse_than: float | None


def _gate(
    model: Path, data: Path | None, min_accuracy: float | None, no_worse: float | None
) -> Gate | None:
    if data is None:
        if min_accuracy is not None or no_worse is not None:
            raise ConfigError("--min-accuracy and --no-worse-than-current need --gate-data DIR")
        return None
    if min_accuracy is not None and not 0.0 <= min_accuracy <= 1.0:
        raise ConfigError(f"--min-accuracy is a share in 0..1, got {min_accuracy!r} (0.9 for 90%)")
    if no_worse is not None and not 0.0 <= no_worse <= 100.0:
        raise ConfigError(f"--no-worse-than-current is points in 0..100, got {no_worse!r}")
    if model.is_dir():
        raise ConfigError("--gate-data is for one model file, not a split folder")
    from edgewire.cli.common import err_console
    from edgewire.project.gate_data import pack_gate_data

    npz, samples = pack_gate_data(
        data, model, note=lambda line: err_console.print(line, highlight=False)
    )
    return Gate(npz=npz, samples=samples, min_accuracy=min_accuracy, no_worse_than=no_worse)


def _send_gate(
    gate: Gate, *, host: str, port: int, token: str | None, timeout: float
) -> dict[str, str]:
    """PUT the gate samples; the upload's query parameters that name them."""
    digest = hashlib.sha256(gate.npz).hexdigest()
    response = send(
        "PUT", host, port, "/api/gate-data", params={"sha256": digest}, content=gate.npz,
        headers={**auth_headers(token), "Content-Type": "application/octet-stream"},
        timeout=timeout,
    )  # fmt: skip
    check(response, f"send the gate data to {host}:{port}")
    from edgewire.agent.gate import gate_query

    return gate_query(digest, min_accuracy=gate.min_accuracy, no_worse_than=gate.no_worse_than)


def deploy_command(
    model: Path = typer.Argument(
        ...,
        exists=True,
        help="The model file (.onnx, or .tflite: the agent needs edgewire\\[tflite]), or a "
        "split folder from `edgewire split build` (head.onnx, tail.onnx, full.onnx).",
    ),
    to: str = typer.Option(
        ..., "--to", help="Agent HOST:HTTP_PORT, or several separated by commas."
    ),
    name: str = typer.Option(..., "--name", help="Model name on the agents."),
    alias: str = typer.Option(
        DEFAULT_ALIAS, "--alias", help="Alias that moves to the new version."
    ),
    tail_to: str | None = typer.Option(
        None,
        "--tail-to",
        help="Split folders: the server agent (HOST:HTTP_PORT) that runs the tail, as NAME-tail.",
    ),
    tail_native: str | None = typer.Option(
        None,
        "--tail-native",
        help=f"Split folders: where the heads reach the tail \\[default: the --tail-to host, "
        f"port {DEFAULT_NATIVE_PORT}].",
    ),
    coder: str | None = typer.Option(
        None,
        "--coder",
        help="Split folders: how the bottleneck crosses: raw, zstd or rans "
        "\\[default: rans when the head carries a prior].",
    ),
    fallback: bool = typer.Option(
        True,
        "--fallback/--no-fallback",
        help="Split folders: also deploy full.onnx to the devices as NAME-full, which answers "
        "requests sent with fallback=local when the tail server is unreachable.",
    ),
    token: str | None = typer.Option(None, help=r"Management token \[env: EDGEWIRE_TOKEN]."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for each agent."),
    gate_data: Path | None = typer.Option(
        None,
        "--gate-data",
        metavar="DIR|WORKSPACE",
        help="Score the new version (and the served one) on these images first; a worse "
        "one is stored but not served.",
    ),
    min_accuracy: float | None = typer.Option(
        None, "--min-accuracy", help="Gate: the least accuracy (0..1) the new version needs."
    ),
    no_worse_than_current: float | None = typer.Option(
        None,
        "--no-worse-than-current",
        metavar="PTS",
        help=r"Gate: how many points below the served version the new one may score \[default: 0].",
    ),
) -> None:
    """Upload MODEL to each agent, verify its sha256 there, load and warm it up, then move the alias.

    A split folder goes in three parts: the tail to --tail-to, then the full model and the head
    (which learns where its tail lives) to each --to agent."""
    check_name(name)
    check_alias(alias)
    targets = _targets(to)
    gate = _gate(model, gate_data, min_accuracy, no_worse_than_current)
    table = Table(title=f"deploy {model.name} as {name!r} ({alias})")
    for column in ("agent", "model", "version", "sha256", "status"):
        table.add_column(column)
    failures: list[EdgewireError] = []
    if model.is_dir():
        if gate is not None:
            raise ConfigError("--gate-data is for one model file, not a split folder")
        _deploy_split(
            model, targets, name=name, alias=alias, tail_to=tail_to, tail_native=tail_native,
            coder=coder, fallback=fallback, token=token, timeout=timeout, table=table,
            failures=failures,
        )  # fmt: skip
    else:
        if tail_to is not None:
            raise ConfigError("--tail-to is for split folders (head.onnx + tail.onnx), not a file")
        _upload_all(model, targets, name, alias=alias, token=token, timeout=timeout, table=table,
                    failures=failures, gate=gate)  # fmt: skip
    console.print(table)
    if failures:
        raise deploy_failed(failures)


def _targets(to: str) -> list[tuple[str, str, int]]:
    found = []
    for target in [t.strip() for t in to.split(",") if t.strip()]:
        host, port = parse_address(target, default_port=DEFAULT_HTTP_PORT)
        found.append((target, host, port))
    if not found:
        raise ConfigError("--to names no agent")
    return found


def _upload_all(
    model: Path,
    targets: list[tuple[str, str, int]],
    name: str,
    *,
    alias: str,
    token: str | None,
    timeout: float,
    table: Table,
    failures: list[EdgewireError],
    gate: Gate | None = None,
) -> bool:
    """Upload one file to each target, a table row each; True if every one took it."""
    size = model.stat().st_size
    ok = True
    for target, host, port in targets:
        try:
            with Progress(
                "[bold]" + target,
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task("upload", total=size)
                body = upload_model(
                    model, host=host, port=port, name=name, alias=alias, token=token, timeout=timeout,
                    on_progress=functools.partial(progress.advance, task), gate=gate,
                )  # fmt: skip
            table.add_row(
                target,
                name,
                str(body["version"]),
                body["sha256"][:12],
                "[green]serving[/]" if body.get("active", True) else f"stored as {alias}",
            )
        except (ConnectError, RemoteError, AuthError) as exc:
            ok = False
            failures.append(exc)
            table.add_row(target, name, "-", "-", Text(exc.message, style="red"))
    return ok


def _deploy_split(
    folder: Path,
    targets: list[tuple[str, str, int]],
    *,
    name: str,
    alias: str,
    tail_to: str | None,
    tail_native: str | None,
    coder: str | None,
    fallback: bool,
    token: str | None,
    timeout: float,
    table: Table,
    failures: list[EdgewireError],
) -> None:
    import tempfile

    from edgewire.split.codec import PRIOR_KEY, TENSOR_CODERS
    from edgewire.split.route import Route, stamp_route

    head, tail, full = folder / "head.onnx", folder / "tail.onnx", folder / "full.onnx"
    if not head.is_file() or not tail.is_file():
        raise ConfigError(f"{folder} is not a split folder: it needs head.onnx and tail.onnx")
    if tail_to is None:
        raise ConfigError("a split folder needs --tail-to HOST:HTTP_PORT, the server for the tail")
    servers = _targets(tail_to)
    if len(servers) != 1:
        raise ConfigError("--tail-to names one server agent")
    if coder is not None and coder not in TENSOR_CODERS:
        raise ConfigError(f"unknown --coder {coder!r}; one of: {', '.join(TENSOR_CODERS)}")
    if fallback and not full.is_file():
        raise ConfigError(f"{folder} has no full.onnx for the fallback; add --no-fallback")
    native_host, native_port = parse_address(
        tail_native or servers[0][1], default_port=DEFAULT_NATIVE_PORT
    )
    tail_name, full_name = f"{name}-tail", f"{name}-full"
    check_name(tail_name)
    with tempfile.TemporaryDirectory(prefix="edgewire-split-") as tmp:
        import onnx

        props = {p.key for p in onnx.load(str(head), load_external_data=False).metadata_props}
        route = Route(
            host=native_host,
            port=native_port,
            tail=tail_name,
            coder=coder or ("rans" if PRIOR_KEY in props else "zstd"),
            fallback=full_name if fallback else None,
        )
        stamped = stamp_route(head, Path(tmp) / "head.onnx", route)
        # The tail first: a head must never serve before its tail does.
        if not _upload_all(tail, servers, tail_name, alias=alias, token=token, timeout=timeout,
                           table=table, failures=failures):  # fmt: skip
            return
        if fallback and not _upload_all(full, targets, full_name, alias=alias, token=token,
                                        timeout=timeout, table=table, failures=failures):  # fmt: skip
            return
        _upload_all(stamped, targets, name, alias=alias, token=token, timeout=timeout,
                    table=table, failures=failures)  # fmt: skip


def deploy_failed(failures: list[EdgewireError]) -> EdgewireError:
    """One error for the agents that did not take the model.

    When every failure has the same cause (all auth, all unreachable, ...), the error is of
    that kind, so that the exit code says what to fix; the message carries the first reason.
    """
    first = failures[0]
    summary = f"{len(failures)} agent(s) did not take the model; the ones listed as serving did"
    kinds = {_kind(f) for f in failures}
    if len(kinds) == 1:
        return kinds.pop()(f"{summary}: {first.message}")
    return ModelError(f"{summary}; first: {first.message}")


def _kind(error: EdgewireError) -> type[EdgewireError]:
    if isinstance(error, RemoteError):
        return error_for_code(error.remote_code)  # the agent's reason: model, auth, ...
    if isinstance(error, ConnectError):
        return ConnectError  # a timeout and a refused connection both exit 7
    return type(error)


def models_command(
    to: str = typer.Option(f"127.0.0.1:{DEFAULT_HTTP_PORT}", "--to", help="Agent HOST:HTTP_PORT."),
    token: str | None = typer.Option(None, help=r"Management token \[env: EDGEWIRE_TOKEN]."),
) -> None:
    """List the models, versions and aliases of an agent."""
    host, port = parse_address(to, default_port=DEFAULT_HTTP_PORT)
    response = send("GET", host, port, "/api/models", headers=auth_headers(token), timeout=30)
    body = check(response, "list models")
    table = Table(title=f"models on {host}:{port}")
    for column in ("name", "versions", "aliases", "serving"):
        table.add_column(column)
    for m in body["models"]:
        versions = ", ".join(str(v["version"]) for v in m["versions"])
        aliases = ", ".join(f"{k}→{v}" for k, v in m["aliases"].items())
        serving = f"v{m['serving']['version']}" if m.get("serving") else "-"
        table.add_row(m["name"], versions, aliases, serving)
    console.print(table)


def delete_command(
    name: str = typer.Argument(..., help="The model."),
    version: int | None = typer.Option(None, "--version", help="Delete only this version."),
    alias: str | None = typer.Option(None, "--alias", help="Remove only this alias."),
    force: bool = typer.Option(
        False,
        "--force",
        help="With --version: drop the aliases that point at it too (if it is served, the "
        "version a restart would serve takes over). Without --version or --alias: needed "
        "to delete the whole model.",
    ),
    to: str = typer.Option(..., "--to", help="Agent HOST:HTTP_PORT."),
    token: str | None = typer.Option(None, help=r"Management token \[env: EDGEWIRE_TOKEN]."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for the agent."),
) -> None:
    """Delete a version, an alias or (with --force) a whole model of an agent."""
    check_name(name)
    if version is not None and alias is not None:
        raise ConfigError("give --version or --alias, not both")
    if alias is not None:
        check_alias(alias)
        if force:
            raise ConfigError("--force applies to --version or to the whole model, not --alias")
    if version is None and alias is None and not force:
        raise ConfigError(
            f"this deletes every version of model {name!r}: add --force to do so, "
            "or --version N / --alias A to delete less"
        )
    host, port = parse_address(to, default_port=DEFAULT_HTTP_PORT)
    if version is not None:
        path, params = f"/api/models/{name}/versions/{version}", {"force": "1" if force else "0"}
        what = f"delete {name} version {version}"
    elif alias is not None:
        path, params, what = f"/api/models/{name}/aliases/{alias}", {}, f"remove alias {alias}"
    else:
        path, params, what = f"/api/models/{name}", {}, f"delete model {name}"
    response = send(
        "DELETE", host, port, path, params=params, headers=auth_headers(token), timeout=timeout
    )
    try:
        body = check(response, f"{what} on {host}:{port}")
    except RemoteError as exc:
        raise _local(exc) from exc
    if version is not None:
        instead = body.get("serving")
        tail = f"; version {instead} serves instead" if instead is not None else ""
        console.print(f"deleted {name} version {version}{tail}", highlight=False)
    elif alias is not None:
        console.print(
            f"removed alias {alias} of {name} (was version {body['was']})", highlight=False
        )
    else:
        numbers = ", ".join(map(str, body["deleted"])) or "none"
        console.print(f"deleted model {name} (versions {numbers})", highlight=False)


def _local(error: RemoteError) -> EdgewireError:
    """The agent's error as the local class of its code, so that the exit code says what
    happened (11: no such model or refused, 12: disk full, ...)."""
    kind = error_for_code(error.remote_code)
    return error if kind is EdgewireError else kind(error.message)
