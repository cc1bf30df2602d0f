"""The agent's HTTP side: KServe v2 health, metadata and inference, model management, metrics.

The inference route is a plain Starlette endpoint (no request model, no
validation layer in between): it reads the body under a size cap and a timeout,
holding its bytes of the agent's shared byte budget until it has answered,
hands it to the sans-IO KServe codec, and answers through the shared batcher.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from edgewire import __version__
from edgewire.agent.context import PortContext
from edgewire.agent.http_common import (
    BodyHold,
    Endpoint,
    check_management,
    error_response,
    holding,
    read_body,
)
from edgewire.agent.management import management_routes
from edgewire.agent.openapi import OPENAPI_PATH, document
from edgewire.agent.sessions import Sessions
from edgewire.errors import DataError, EdgewireError, ModelNotFound, ProtocolError
from edgewire.serve import kserve
from edgewire.serve.backends.trt_cache import BUILDS
from edgewire.serve.model import TensorInfo
from edgewire.serve.runtime import LoadedModel

Route = tuple[str, Endpoint, list[str]]

#: Inference bodies up to this size are parsed on the event loop; bigger ones in a thread.
PARSE_INLINE_BYTES = 256 * 1024


def create_app(agent: PortContext, *, routes: Iterable[Route] = ()) -> FastAPI:
    """The app; ``routes`` are more ``(path, endpoint, methods)`` to mount (automation's)."""
    # Not FastAPI's generated /openapi.json: ours (agent/openapi.py), behind the token.
    app = FastAPI(
        title="edgewire agent",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    serving = agent.serving
    # The dashboard's browser sessions (check_management reads them from here).
    app.state.sessions = Sessions()

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = agent.is_ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgewire", "version": __version__, "extensions": ["binary_tensor_data"]}

    automation = agent.config.automation
    spec = document(hooks=None if automation is None else [h.name for h in automation.hooks])

    @app.get(OPENAPI_PATH)
    async def openapi(request: Request) -> Response:
        try:
            check_management(agent.config, request)
        except EdgewireError as exc:
            return error_response(exc)
        return JSONResponse(spec)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def loaded_for(request: Request) -> LoadedModel:
        """The model the path names, served in the version it names (if it names one)."""
        name = request.path_params["name"]
        loaded = serving.loaded(name)
        version = request.path_params.get("version")
        if version is not None and str(version) != str(loaded.version.version):
            raise ModelNotFound(
                f"model {name!r} serves version {loaded.version.version}, not {version}"
            )
        return loaded

    async def model_metadata(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            loaded = loaded_for(request)
            versions = [str(v.version) for v in serving.store.versions(name)]
        except EdgewireError as exc:
            return error_response(exc)
        body = kserve.model_metadata(
            name=name,
            versions=versions,
            platform=loaded.platform,
            inputs=[_spec(t) for t in loaded.inputs],
            outputs=[_spec(t) for t in loaded.outputs],
        )
        engine = BUILDS.get(name)  # a TensorRT build; an extra field KServe clients ignore
        if engine is not None:
            body["edgewire"] = {"engine": engine}
        return JSONResponse(body)

    async def model_config(request: Request) -> Response:
        """Triton's model-configuration extension: batching, inputs, outputs."""
        name = request.path_params["name"]
        try:
            loaded = loaded_for(request)
        except EdgewireError as exc:
            return error_response(exc)
        policy = serving.policy_of(name)
        body = kserve.model_config(
            name=name,
            platform=loaded.platform,
            max_batch_size=policy.max_batch_size,
            max_queue_delay_ms=policy.max_queue_delay_ms,
            max_queue=policy.max_queue,
            inputs=[_spec(t) for t in loaded.inputs],
            outputs=[_spec(t) for t in loaded.outputs],
        )
        return JSONResponse(body)

    async def model_ready(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            loaded_for(request)
            ok = True
        except ModelNotFound:
            ok = False
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 404)

    async def infer(request: Request) -> Response:
        # The body's bytes stay held of the shared budget until the answer is made.
        with holding(agent.frame_budget) as hold:
            return await infer_held(request, hold)

    async def infer_held(request: Request, hold: BodyHold) -> Response:
        name = request.path_params["name"]
        try:
            loaded = loaded_for(request)
            header_length = _header_length(request)
            body = await read_body(
                request,
                cap=agent.config.max_request_bytes,
                timeout=agent.config.body_timeout,
                total=agent.config.frame_timeout,  # as one native frame: first byte to last
                hold=hold,
            )
            parse = functools.partial(
                kserve.parse_infer_request,
                body,
                header_length=header_length,
                inputs=[_spec(t) for t in loaded.inputs],
                max_body=agent.config.max_request_bytes,
            )
            # A big JSON body takes a while to parse: off the loop, so others are served.
            parsed = await asyncio.to_thread(parse) if len(body) > PARSE_INLINE_BYTES else parse()
            served = await serving.infer(name, parsed.inputs)
            agent.metrics.latency_ms["http"].append(
                served.result.queue_ms + served.result.compute_ms
            )
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
        app.router.add_route(prefix + "/config", model_config, methods=["GET"])
        app.router.add_route(prefix + "/infer", infer, methods=["POST"])
    for path, endpoint, methods in [*management_routes(agent), *routes]:
        app.router.add_route(path, endpoint, methods=methods)
    return app


def _header_length(request: Request) -> int | None:
    """The Inference-Header-Content-Length header: None when absent, else a whole number."""
    raw = request.headers.get(kserve.HEADER_LENGTH)
    if raw is None:
        return None
    value = raw.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise ProtocolError(
            f"{kserve.HEADER_LENGTH} must be the byte length of the JSON part of the body "
            f"(a whole number), got {raw!r}"
        )
    return int(value)


def _spec(info: TensorInfo) -> kserve.TensorSpec:
    return kserve.TensorSpec(name=info.name, dtype=info.dtype, shape=tuple(info.shape))
