"""Model management over HTTP: upload, list, activate, roll back, delete. Token-guarded.

    PUT    /api/models/{name}?sha256=HEX&alias=production&filename=F   body: the model file
           (&gate=HEX&min_accuracy=A&no_worse_than=PTS: score it first, agent/gate.py)
    PUT    /api/gate-data?sha256=HEX   body: the gate's samples as .npz
    GET    /api/models
    POST   /api/models/{name}/activate   {"version": 3, "alias": "production"}
    POST   /api/models/{name}/rollback   {"alias": "production"}
    DELETE /api/models/{name}/versions/{version}?force=1
    DELETE /api/models/{name}/aliases/{alias}
    DELETE /api/models/{name}

An upload is streamed to disk under a size cap, checked against its sha256,
stored as a new version (its format read from its content; ``filename``, when
given, must agree), loaded and warmed up; only then does the alias move.
A model that fails any step leaves the previous version serving, and is
answered 422; a model or version that does not exist, 404; a full disk, 507
(``disk_full``), with the upload's temp file removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from edgewire.agent.context import PortContext
from edgewire.agent.gate import (
    GATE_DIR,
    MAX_GATE_BYTES,
    MAX_GATE_FILES,
    Gate,
    check_id,
    gate_from_query,
    score,
)
from edgewire.agent.http_common import (
    Endpoint,
    holding,
    iter_body,
    read_body,
)
from edgewire.agent.http_common import guarded as guard
from edgewire.errors import (
    ChecksumMismatch,
    ConfigError,
    DataError,
    DiskFull,
    EdgewireError,
    GateRefused,
    ModelError,
    ModelNotFound,
    ProtocolError,
)
from edgewire.fsutil import disk_errors, sha256_file
from edgewire.jsonsafe import loads_strict
from edgewire.serve.model import ModelVersion
from edgewire.serve.store import DEFAULT_ALIAS, check_alias, check_name
from edgewire.wire.stream import ByteBudget

UPLOADS = "uploads"

log = logging.getLogger(__name__)


def sweep_uploads(data_dir: Path) -> int:
    """Remove uploads a killed agent left half-written; how many went. Call with the data dir locked."""
    folder = data_dir / UPLOADS
    if not folder.is_dir():
        return 0
    gone = 0
    for leftover in folder.iterdir():
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        gone += 1
    return gone


async def _stream_to_file(
    request: Request, path: Path, *, cap: int, timeout: float, budget: ByteBudget
) -> int:
    total = 0
    body = iter_body(request, cap=cap, timeout=timeout)
    try:
        with disk_errors("receive the upload"), path.open("wb") as out, holding(budget) as hold:
            async for chunk in body:
                # Only the chunk in hand is in memory: it holds the shared budget until written.
                hold.hold(len(chunk))
                out.write(chunk)
                hold.hold(0)
                total += len(chunk)
    except DiskFull:
        # The rest is read (still capped and timed) and dropped, so that the client
        # gets the 507 rather than a connection reset in the middle of its upload.
        async for _ in body:
            pass
        raise
    return total


async def _check_disk(agent: PortContext, request: Request) -> None:
    """Refuse an upload the disk budget has no room for: the file is held twice (the
    upload, then the stored copy). The body is still read and dropped (capped and
    timed), so the client gets the 507 rather than a reset mid-upload."""
    declared = request.headers.get("content-length", "")
    size = int(declared) if declared.isascii() and declared.isdigit() else 0
    need = 2 * min(size or agent.config.max_upload_bytes, agent.config.max_upload_bytes)
    try:
        await asyncio.to_thread(agent.disk.check, need, "the upload")
    except DiskFull:
        async for _ in iter_body(
            request, cap=agent.config.max_upload_bytes, timeout=agent.config.body_timeout
        ):
            pass
        raise


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


async def _serves(store: Any, name: str, alias: str) -> bool:
    """Whether a version under ``alias`` is the one served: the serving alias, or any
    alias of a model that has no serving alias yet (a restart serves its latest)."""
    if alias == DEFAULT_ALIAS:
        return True
    return DEFAULT_ALIAS not in await asyncio.to_thread(store.aliases, name)


async def _pass_gate(serving: Any, gate: Gate, version: ModelVersion) -> dict[str, Any]:
    """Score ``version`` and the served one on the gate data. A refused version stays
    stored (not served, no alias moved), so it can still be activated by hand, unless a
    restart would serve it (the model has no ``production`` alias): then it is deleted."""
    served = serving.served_version(version.name)
    store = serving.store
    current = None if served is None else await asyncio.to_thread(store.get, version.name, served)
    loop = asyncio.get_running_loop()
    try:
        new_acc, cur_acc = await loop.run_in_executor(serving.loader, score, gate, version, current)
    except GateRefused as exc:
        log.warning("%s", exc)
        default = await asyncio.to_thread(store.resolve, version.name)
        if default.version != version.version:
            raise GateRefused(
                f"{exc.message}; stored as version {version.version}, not served",
                details=exc.details,
            ) from None
        await asyncio.to_thread(store.delete, version.name, version.version)
        raise GateRefused(
            f"{exc.message}; version {version.version} deleted (with no "
            f"{DEFAULT_ALIAS!r} alias a restart would serve it)",
            details=exc.details,
        ) from None
    except (EdgewireError, MemoryError) as exc:  # bad gate data or a model it cannot score
        with contextlib.suppress(EdgewireError):
            await asyncio.to_thread(store.delete, version.name, version.version)
        if isinstance(exc, MemoryError):
            raise DataError("gate data too large to score in this agent's memory") from None
        raise
    finally:
        gate.data.unlink(missing_ok=True)  # each gate file is for one upload
    log.info("gate passed by %s: %.1f%% (served: %s)", version.label, 100 * new_acc,
             "none" if cur_acc is None else f"{100 * cur_acc:.1f}%")  # fmt: skip
    return {"accuracy": new_acc, "current_accuracy": cur_acc, "passed": True}


async def add_and_serve(
    agent: PortContext,
    name: str,
    path: Path,
    *,
    alias: str = DEFAULT_ALIAS,
    sha256: str | None = None,
    file_name: str | None = None,
    activate: bool = True,
    gate: Gate | None = None,
    gate_report: dict[str, Any] | None = None,
) -> ModelVersion:
    """Store the model at ``path`` (companions beside it) as the next version of ``name``
    and, with ``activate``, load and warm it up and only then move ``alias`` to it.

    What uploads and automated deploys share, so that both check a model the same way. A
    version that does not load is deleted and the old one keeps serving; an alias that
    cannot move leaves what it still names serving. A passed gate's scores go into
    ``gate_report`` when one is given.
    """
    serving = agent.serving
    store = serving.store
    try:
        version = await asyncio.to_thread(store.add, name, path, sha256=sha256, file_name=file_name)
    finally:
        agent.disk.changed()
    if gate is not None:
        scores = await _pass_gate(serving, gate, version)
        if gate_report is not None:
            gate_report.update(scores)
    if activate and not await _serves(store, name, alias):
        # Another alias (canary, staging): checked as a served version would be, the
        # alias moves, and what serves stays what a restart would serve (production).
        try:
            await serving.verify(name, version.version)
            await asyncio.to_thread(store.set_alias, name, alias, version.version)
        except EdgewireError:
            with contextlib.suppress(EdgewireError):
                await asyncio.to_thread(store.delete, name, version.version)
            raise
        log.info("model %s version %s stored as %r (not served: %r is)", name,
                 version.version, alias, DEFAULT_ALIAS)  # fmt: skip
        return version
    if activate:
        previous = serving.served_version(name)
        try:
            await serving.activate(name, version.version)
        except EdgewireError:
            # It does not load: the old version keeps serving, and the new one goes
            # (no alias points to it), so a restart never meets it either.
            with contextlib.suppress(EdgewireError):
                await asyncio.to_thread(store.delete, name, version.version)
            raise
        try:
            await asyncio.to_thread(store.set_alias, name, alias, version.version)
        except EdgewireError:
            # The alias did not move (a full disk): serve what it still names, as a
            # restart would, and drop the new version if the disk allows.
            if previous is not None:
                with contextlib.suppress(EdgewireError):
                    await serving.activate(name, previous)
            with contextlib.suppress(EdgewireError):
                await asyncio.to_thread(store.delete, name, version.version)
            raise
    log.info(
        "deployed %s version %s (%s, %d bytes, sha256 %s)%s",
        name, version.version, version.format, version.size, version.sha256[:12],
        f", serving as {alias!r}" if activate else ", not activated",
    )  # fmt: skip
    return version


def management_routes(agent: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    serving = agent.serving
    store = serving.store

    def guarded(handler: Endpoint) -> Endpoint:
        return guard(
            agent.config, handler, status=lambda exc, request: _status(exc, request.method)
        )

    async def upload(request: Request) -> Response:
        name = request.path_params["name"]
        alias = request.query_params.get("alias", DEFAULT_ALIAS)
        sha256 = request.query_params.get("sha256") or request.headers.get("x-edgewire-sha256")
        activate = request.query_params.get("activate", "1") not in ("0", "false", "no")
        file_name = request.query_params.get("filename") or None
        check_name(name)
        check_alias(alias)  # before anything is stored or served
        gate = gate_from_query(agent.config.data_dir, dict(request.query_params))
        await _check_disk(agent, request)
        # Each upload in a private folder: ONNX external data is looked up beside the
        # file, and must never find another client's upload or a leftover there.
        private = agent.config.data_dir / UPLOADS / f"{os.getpid()}-{secrets.token_hex(8)}"
        with disk_errors("receive the upload"):
            await asyncio.to_thread(private.mkdir, parents=True)
        tmp = private / "model.upload"
        try:
            size = await _stream_to_file(
                request,
                tmp,
                cap=agent.config.max_upload_bytes,
                timeout=agent.config.body_timeout,
                budget=agent.frame_budget,
            )
            if size == 0:
                raise ModelError("the upload is empty")
            scores: dict[str, Any] = {}
            version = await add_and_serve(
                agent, name, tmp, alias=alias, sha256=sha256, file_name=file_name,
                activate=activate, gate=gate, gate_report=scores,
            )  # fmt: skip
        finally:
            await asyncio.to_thread(shutil.rmtree, private, True)
            agent.disk.changed()
        body: dict[str, Any] = {
            "name": name,
            "version": version.version,
            "format": version.format,
            "sha256": version.sha256,
        }
        if scores:
            body["gate"] = scores
        if activate:
            body["alias"] = alias
            body["active"] = serving.served_version(name) == version.version
        return JSONResponse(body, status_code=201)

    async def gate_data(request: Request) -> Response:
        """Samples for one gated upload (agent/gate.py), kept until that upload uses them."""
        digest = check_id((request.query_params.get("sha256") or "").lower())
        await _check_disk(agent, request)
        folder = agent.config.data_dir / GATE_DIR
        private = agent.config.data_dir / UPLOADS / f"{os.getpid()}-{secrets.token_hex(8)}"
        with disk_errors("receive the gate data"):
            await asyncio.to_thread(private.mkdir, parents=True)
            await asyncio.to_thread(folder.mkdir, exist_ok=True)
        try:
            tmp = private / "gate.npz"
            size = await _stream_to_file(request, tmp, cap=MAX_GATE_BYTES,
                                         timeout=agent.config.body_timeout,
                                         budget=agent.frame_budget)  # fmt: skip
            if await asyncio.to_thread(sha256_file, tmp) != digest:
                raise ChecksumMismatch(f"the gate data's sha256 is not {digest[:12]}…; resend it")
            await asyncio.to_thread(_keep_gate, tmp, folder / f"{digest}.npz")
        finally:
            await asyncio.to_thread(shutil.rmtree, private, True)
            agent.disk.changed()
        return JSONResponse({"gate": digest, "size": size}, status_code=201)

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

    async def delete_version(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        raw = request.path_params["version"]
        if not (str(raw).isascii() and str(raw).isdigit()):
            raise ConfigError(f"version must be a number, got {raw!r}")
        force = _flag(request.query_params.get("force", "0"), "force")
        instead = await serving.delete_version(name, int(raw), force=force)
        body: dict[str, Any] = {"name": name, "deleted": int(raw)}
        if instead is not None:
            body["serving"] = instead
        return JSONResponse(body)

    async def download_version(request: Request) -> Response:
        """One stored version's model file (another agent's automation fetches it)."""
        name = check_name(request.path_params["name"])
        raw = request.path_params["version"]
        if not (str(raw).isascii() and str(raw).isdigit()):
            raise ConfigError(f"version must be a number, got {raw!r}")
        version = await asyncio.to_thread(store.get, name, int(raw))
        if version.external:
            raise DataError(
                f"{version.label} keeps its weights in external data files; "
                "fetch it from where it was deployed"
            )
        return FileResponse(
            version.model_path, media_type="application/octet-stream", filename=version.file,
            headers={"X-Edgewire-Sha256": version.sha256},
        )  # fmt: skip

    async def delete_alias(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        alias = check_alias(request.path_params["alias"])
        was = await serving.remove_alias(name, alias)
        return JSONResponse({"name": name, "alias": alias, "was": was})

    async def delete_model(request: Request) -> Response:
        name = check_name(request.path_params["name"])
        numbers = await serving.delete_model(name)
        return JSONResponse({"name": name, "deleted": numbers})

    return [
        ("/api/models", guarded(listing), ["GET"]),
        ("/api/gate-data", guarded(gate_data), ["PUT"]),
        ("/api/models/{name}", guarded(upload), ["PUT", "POST"]),
        ("/api/models/{name}", guarded(delete_model), ["DELETE"]),
        ("/api/models/{name}/activate", guarded(activate), ["POST"]),
        ("/api/models/{name}/rollback", guarded(rollback), ["POST"]),
        ("/api/models/{name}/versions/{version}", guarded(delete_version), ["DELETE"]),
        ("/api/models/{name}/versions/{version}/file", guarded(download_version), ["GET"]),
        ("/api/models/{name}/aliases/{alias}", guarded(delete_alias), ["DELETE"]),
    ]


def _keep_gate(tmp: Path, target: Path) -> None:
    """Move a received gate file in; the oldest go past MAX_GATE_FILES (uploads never sent)."""
    tmp.replace(target)
    kept = sorted(target.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime)
    for old in kept[: max(len(kept) - MAX_GATE_FILES, 0)]:
        old.unlink(missing_ok=True)


def _flag(value: str, what: str) -> bool:
    """A query flag: 1/true/yes or 0/false/no."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("", "0", "false", "no"):
        return False
    raise ConfigError(f"{what} must be 1 or 0, got {value!r}")
