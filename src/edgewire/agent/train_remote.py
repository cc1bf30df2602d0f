"""Remote training over HTTP: upload a data set once by content, train it here, follow it.

    POST /api/datasets                      {files: [{path, sha256, size}]} -> id, missing
    PUT  /api/blobs/{sha256}                body: one file (stored once, sha256 checked)
    POST /api/blobs                         body: many small files packed (sha256, size, bytes)
    POST /api/train                         {dataset, options, init?, run_id?}
    GET  /api/train/{run_id}                state, last event, summary, result files
    GET  /api/train/{run_id}/events?after=N server-sent events; ends with summary or error
    GET  /api/train/{run_id}/files/{name}   a result file (X-Edgewire-Sha256)
    POST /api/train/{run_id}/stop           stop between batches; the report is written

Everything is behind the management token. A client sends the manifest, then only
the files the agent lacks: an upload that stopped half-way goes on where it was.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from edgewire.agent.blobs import BlobStore
from edgewire.agent.context import PortContext
from edgewire.agent.disk import CACHE_S
from edgewire.agent.http_common import (
    Endpoint,
    holding,
    iter_body,
    not_found,
)
from edgewire.agent.http_common import guarded as guard
from edgewire.agent.management import UPLOADS
from edgewire.agent.remote_runs import FINAL, POLL_S, RESULT_FILES, RemoteRun, RemoteRuns
from edgewire.data.manifest import BYTES_PER_ENTRY, PackDecoder, parse_manifest
from edgewire.errors import (
    ChecksumMismatch,
    ConfigError,
    DiskFull,
    ProtocolError,
)
from edgewire.fsutil import disk_errors
from edgewire.jsonsafe import loads_strict
from edgewire.serve.store import check_name
from edgewire.train.folder import FolderOptions
from edgewire.wire import sse

#: Seconds between keep-alive comments on an idle event stream.
PING_S = 10.0
#: A packed file's largest size (bigger ones go alone), and what is written at once.
PACK_ITEM_BYTES = 4 << 20
PACK_FLUSH_BYTES = 4 << 20
#: Manifests of up to this many bytes are parsed on the event loop; bigger ones in a thread.
PARSE_INLINE_BYTES = 256 * 1024


def _not_found(run_id: str) -> Response:
    # No error class means "no such run"; as jobs_api does for jobs.
    return not_found(
        f"no training run {run_id!r} on the agent (finished runs are pruned in time, "
        "and an agent that restarted forgets its runs)", "run_not_found")  # fmt: skip


async def _json_body(ctx: PortContext, request: Request, cap: int) -> dict[str, Any]:
    with holding(ctx.frame_budget) as hold:
        chunks = iter_body(request, cap=cap, timeout=ctx.config.body_timeout, hold=hold)
        raw = b"".join([chunk async for chunk in chunks])
        if len(raw) > PARSE_INLINE_BYTES:
            body = await asyncio.to_thread(loads_strict, raw, what="the body")
        else:
            body = loads_strict(raw, what="the body")
    if not isinstance(body, dict):
        raise ProtocolError("the body must be a JSON object")
    return body


def _after(request: Request) -> int:
    raw = request.query_params.get("after") or request.headers.get("last-event-id") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ConfigError(f"after must be an event number (0 or more), got {raw[:40]!r}")
    return int(raw)


class _Recent:
    """Bytes stored lately, which the disk budget's cached figure may not count yet.

    Measuring the data dir walks it: telling the budget after each of thousands of
    small files would walk it thousands of times. Each check adds these instead."""

    def __init__(self) -> None:
        self._log: collections.deque[tuple[float, int]] = collections.deque()
        self._total = 0

    def add(self, size: int) -> None:
        self._log.append((time.monotonic(), size))
        self._total += size

    def bytes(self) -> int:
        horizon = time.monotonic() - 2 * CACHE_S
        while self._log and self._log[0][0] < horizon:
            self._total -= self._log.popleft()[1]
        return self._total


def train_remote_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    cfg = ctx.config
    store = BlobStore(cfg.data_dir, ttl_s=cfg.dataset_ttl_s)
    recent = _Recent()
    runs = RemoteRuns(ctx, store)

    def guarded(handler: Endpoint) -> Endpoint:
        return guard(cfg, handler)

    async def datasets(request: Request) -> Response:
        cap = 4096 + BYTES_PER_ENTRY * cfg.max_dataset_files
        body = await _json_body(ctx, request, cap)
        # A long manifest takes a while to check: off the loop, so others are served.
        manifest = await asyncio.to_thread(
            parse_manifest, body, max_files=cfg.max_dataset_files, max_bytes=cfg.max_dataset_bytes
        )
        ident = await asyncio.to_thread(store.save_manifest, manifest)
        missing = await asyncio.to_thread(store.missing, manifest)
        await asyncio.to_thread(store.sweep, in_use={*runs.in_use(), ident})
        sizes = manifest.blobs()
        return JSONResponse({
            "dataset": ident, "files": len(manifest.files), "bytes": manifest.total_bytes,
            "missing": missing, "missing_bytes": sum(sizes[s] for s in missing),
        })  # fmt: skip

    async def drain(request: Request) -> None:
        async for _ in iter_body(request, cap=cfg.max_dataset_bytes, timeout=cfg.body_timeout):
            pass

    async def put_blob(request: Request) -> Response:
        sha = str(request.path_params["sha256"])
        target = store.blob(sha)
        declared = request.headers.get("content-length", "")
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
            raise ProtocolError("send the file with a Content-Length header")
        size = int(declared)
        if await asyncio.to_thread(target.is_file):
            await drain(request)
            return JSONResponse({"sha256": sha, "size": size, "stored": False})
        try:
            await asyncio.to_thread(ctx.disk.check, size + recent.bytes(), "the upload")
        except DiskFull:
            # Make room from data sets no run uses and no one sent for ten minutes.
            await asyncio.to_thread(store.sweep, in_use=runs.in_use(),
                                    max_age_s=min(cfg.dataset_ttl_s, 600.0), force=True)  # fmt: skip
            ctx.disk.changed()
            try:
                await asyncio.to_thread(ctx.disk.check, size, "the upload")
            except DiskFull:
                await drain(request)
                raise
        tmp = cfg.data_dir / UPLOADS / f"blob-{os.getpid()}-{secrets.token_hex(8)}"
        digest = hashlib.sha256()
        received = 0
        try:
            with disk_errors("receive the file"):
                tmp.parent.mkdir(parents=True, exist_ok=True)
                with tmp.open("wb") as out, holding(ctx.frame_budget) as hold:
                    async for chunk in iter_body(
                        request, cap=cfg.max_dataset_bytes, timeout=cfg.body_timeout
                    ):
                        hold.hold(len(chunk))  # only the chunk in hand is in memory
                        digest.update(chunk)
                        out.write(chunk)
                        hold.hold(0)
                        received += len(chunk)
            if received != size:
                raise ProtocolError(f"the body has {received} bytes, not the {size} declared")
            got = digest.hexdigest()
            if got != sha:
                raise ChecksumMismatch(
                    f"the file's sha256 is {got}, not {sha} (the URL's); nothing was stored"
                )
            await asyncio.to_thread(store.adopt, tmp, sha)
            recent.add(size)
        finally:
            await asyncio.to_thread(tmp.unlink, True)
        return JSONResponse({"sha256": sha, "size": size, "stored": True}, status_code=201)

    async def put_pack(request: Request) -> Response:
        """Many small files in one body (see ``data/manifest.py``: ``pack``)."""
        declared = request.headers.get("content-length", "")
        if not (declared.isascii() and declared.isdigit()) or len(declared) > 18:
            raise ProtocolError("send the pack with a Content-Length header")
        await asyncio.to_thread(ctx.disk.check, int(declared) + recent.bytes(), "the upload")
        decoder = PackDecoder(max_item=PACK_ITEM_BYTES)
        stored = received = 0
        batch: list[tuple[str, bytes]] = []
        with holding(ctx.frame_budget) as hold:

            async def flush() -> None:
                nonlocal stored
                stored += await asyncio.to_thread(store.write_many, batch)
                recent.add(sum(len(data) for _, data in batch))
                batch.clear()

            async for chunk in iter_body(request, cap=cfg.max_dataset_bytes,
                                         timeout=cfg.body_timeout):  # fmt: skip
                for sha, data in decoder.feed(chunk):
                    got = hashlib.sha256(data).hexdigest()
                    if got != sha:
                        await flush()  # the good ones before it are kept, as said
                        raise ChecksumMismatch(
                            f"a packed file's sha256 is {got}, not the {sha} its record "
                            "names; the files before it were stored, it and the rest not"
                        )
                    batch.append((sha, data))
                    received += 1
                # What is in hand: the files not yet written and the record under way.
                hold.hold(sum(len(d) for _, d in batch) + decoder.pending)
                if sum(len(d) for _, d in batch) >= PACK_FLUSH_BYTES:
                    await flush()
            decoder.close()
            await flush()
        return JSONResponse({"files": received, "stored": stored}, status_code=201)

    async def train(request: Request) -> Response:
        body = await _json_body(ctx, request, 64 * 1024)
        unknown = sorted(set(body) - {"dataset", "options", "init", "run_id"})
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown}; send dataset, options, init, run_id")
        dataset, init = body.get("dataset"), body.get("init")
        run_id = body.get("run_id") or f"run-{secrets.token_hex(4)}"
        if not isinstance(dataset, str):
            raise ConfigError("dataset must be the id POST /api/datasets gave")
        if init is not None and not isinstance(init, str):
            raise ConfigError("init must be the sha256 of an uploaded checkpoint, or absent")
        if not isinstance(run_id, str):
            raise ConfigError(f"run_id must be a string, got {run_id!r}")
        check_name(run_id, what="run id")
        options = FolderOptions.from_dict(body.get("options") or {})
        run = await runs.start(run_id, dataset, options, init)
        return JSONResponse(
            {"run_id": run.run_id, "state": run.state,
             "events": f"/api/train/{run.run_id}/events"}, status_code=202,
        )  # fmt: skip

    def run_of(request: Request) -> RemoteRun | str:
        run_id = str(request.path_params["run_id"])
        return runs.get(run_id) or run_id

    async def status(request: Request) -> Response:
        run = run_of(request)
        return _not_found(run) if isinstance(run, str) else JSONResponse(run.status())

    async def events(request: Request) -> Response:
        after = _after(request)
        run = run_of(request)
        if isinstance(run, str):
            return _not_found(run)
        return StreamingResponse(
            _follow(ctx, run, after), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    async def files(request: Request) -> Response:
        run = run_of(request)
        if isinstance(run, str):
            return _not_found(run)
        name = str(request.path_params["name"])
        known = run.files.get(name)
        if name not in RESULT_FILES or known is None:
            return not_found(f"run {run.run_id!r} has no result file {name[:80]!r}; it "
                             f"has: {', '.join(run.files) or 'none yet'}", "file_not_found")  # fmt: skip
        return FileResponse(run.out / name, media_type="application/octet-stream",
                            headers={"X-Edgewire-Sha256": str(known["sha256"])})  # fmt: skip

    async def stop(request: Request) -> Response:
        run = run_of(request)
        if isinstance(run, str):
            return _not_found(run)
        run.stop.set()
        return JSONResponse({"run_id": run.run_id, "state": run.state, "stopping": not run.done})

    return [
        ("/api/datasets", guarded(datasets), ["POST"]),
        ("/api/blobs", guarded(put_pack), ["POST"]),
        ("/api/blobs/{sha256}", guarded(put_blob), ["PUT"]),
        ("/api/train", guarded(train), ["POST"]),
        ("/api/train/{run_id}", guarded(status), ["GET"]),
        ("/api/train/{run_id}/events", guarded(events), ["GET"]),
        ("/api/train/{run_id}/files/{name}", guarded(files), ["GET"]),
        ("/api/train/{run_id}/stop", guarded(stop), ["POST"]),
    ]


async def _follow(ctx: PortContext, run: RemoteRun, after: int) -> AsyncIterator[bytes]:
    """The run's events after ``after``, as they come, until its summary or error."""
    loop = asyncio.get_running_loop()
    seq = after
    quiet_since = loop.time()
    while True:
        changed = run.changed  # taken before reading: a wake-up in between is not missed
        chunk, seq, missed = run.ring.after(seq)
        if missed:
            yield sse.encode("gap", {"missed": missed})
        if chunk:
            yield chunk
            quiet_since = loop.time()
        last = run.ring.last
        ended = run.done or (last is not None and last[0] in FINAL)
        if ended and seq >= run.ring.last_seq:
            return
        if ctx.stopping.is_set():
            yield sse.encode("agent_stopping", {"error": "the agent is stopping"})
            return
        try:
            async with asyncio.timeout(POLL_S):
                await changed.wait()
        except TimeoutError:
            pass
        if loop.time() - quiet_since >= PING_S:
            yield sse.KEEPALIVE
            quiet_since = loop.time()
