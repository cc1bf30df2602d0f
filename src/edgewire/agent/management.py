"""Model management over HTTP: upload, list, activate, roll back, delete. Token-guarded.

    PUT    /api/models/{name}?sha256=HEX&alias=production&filename=F   body: the model file
    GET    /api/models
    POST   /api/models/{name}/activate   {"version": 3, "alias": "production"}
    POST   /api/models/{name}/rollback   {"alias": "production"}
    DELETE /api/models/{name}/versions/{version}

An upload is streamed to disk under a size cap, checked against its sha256,
stored as a new version (its format read from its content; ``filename``, when
given, must agree), loaded and warmed up; only then does the alias move.
A model that fails any step leaves the previous version serving, and is
answered 422; a model or version that does not exist, 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import check_management, error_response, iter_body, read_body
from edgewire.errors import ConfigError, EdgewireError, ModelError, ModelNotFound, ProtocolError
from edgewire.jsonsafe import loads_strict
from edgewire.serve.store import DEFAULT_ALIAS, check_alias, check_name

Endpoint = Callable[[Request], Awaitable[Response]]
UPLOADS = "uploads"


def sweep_uploads(data_dir: Path) -> int:
    """Remove uploads a killed agent left half-written; how many went. Call with the data dir locked."""
    folder = data_dir / UPLOADS
    if not folder.is_dir():
        return 0
    gone = 0
    for leftover in folder.iterdir():
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            gone += 1
    return gone


async def _stream_to_file(request: Request, path: Path, *, cap: int, timeout: float) -> int:
    total = 0
    with path.open("wb") as out:
        async for chunk in iter_body(request, cap=cap, timeout=timeout):
            out.write(chunk)
            total += len(chunk)
    return total


async def _json(request: Request) -> dict[str, Any]:
    raw = await read_body(request, cap=64 * 1024)
    if not raw:
        return {}
    body = loads_strict(raw, what="the body")
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    return body


def _status(exc: EdgewireError, method: str) -> int | None:
    """A refused model change is 422 (Unprocessable); not found stays 404."""
    if isinstance(exc, ModelError) and not isinstance(exc, ModelNotFound) and method != "GET":
        return 422
    return None


def management_routes(agent: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    serving = agent.serving
    store = serving.store

    def guarded(handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                check_management(agent.config, request)
                return await handler(request)
            except EdgewireError as exc:
                return error_response(exc, status=_status(exc, request.method))

        return endpoint

    async def upload(request: Request) -> Response:
        name = request.path_params["name"]
        alias = request.query_params.get("alias", DEFAULT_ALIAS)
        sha256 = request.query_params.get("sha256") or request.headers.get("x-edgewire-sha256")
        activate = request.query_params.get("activate", "1") not in ("0", "false", "no")
        file_name = request.query_params.get("filename") or None
        check_name(name)
        check_alias(alias)  # before anything is stored or served
        staging = agent.config.data_dir / UPLOADS
        await asyncio.to_thread(staging.mkdir, parents=True, exist_ok=True)
        tmp = staging / f"{os.getpid()}-{secrets.token_hex(8)}.upload"
        try:
            size = await _stream_to_file(
                request, tmp, cap=agent.config.max_upload_bytes, timeout=agent.config.body_timeout
            )
            if size == 0:
                raise ModelError("the upload is empty")
            version = await asyncio.to_thread(
                store.add, name, tmp, sha256=sha256, file_name=file_name
            )
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        body: dict[str, Any] = {
            "name": name,
            "version": version.version,
            "format": version.format,
            "sha256": version.sha256,
        }
        if activate:
            try:
                await serving.activate(name, version.version)
            except EdgewireError:
                # It does not load: the old version keeps serving, and the new one goes
                # (no alias points to it), so a restart never meets it either.
                with contextlib.suppress(EdgewireError):
                    await asyncio.to_thread(store.delete, name, version.version)
                raise
            await asyncio.to_thread(store.set_alias, name, alias, version.version)
            body["alias"] = alias
            body["active"] = True
        return JSONResponse(body, status_code=201)

    async def listing(request: Request) -> Response:
        served = {m["name"]: m for m in serving.model_status()}
        models = []
        for name in await asyncio.to_thread(store.names):
            versions = await asyncio.to_thread(store.versions, name)
            models.append({
                "name": name,
                "versions": [{"version": v.version, "format": v.format, "sha256": v.sha256, "size": v.size, "created": v.created} for v in versions],
                "aliases": await asyncio.to_thread(store.aliases, name),
                "serving": served.get(name),
            })  # fmt: skip
        return JSONResponse({"models": models})

    async def activate(request: Request) -> Response:
        name = request.path_params["name"]
        body = await _json(request)
        version, alias = body.get("version"), body.get("alias", DEFAULT_ALIAS)
        if not isinstance(version, int | str) or not isinstance(alias, str):
            raise ConfigError("activate needs {'version': N, 'alias': 'production'}")
        check_alias(alias)
        target = await asyncio.to_thread(store.resolve, name, version)
        await serving.activate(name, target.version)
        await asyncio.to_thread(store.set_alias, name, alias, target.version)
        return JSONResponse({"name": name, "version": target.version, "alias": alias})

    async def rollback(request: Request) -> Response:
        name = request.path_params["name"]
        alias = (await _json(request)).get("alias", DEFAULT_ALIAS)
        if not isinstance(alias, str):
            raise ConfigError(f"alias must be a string, got {alias!r}")
        current = await asyncio.to_thread(store.aliases, name)
        previous = await asyncio.to_thread(store.rollback, name, alias)
        try:
            await serving.activate(name, previous.version)
        except EdgewireError:
            # The old version does not load any more: put the alias back as it was.
            if alias in current:
                await asyncio.to_thread(store.set_alias, name, alias, current[alias])
            raise
        return JSONResponse({"name": name, "version": previous.version, "alias": alias})

    async def delete(request: Request) -> Response:
        name = request.path_params["name"]
        raw = request.path_params["version"]
        if not (str(raw).isascii() and str(raw).isdigit()):
            raise ConfigError(f"version must be a number, got {raw!r}")
        await asyncio.to_thread(store.delete, name, int(raw))
        return JSONResponse({"name": name, "deleted": int(raw)})

    return [
        ("/api/models", guarded(listing), ["GET"]),
        ("/api/models/{name}", guarded(upload), ["PUT", "POST"]),
        ("/api/models/{name}/activate", guarded(activate), ["POST"]),
        ("/api/models/{name}/rollback", guarded(rollback), ["POST"]),
        ("/api/models/{name}/versions/{version}", guarded(delete), ["DELETE"]),
    ]
