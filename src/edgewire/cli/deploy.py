"""``edgewire deploy``, ``models`` and ``delete``: manage the models (ONNX, TFLite) of agents over HTTP."""

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
    ConfigError,
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


def _send(method: str, host: str, port: int, path: str, **kwargs: Any) -> httpx.Response:
    """One request to an agent's HTTP port; ConnectError when there is no HTTP answer."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return httpx.request(method, f"http://{where}{path}", **kwargs)
    except httpx.RemoteProtocolError as exc:
        # What the native port (or any other non-HTTP one) does with an HTTP request.
        raise ConnectError(
            f"{where} gave no HTTP answer ({exc}); is it the agent's HTTP port "
            f"(default {DEFAULT_HTTP_PORT}) and not its native one?"
        ) from exc
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {where}: {exc}") from exc


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

    response = _send(
        "PUT",
        host,
        port,
        f"/api/models/{name}",
        params={"sha256": digest, "alias": alias, "filename": model.name},
        content=chunks(),
        headers={
            **_headers(token),
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
        },
        timeout=timeout,
    )
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
    response = _send("GET", host, port, "/api/models", headers=_headers(token), timeout=30)
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
    response = _send(
        "DELETE", host, port, path, params=params, headers=_headers(token), timeout=timeout
    )
    try:
        body = _check(response, f"{what} on {host}:{port}")
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
