"""Workspaces on the agent over HTTP (the dashboard's ai_nano flow): classes, images, split.

    GET    /api/workspaces                              {"workspaces": [summary, ...]}
    POST   /api/workspaces                              {"name", "classes"} -> 201 detail
    GET    /api/workspaces/{ws}                         detail: + "images" {class: [file]}
    DELETE /api/workspaces/{ws}                         {"deleted": ws}
    POST   /api/workspaces/{ws}/images/{cls}            body: one JPEG/PNG/WebP -> 201
    GET    /api/workspaces/{ws}/images/{cls}/{file}     the image (?thumb=1: a small JPEG)
    DELETE /api/workspaces/{ws}/images/{cls}/{file}     {"deleted": file}
    POST   /api/workspaces/{ws}/capture                 {"class", "source", "count", "every"}
    POST   /api/workspaces/{ws}/split                   {"ratios": [a, b, c], "seed": n}
    POST   /api/workspaces/{ws}/dataset                 the split, as a data set for /api/train

Each workspace is a :class:`~edgewire.project.workspace.Workspace` folder under
``DATA_DIR/workspaces/NAME``, the same layout the CLI makes on a laptop. Every
change to a workspace holds its lock (a split never copies a file an upload or a
delete is changing); a capture holds it for its whole run, so others wait for it
(at most ``LOCK_WAIT_S``, then 503). An image is checked before it is stored: the
declared body length against ``MAX_IMAGE_BYTES`` before a byte is read, the pixel
count from its header before it is decoded, and a whole decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from edgewire.agent import workspace_store as store
from edgewire.agent.blobs import BlobStore
from edgewire.agent.context import PortContext
from edgewire.agent.http_common import Endpoint, guarded, holding, not_found, read_body
from edgewire.agent.live import check_source
from edgewire.agent.live_frames import PUSH
from edgewire.agent.remote_runs import RemoteRuns
from edgewire.config import AgentConfig
from edgewire.errors import BusyError, ConfigError, DataError, EdgewireError, ProtocolError
from edgewire.fsutil import disk_errors
from edgewire.jsonsafe import loads_strict
from edgewire.project.capture import Captured, capture
from edgewire.project.imagefiles import check_image_bytes
from edgewire.project.split import DEFAULT_RATIOS, SPLIT_NAMES, split_workspace
from edgewire.project.workspace import CONFIG_FILE, DATASET, Workspace, check_classes
from edgewire.serve import kserve
from edgewire.serve.store import check_name

#: The most image names a ``?limit=`` may ask for per class.
MAX_LIST_LIMIT = 100_000
#: The folder under the data dir that holds the agent's workspaces.
WORKSPACES = "workspaces"
MAX_WORKSPACES = 64
MAX_CLASSES = 256
#: One uploaded image's body, and its pixels (checked from the header, before decoding).
MAX_IMAGE_BYTES = 8 << 20
MAX_IMAGE_PIXELS = 4096 * 4096
#: Seconds one image's body may take in all.
IMAGE_BODY_S = 60.0
THUMB_SIDE = 96
#: Images decoded at once (each may take MAX_IMAGE_PIXELS x 4 bytes while it decodes).
DECODERS = 2
#: A capture: frames, seconds between them, and its whole run.
MAX_CAPTURE = 1000
MAX_EVERY_S = 60.0
MAX_CAPTURE_S = 300.0
#: What a captured frame is assumed to take on disk, for the disk check before it starts.
CAPTURE_FRAME_BYTES = 256 * 1024
#: Seconds a change waits for another one on the same workspace, then 503.
LOCK_WAIT_S = 30.0
JSON_CAP = 64 * 1024
#: Images served in one read (bigger ones are streamed from the file).
INLINE_BYTES = 16 << 20
_MEDIA = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
          ".bmp": "image/bmp", ".webp": "image/webp"}  # fmt: skip
_CACHE = {"Cache-Control": "private, max-age=86400"}  # names are the content's hash


def workspace_path(cfg: AgentConfig, name: str) -> Path:
    """The folder of workspace ``name`` (checked: a plain name, no path)."""
    check_name(name, what="workspace name")
    return cfg.data_dir / WORKSPACES / name


class _Missing(Exception):
    """A workspace or image that is not there: answered 404 (no error class means that)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message, self.code = message, code

    def response(self) -> Response:
        return not_found(self.message, self.code)


class _Locks:
    """One lock per workspace that exists (so at most ``MAX_WORKSPACES`` and a few)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with asyncio.timeout(LOCK_WAIT_S):
                await lock.acquire()
        except TimeoutError:
            raise BusyError(
                f"workspace {name!r} is busy (a capture or a split is under way); "
                "try again when it is done"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def forget(self, name: str) -> None:
        self._locks.pop(name, None)


_LOCKS: dict[int, _Locks] = {}


def workspace_locks(ctx: PortContext) -> _Locks:
    """The workspace locks of ``ctx``'s agent: what reads a workspace's split to send it
    (a push, a deploy's gate samples) holds its lock as a split or an upload does."""
    return _LOCKS.setdefault(id(ctx), _Locks())


def workspaces_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    cfg = ctx.config
    folder = cfg.data_dir / WORKSPACES
    store.sweep(folder)
    locks = workspace_locks(ctx)
    creating = asyncio.Lock()
    capturing = asyncio.Lock()
    decoders = asyncio.Semaphore(DECODERS)
    # A split's dataset/ is the images and labels.txt: it must fit one data set upload.
    max_images = max(cfg.max_dataset_files - 1, 1)

    def route(handler: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Missing as missing:
                return missing.response()

        return guarded(cfg, endpoint)

    async def opened(name: str) -> Workspace:
        root = workspace_path(cfg, name)
        ws = await asyncio.to_thread(store.open_workspace, root)
        if ws is None:
            raise _Missing(f"no workspace {name!r} on this agent", "workspace_not_found")
        return ws

    async def json_body(request: Request, known: set[str]) -> dict[str, Any]:
        with holding(ctx.frame_budget) as hold:
            raw = await read_body(request, cap=JSON_CAP, timeout=cfg.body_timeout, hold=hold)
        body = loads_strict(raw, what="the body") if raw.strip() else {}
        if not isinstance(body, dict):
            raise ProtocolError("the body must be a JSON object")
        unknown = sorted(set(body) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown[:5]}; send {', '.join(sorted(known))}")
        return body

    async def listing(request: Request) -> Response:
        return JSONResponse({"workspaces": await asyncio.to_thread(_summaries, folder)})

    async def create(request: Request) -> Response:
        body = await json_body(request, {"name", "classes"})
        name = body.get("name")
        if not isinstance(name, str):
            raise ConfigError("name must be the workspace's name (a string)")
        root = workspace_path(cfg, name)
        classes = body.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ConfigError('classes must be a list of names, such as ["cat", "dog"]')
        if len(classes) > MAX_CLASSES:
            raise ConfigError(f"at most {MAX_CLASSES} classes, got {len(classes)}")
        check_classes(classes)
        async with creating:
            found = await asyncio.to_thread(store.names, folder)
            if name in found:
                return Response(
                    kserve.error_body(f"workspace {name!r} exists already; choose another "
                                      "name or delete it first", "workspace_exists"),
                    status_code=409, media_type="application/json",
                )  # fmt: skip
            if len(found) >= MAX_WORKSPACES:
                raise ConfigError(
                    f"the agent holds {MAX_WORKSPACES} workspaces, its limit; delete one first"
                )
            await asyncio.to_thread(ctx.disk.check, 64 * 1024, "a new workspace")
            ws = await asyncio.to_thread(_init, root, classes)
        ctx.disk.changed()
        return JSONResponse(await asyncio.to_thread(store.detail, ws), status_code=201)

    async def show(request: Request) -> Response:
        raw = request.query_params.get("limit")
        limit = None
        if raw is not None:
            if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIST_LIMIT:
                raise ConfigError(f"limit must be a number from 1 to {MAX_LIST_LIMIT}, got {raw!r}")
            limit = int(raw)
        ws = await opened(str(request.path_params["ws"]))
        return JSONResponse(await asyncio.to_thread(store.detail, ws, limit=limit))

    async def delete(request: Request) -> Response:
        name = str(request.path_params["ws"])
        root = workspace_path(cfg, name)
        # Not opened: a workspace whose edgewire.toml is broken can still be deleted.
        exists = (root / CONFIG_FILE).is_file
        if not await asyncio.to_thread(exists):
            raise _Missing(f"no workspace {name!r} on this agent", "workspace_not_found")
        async with locks.hold(name):
            if not await asyncio.to_thread(exists):  # gone while we waited
                raise _Missing(f"no workspace {name!r} on this agent", "workspace_not_found")
            await asyncio.to_thread(store.remove, root)
            locks.forget(name)
        ctx.disk.changed()
        return JSONResponse({"deleted": name})

    async def add_image(request: Request) -> Response:
        name, cls = str(request.path_params["ws"]), str(request.path_params["cls"])
        (await opened(name)).class_dir(cls)  # refused before the body is read
        with holding(ctx.frame_budget) as hold:
            data = await read_body(request, cap=MAX_IMAGE_BYTES, timeout=cfg.body_timeout,
                                   total=IMAGE_BODY_S, hold=hold)  # fmt: skip
            if not data:
                raise DataError("the body is empty: send one JPEG, PNG or WebP image")
            async with decoders:
                stored, suffix = await asyncio.to_thread(
                    check_image_bytes, data, max_pixels=MAX_IMAGE_PIXELS
                )
            if stored is not data:  # a WebP, now a PNG: both in hand for a moment
                hold.hold(len(data) + len(stored))
            async with locks.hold(name):
                ws = await opened(name)
                held = await asyncio.to_thread(store.counts, ws)
                if sum(held.values()) >= max_images:
                    raise ConfigError(
                        f"workspace {name!r} holds {sum(held.values())} images, the most a "
                        f"data set may have (max_dataset_files); delete some first"
                    )
                await asyncio.to_thread(ctx.disk.check, len(stored), "the image")
                path, new = await asyncio.to_thread(_add, ws, cls, stored, suffix)
        return JSONResponse({"file": path.name, "new": new, "count": held[cls] + new},
                            status_code=201)  # fmt: skip

    async def image_of(request: Request) -> tuple[Workspace, Path]:
        ws = await opened(str(request.path_params["ws"]))
        file = str(request.path_params["file"])
        path = await asyncio.to_thread(store.image_path, ws, str(request.path_params["cls"]), file)
        if path is None:
            raise _Missing(f"no image {file!r} in that class", "image_not_found")
        return ws, path

    async def get_image(request: Request) -> Response:
        thumb = _flag(request.query_params.get("thumb", "0"), "thumb")
        ws, path = await image_of(request)
        if thumb:
            async with decoders:
                small = await asyncio.to_thread(
                    store.thumbnail, ws, path, side=THUMB_SIDE, max_pixels=4 * MAX_IMAGE_PIXELS
                )
            return Response(small, media_type="image/jpeg", headers=_CACHE)
        media = _MEDIA.get(path.suffix.lower(), "application/octet-stream")
        data = await asyncio.to_thread(_read_small, path)
        if data is None:
            return FileResponse(path, media_type=media, headers=_CACHE)
        return Response(data, media_type=media, headers=_CACHE)

    async def delete_image(request: Request) -> Response:
        name = str(request.path_params["ws"])
        await image_of(request)
        async with locks.hold(name):
            ws, path = await image_of(request)
            await asyncio.to_thread(store.delete_image, ws, path)
        ctx.disk.changed()
        return JSONResponse({"deleted": path.name})

    async def capture_frames(request: Request) -> Response:
        name = str(request.path_params["ws"])
        body = await json_body(request, {"class", "source", "count", "every"})
        cls, source = body.get("class"), body.get("source")
        if not isinstance(cls, str) or not isinstance(source, str):
            raise ConfigError("capture needs class and source (strings)")
        count = body.get("count", 10)
        every = body.get("every", 0.0)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CAPTURE:
            raise ConfigError(f"count must be a whole number in 1..{MAX_CAPTURE}, got {count!r}")
        if (isinstance(every, bool) or not isinstance(every, int | float)
                or not 0 <= every <= MAX_EVERY_S):  # fmt: skip
            raise ConfigError(f"every must be seconds in 0..{MAX_EVERY_S:g}, got {every!r}")
        if count * every > MAX_CAPTURE_S:
            raise ConfigError(
                f"count x every is {count * every:g} s, over the {MAX_CAPTURE_S:g} s a capture "
                "may take; capture in parts"
            )
        (await opened(name)).class_dir(cls)
        if source == PUSH:  # a live run's frames from its caller, not a source to open here
            raise ConfigError("capture needs a camera, file or stream; 'push' is for live runs")
        check_source(source, cfg.run_source_allow)
        if capturing.locked():
            raise BusyError("a capture is under way on this agent; try again when it is done")
        async with capturing, locks.hold(name):
            ws = await opened(name)
            held = sum((await asyncio.to_thread(store.counts, ws)).values())
            room = min(count, max_images - held)
            if room <= 0:
                raise ConfigError(
                    f"workspace {name!r} holds {held} images, the most a data set may have "
                    "(max_dataset_files); delete some first"
                )
            await asyncio.to_thread(ctx.disk.check, room * CAPTURE_FRAME_BYTES, "the capture")
            try:
                got = await asyncio.to_thread(_capture, ctx, ws, cls, source, room, float(every))
            finally:
                ctx.disk.changed()
        return JSONResponse({"saved": got.saved, "duplicates": got.duplicates, "seen": got.seen})

    async def split(request: Request) -> Response:
        name = str(request.path_params["ws"])
        body = await json_body(request, {"ratios", "seed"})
        ratios = _ratios(body.get("ratios", list(DEFAULT_RATIOS)))
        seed = body.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ConfigError(f"seed must be a whole number in 0..{2**32 - 1}, got {seed!r}")
        await opened(name)
        async with locks.hold(name):
            ws = await opened(name)
            need = await asyncio.to_thread(store.dataset_bytes, ws)
            await asyncio.to_thread(ctx.disk.check, need, "the split")
            try:
                table = await asyncio.to_thread(_split, ws, ratios, seed)
            finally:
                ctx.disk.changed()
        totals = {part: sum(c[i] for c in table.values()) for i, part in enumerate(SPLIT_NAMES)}
        return JSONResponse({**totals, "classes": {
            cls: dict(zip(SPLIT_NAMES, c, strict=True)) for cls, c in table.items()}})  # fmt: skip

    async def dataset(request: Request) -> Response:
        name = str(request.path_params["ws"])
        await json_body(request, set())
        await opened(name)
        runs = RemoteRuns.of(ctx)
        blobs = runs.store if runs is not None else BlobStore(cfg.data_dir, ttl_s=cfg.dataset_ttl_s)
        async with locks.hold(name):
            ws = await opened(name)
            split_dir = ws.root / DATASET
            if not await asyncio.to_thread((split_dir / SPLIT_NAMES[0]).is_dir):
                raise ConfigError(f"workspace {name!r} has no split yet; split it first")
            try:
                done = await asyncio.to_thread(
                    store.register_dataset, blobs, split_dir, max_files=cfg.max_dataset_files,
                    max_bytes=cfg.max_dataset_bytes,
                    check_disk=lambda n: ctx.disk.check(n, "the data set"),
                )  # fmt: skip
            finally:
                ctx.disk.changed()
        manifest = done.manifest
        if runs is not None:
            await asyncio.to_thread(blobs.sweep, in_use={*runs.in_use(), manifest.id})
        return JSONResponse({"dataset": manifest.id, "files": len(manifest.files),
                             "bytes": manifest.total_bytes})  # fmt: skip

    base = "/api/workspaces"
    one = base + "/{ws}"
    image = one + "/images/{cls}/{file}"
    return [
        (base, route(listing), ["GET"]),
        (base, route(create), ["POST"]),
        (one, route(show), ["GET"]),
        (one, route(delete), ["DELETE"]),
        (one + "/images/{cls}", route(add_image), ["POST"]),
        (image, route(get_image), ["GET"]),
        (image, route(delete_image), ["DELETE"]),
        (one + "/capture", route(capture_frames), ["POST"]),
        (one + "/split", route(split), ["POST"]),
        (one + "/dataset", route(dataset), ["POST"]),
    ]


def _summaries(folder: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name in store.names(folder):
        try:
            ws = store.open_workspace(folder / name)
        except EdgewireError as exc:
            found.append({"name": name, "classes": [], "counts": {}, "split": None,
                          "error": exc.message})  # fmt: skip
            continue
        if ws is not None:
            found.append(store.summary(ws))
    return found


def _init(root: Path, classes: list[str]) -> Workspace:
    with disk_errors("make the workspace", default=DataError):
        return Workspace.init(root, classes)


def _add(ws: Workspace, cls: str, data: bytes, suffix: str) -> tuple[Path, bool]:
    with disk_errors("store the image", default=DataError):
        return ws.add_image(cls, data, suffix)


def _read_small(path: Path) -> bytes | None:
    """The file's bytes if it is small (read from one open file: a delete racing this
    one cannot make it fail half-way); None for a big one."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > INLINE_BYTES:
                return None
            return f.read(INLINE_BYTES + 1)
    except FileNotFoundError:
        raise _Missing("that image was just deleted", "image_not_found") from None


def _capture(ctx: PortContext, ws: Workspace, cls: str, source: str, count: int,
             every: float) -> Captured:  # fmt: skip
    def on_frame(saved: int) -> None:
        if ctx.stopping.is_set():
            raise BusyError(f"the agent is stopping; {saved} frame(s) were kept")

    with disk_errors("store the frames", default=DataError):
        return capture(ws, cls, source, count=count, duration=MAX_CAPTURE_S, every=every,
                       on_frame=on_frame)  # fmt: skip


def _split(
    ws: Workspace, ratios: tuple[float, float, float], seed: int
) -> dict[str, tuple[int, int, int]]:
    with disk_errors("write the split", default=DataError):
        return split_workspace(ws, ratios=ratios, seed=seed).counts


def _ratios(value: object) -> tuple[float, float, float]:
    numbers = value if isinstance(value, list) else []
    if len(numbers) != 3 or not all(
        isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) and r >= 0
        for r in numbers
    ):
        raise ConfigError(
            f"ratios must be three numbers >= 0 like [0.8, 0.1, 0.1], got {value!r:.80}"
        )
    a, b, c = (float(r) for r in numbers)
    if abs(a + b + c - 1.0) > 1e-6 or a == 0:
        raise ConfigError(f"ratios must add up to 1 with a train share above 0, got {value!r:.80}")
    return a, b, c


def _flag(value: str, what: str) -> bool:
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no", ""):
        return False
    raise ConfigError(f"{what} must be 1 or 0, got {value[:20]!r}")
