"""Live runs over HTTP, behind the management token like the other ``/api`` routes.

POST /api/runs                     start one: {model, source, rate?, actions?, max_frames?, loop?}
GET  /api/runs                     every live run (newest first), with its summary so far
GET  /api/runs/{id}                one: state, summary, pin levels and transitions, actions
GET  /api/runs/{id}/events?after=N server-sent events: ``frame`` and ``action``, then ``summary``
POST /api/runs/{id}/stop           stop it (its pins low once this answers)
POST /api/runs/{id}/frame          a ``push`` run's next frame (one JPEG or PNG): 202
                                   {frame, dropped}; the newest frame wins
GET  /api/runs/{id}/frame          the newest classified frame as a JPEG (any source)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import Endpoint, holding, not_found, read_body
from edgewire.agent.http_common import guarded as guard
from edgewire.agent.live import LiveRun, LiveRuns, RunRequest
from edgewire.errors import ConfigError
from edgewire.jsonsafe import loads_strict
from edgewire.serve.store import NAME
from edgewire.wire import sse

MAX_BODY = 64 * 1024
MAX_SOURCE = 1024
MAX_RATE = 100.0
MAX_FRAMES = 10**9
#: A pushed frame's body: one JPEG or PNG (a browser's 1080p frame is well under this).
MAX_FRAME_BODY = 4 * 1024 * 1024
#: Seconds between keep-alive comments on an idle event stream.
KEEPALIVE_S = 10.0
_RUN_ID = re.compile(r"[0-9a-f]{12}")


def parse_run_request(body: Any) -> RunRequest:
    """A start request's JSON, checked field by field (one line naming the bad one)."""
    if not isinstance(body, dict):
        raise ConfigError("a run request is a JSON object: {model, source, rate, actions, ...}")
    known = {"model", "source", "rate", "actions", "max_frames", "loop"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"unknown field {unknown[0]!r:.60} (known: {', '.join(sorted(known))})")
    model, source = body.get("model"), body.get("source")
    if not isinstance(model, str) or not NAME.fullmatch(model):
        raise ConfigError(f"model must be a served model's name, got {model!r:.80}")
    if not isinstance(source, str) or not 0 < len(source) <= MAX_SOURCE or "\x00" in source:
        raise ConfigError(
            "source must be a camera (0, /dev/video0), a URL, a video file or a folder on the "
            f"agent's machine, or push (frames sent to the run), got {source!r:.80}"
        )
    rate = body.get("rate", 10.0)
    if (
        isinstance(rate, bool)
        or not isinstance(rate, int | float)
        or not math.isfinite(rate)
        or not 0 < rate <= MAX_RATE
    ):
        raise ConfigError(
            f"rate must be a number of Hz over 0 and at most {MAX_RATE:g}, got {rate!r}"
        )
    frames = body.get("max_frames")
    if frames is not None and (
        isinstance(frames, bool) or not isinstance(frames, int) or not 0 < frames <= MAX_FRAMES
    ):
        raise ConfigError(
            f"max_frames must be a whole number from 1 to {MAX_FRAMES}, got {frames!r}"
        )
    loop = body.get("loop", False)
    if not isinstance(loop, bool):
        raise ConfigError(f"loop must be true or false, got {loop!r:.40}")
    actions = body.get("actions")
    if actions is not None and not isinstance(actions, dict) and actions != "agent":
        raise ConfigError(f'actions must be a table or "agent", got {actions!r:.60}')
    return RunRequest(model=model, source=source, rate=float(rate), actions=actions,
                      max_frames=frames, loop=loop)  # fmt: skip


def _not_found(run_id: str) -> Response:
    # No error class means "no such run"; the answer says it plainly, as jobs_api does.
    return not_found(f"no live run {run_id[:40]!r} (finished runs are kept a while)",
                     "run_not_found")  # fmt: skip


def _no_frame(run_id: str) -> Response:
    return not_found(f"live run {run_id} has classified no frame yet", "no_frame")


def _image_type(request: Request) -> None:
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("image/"):
        raise ConfigError(
            "a frame is one JPEG or PNG image, sent with Content-Type image/jpeg or "
            f"image/png; got {kind[:60]!r}"
        )


def _after(request: Request) -> int:
    raw = request.query_params.get("after") or request.headers.get("last-event-id") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ConfigError(f"after is the number of the last event seen, got {raw[:40]!r}")
    return int(raw)


def live_routes(ctx: PortContext, runs: LiveRuns) -> list[tuple[str, Endpoint, list[str]]]:
    def guarded(handler: Endpoint) -> Endpoint:
        return guard(ctx.config, handler)

    def run_of(request: Request) -> LiveRun | None:
        run_id = str(request.path_params["id"])
        return runs.get(run_id) if _RUN_ID.fullmatch(run_id) else None

    async def start(request: Request) -> Response:
        raw = await read_body(request, cap=MAX_BODY, timeout=ctx.config.body_timeout)
        run = await runs.start(parse_run_request(loads_strict(raw, what="run request")))
        return JSONResponse({"id": run.id, **run.summary()}, status_code=201)

    async def listing(request: Request) -> Response:
        return JSONResponse({"runs": [r.summary() for r in runs.all_runs()]})

    async def detail(request: Request) -> Response:
        run = run_of(request)
        if run is None:
            return _not_found(str(request.path_params["id"]))
        return JSONResponse(run.detail())

    async def stop(request: Request) -> Response:
        run = run_of(request)
        if run is None:
            return _not_found(str(request.path_params["id"]))
        runs.stop(run.id)
        if run.task is not None and not run.task.done():
            # Answer once the pins are low (the loop notices within one frame).
            await asyncio.wait({run.task}, timeout=10.0)
        return JSONResponse(run.detail())

    async def events(request: Request) -> Response:
        run = run_of(request)
        if run is None:
            return _not_found(str(request.path_params["id"]))
        after = _after(request)
        return StreamingResponse(
            _stream(run, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _stream(run: LiveRun, after: int) -> AsyncIterator[bytes]:
        yield b": edgewire live run " + run.id.encode() + b"\n\n"
        seen = after
        while True:
            batch = run.events_after(seen)
            for seq, kind, data in batch:
                seen = seq
                yield sse.encode(kind, data, seq=seq)
                if kind == "summary":
                    return
            if run.done and not run.events_after(seen):
                # The summary left the ring long ago: say it again, then end.
                yield sse.encode("summary", run.summary(), seq=run.seq)
                return
            if ctx.stopping.is_set() and not run.done:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(_ended(run)), timeout=10.0)
                continue
            before = run.seq
            await run.wait_for_event(seen, KEEPALIVE_S)
            if run.seq == before and not run.done:
                yield sse.KEEPALIVE

    async def push(request: Request) -> Response:
        run = run_of(request)
        if run is None:
            return _not_found(str(request.path_params["id"]))
        run.pushable()  # refused before its body is read
        _image_type(request)
        with holding(ctx.frame_budget) as hold:
            raw = await read_body(request, cap=MAX_FRAME_BODY, timeout=ctx.config.body_timeout,
                                  hold=hold)  # fmt: skip
            taken = await run.take_pushed(raw)
        return JSONResponse(taken, status_code=202)

    async def shown(request: Request) -> Response:
        run = run_of(request)
        if run is None:
            return _not_found(str(request.path_params["id"]))
        newest = await run.jpeg()
        if newest is None:
            return _no_frame(run.id)
        number, jpeg = newest
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Edgewire-Frame": str(number)})  # fmt: skip

    async def _ended(run: LiveRun) -> None:
        if run.task is not None:
            await asyncio.wait({run.task})

    return [
        ("/api/runs", guarded(start), ["POST"]),
        ("/api/runs", guarded(listing), ["GET"]),
        ("/api/runs/{id}", guarded(detail), ["GET"]),
        ("/api/runs/{id}/events", guarded(events), ["GET"]),
        ("/api/runs/{id}/stop", guarded(stop), ["POST"]),
        ("/api/runs/{id}/frame", guarded(push), ["POST"]),
        ("/api/runs/{id}/frame", guarded(shown), ["GET"]),
    ]
