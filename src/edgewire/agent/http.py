"""The agent's HTTP side: KServe v2 health, metadata and inference, model management, metrics.

The inference route is a plain Starlette endpoint (no request model, no
validation layer in between): it reads the body under a size cap and a timeout,
hands it to the sans-IO KServe codec, and answers through the shared batcher.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from edgewire import __version__
from edgewire.agent.management import management_routes
from edgewire.config import is_loopback
from edgewire.errors import (
    AuthError,
    BusyError,
    ConfigError,
    DataError,
    EdgewireError,
    FrameTooLarge,
    ModelError,
    PeerTimeout,
    ProtocolError,
)
from edgewire.serve import kserve

if TYPE_CHECKING:
    from edgewire.agent.server import Agent

#: HTTP status for each error code (anything else is 500).
STATUS = {
    DataError.code: 400,
    ProtocolError.code: 400,
    ConfigError.code: 400,
    FrameTooLarge.code: 413,
    ModelError.code: 404,
    BusyError.code: 503,
    PeerTimeout.code: 504,
    AuthError.code: 401,
}
BODY_CHUNK_TIMEOUT = 10.0
#: Inference bodies up to this size are parsed on the event loop; bigger ones in a thread.
PARSE_INLINE_BYTES = 256 * 1024


def error_response(exc: EdgewireError, *, status: int | None = None) -> Response:
    code = status or STATUS.get(exc.code, 500)
    headers = {"Retry-After": "1"} if code == 503 else None
    return Response(
        kserve.error_body(exc.message, exc.code),
        status_code=code,
        media_type="application/json",
        headers=headers,
    )


async def iter_body(
    request: Request, *, cap: int, timeout: float = BODY_CHUNK_TIMEOUT, total: float | None = None
) -> AsyncIterator[bytes]:
    """The request body in chunks, refused past ``cap`` bytes, when a chunk takes over
    ``timeout`` s, or when the whole body takes over ``total`` s."""
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        # No decompression at all: a 1 kB gzip bomb cannot become 10 GB here.
        raise ProtocolError(
            f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed"
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ProtocolError(f"bad Content-Length {declared!r}") from None
        if size > cap:
            raise FrameTooLarge(f"body of {size} bytes is over the limit of {cap}")
    received = 0
    loop = asyncio.get_running_loop()
    give_up = None if total is None else loop.time() + total
    stream = request.stream().__aiter__()
    while True:
        wait = timeout if give_up is None else min(timeout, give_up - loop.time())
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            if give_up is not None and loop.time() >= give_up:
                raise PeerTimeout(f"request body took over {total:g} s") from None
            raise PeerTimeout(f"request body stalled for {timeout:g} s") from None
        received += len(chunk)
        if received > cap:
            raise FrameTooLarge(f"body is over the limit of {cap} bytes")
        yield chunk


async def read_body(
    request: Request, *, cap: int, timeout: float = BODY_CHUNK_TIMEOUT, total: float | None = None
) -> bytes:
    chunks = iter_body(request, cap=cap, timeout=timeout, total=total)
    return b"".join([chunk async for chunk in chunks])


def check_management(agent: Agent, request: Request) -> None:
    """Management needs the token; with none configured, only loopback callers."""
    token = agent.config.token
    if token:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise AuthError("a valid 'Authorization: Bearer <token>' header is required")
        return
    client = request.client.host if request.client else ""
    if not is_loopback(client):
        raise AuthError("management from other hosts needs the agent to run with --token")


def create_app(agent: Agent) -> FastAPI:
    app = FastAPI(title="edgewire agent", version=__version__, docs_url=None, redoc_url=None)
    serving = agent.serving

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = agent.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgewire", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def model_metadata(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            loaded = serving.loaded(name)
            versions = [str(v.version) for v in serving.store.versions(name)]
        except EdgewireError as exc:
            return error_response(exc)
        body = kserve.model_metadata(
            name=name,
            versions=versions,
            platform="onnxruntime_onnx",
            inputs=[_spec(t) for t in loaded.inputs],
            outputs=[_spec(t) for t in loaded.outputs],
        )
        return JSONResponse(body)

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        ok = name in serving.names()
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 404)

    async def infer(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            loaded = serving.loaded(name)
            version = request.path_params.get("version")
            if version is not None and str(version) != str(loaded.version.version):
                raise ModelError(
                    f"model {name!r} serves version {loaded.version.version}, not {version}"
                )
            body = await read_body(
                request,
                cap=agent.config.max_request_bytes,
                timeout=agent.config.body_timeout,
                total=agent.config.frame_timeout,  # as one native frame: first byte to last
            )
            header_length = request.headers.get("inference-header-content-length")
            parse = functools.partial(
                kserve.parse_infer_request,
                body,
                header_length=int(header_length)
                if header_length and header_length.isascii() and header_length.isdigit()
                else None,
                inputs=[_spec(t) for t in loaded.inputs],
                max_body=agent.config.max_request_bytes,
            )
            # A big JSON body takes a while to parse: off the loop, so others are served.
            parsed = await asyncio.to_thread(parse) if len(body) > PARSE_INLINE_BYTES else parse()
            served = await serving.infer(name, parsed.inputs)
            outputs = served.result.outputs
            if parsed.outputs is not None:
                missing = [o.name for o in parsed.outputs if o.name not in outputs]
                if missing:
                    raise DataError(f"unknown output(s) {missing}; the model gives {list(outputs)}")
            payload, headers = kserve.encode_infer_response(
                model_name=name,
                model_version=str(served.version.version),
                request_id=parsed.id,
                outputs=outputs,
                requested=parsed.outputs,
                binary_default=parsed.binary_default,
            )
        except EdgewireError as exc:
            agent.metrics.infer_errors_total.labels("http", exc.code).inc()
            return error_response(exc)
        agent.metrics.answered["http"].inc()
        return Response(payload, headers=headers)

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_route(prefix, model_metadata, methods=["GET"])
        app.router.add_route(prefix + "/ready", model_ready, methods=["GET"])
        app.router.add_route(prefix + "/infer", infer, methods=["POST"])
    for path, endpoint, methods in management_routes(agent):
        app.router.add_route(path, endpoint, methods=methods)
    return app


def _spec(info: Any) -> kserve.TensorSpec:
    return kserve.TensorSpec(name=info.name, dtype=info.dtype, shape=tuple(info.shape))
