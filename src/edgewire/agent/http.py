"""The agent's HTTP side (FastAPI): KServe v2 health, server metadata, metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from edgewire import __version__

if TYPE_CHECKING:
    from edgewire.agent.server import Agent


def create_app(agent: Agent) -> FastAPI:
    app = FastAPI(title="edgewire agent", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = agent.ready
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "edgewire", "version": __version__, "extensions": sorted(agent.features)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(agent.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
