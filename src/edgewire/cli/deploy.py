"""``edgewire deploy`` and ``edgewire models``: ship models (ONNX, TFLite) to agents over HTTP."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from edgewire.cli.common import console, parse_address
from edgewire.errors import (
    AuthError,
    ConnectError,
    EdgewireError,
    ModelError,
    RemoteError,
    error_for_code,
)
from edgewire.ports import DEFAULT_HTTP_PORT
from edgewire.serve.store import DEFAULT_ALIAS, check_alias, check_name

CHUNK = 256 * 1024


def _headers(token: str | None) -> dict[str, str]:
    token = token or os.environ.get("EDGEWIRE_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code in (401, 403):
        raise AuthError(f"{what}: {_message(response)} (pass --token or set EDGEWIRE_TOKEN)")
    if response.status_code >= 400:
        code = "internal"
        with contextlib.suppress(ValueError, AttributeError):
            code = str(response.json().get("code", "internal"))
        raise RemoteError(
            f"{what}: {_message(response)} (HTTP {response.status_code})", remote_code=code
        )
    body: dict[str, Any] = response.json()
    return body


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]


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

    try:
        response = httpx.put(
            f"http://{host}:{port}/api/models/{name}",
            params={"sha256": digest, "alias": alias, "filename": model.name},
            content=chunks(),
            headers={
                **_headers(token),
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            },
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {host}:{port}: {exc}") from exc
    return _check(response, f"deploy to {host}:{port}")


def deploy_command(
    model: Path = typer.Argument(
        ...,
        exists=True,
        dir_okay=False,
        help="The model file: .onnx, or .tflite (the agent needs edgewire[tflite]).",
    ),
    to: str = typer.Option(
        ..., "--to", help="Agent HOST:HTTP_PORT, or several separated by commas."
    ),
    name: str = typer.Option(..., "--name", help="Model name on the agents."),
    alias: str = typer.Option(
        DEFAULT_ALIAS, "--alias", help="Alias that moves to the new version."
    ),
    token: str | None = typer.Option(None, help=r"Management token \[env: EDGEWIRE_TOKEN]."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for each agent."),
) -> None:
    """Upload MODEL to each agent, verify its sha256 there, load and warm it up, then move the alias."""
    check_name(name)
    check_alias(alias)
    size = model.stat().st_size
    table = Table(title=f"deploy {model.name} as {name!r} ({alias})")
    for column in ("agent", "version", "sha256", "status"):
        table.add_column(column)
    failures: list[EdgewireError] = []
    for target in [t.strip() for t in to.split(",") if t.strip()]:
        host, port = parse_address(target, default_port=DEFAULT_HTTP_PORT)
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
                    on_progress=functools.partial(progress.advance, task),
                )  # fmt: skip
            table.add_row(target, str(body["version"]), body["sha256"][:12], "[green]serving[/]")
        except (ConnectError, RemoteError, AuthError) as exc:
            failures.append(exc)
            table.add_row(target, "-", "-", Text(exc.message, style="red"))
    console.print(table)
    if failures:
        raise deploy_failed(failures)


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
    try:
        response = httpx.get(
            f"http://{host}:{port}/api/models", headers=_headers(token), timeout=30
        )
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {host}:{port}: {exc}") from exc
    body = _check(response, "list models")
    table = Table(title=f"models on {host}:{port}")
    for column in ("name", "versions", "aliases", "serving"):
        table.add_column(column)
    for m in body["models"]:
        versions = ", ".join(str(v["version"]) for v in m["versions"])
        aliases = ", ".join(f"{k}→{v}" for k, v in m["aliases"].items())
        serving = f"v{m['serving']['version']}" if m.get("serving") else "-"
        table.add_row(m["name"], versions, aliases, serving)
    console.print(table)
