"""Other agents this agent acts on (the dashboard's several agents): registry and proxy.

    GET    /api/agents                         {"agents": [{"name", "url"}]}
    POST   /api/agents                         {"name", "url", "token"} -> 201 {"name", "url"}
    DELETE /api/agents/{name}                  {"deleted": name}
    ANY    /api/agents/{name}/proxy/{path}     the request, sent on to that agent's own API

The proxy sends the method, the query string, the body (streamed, capped like a model
upload) and a few request headers on to ``api/``, ``v2/`` or ``metrics`` of the other
agent, with that agent's token; its answer comes back streamed as it arrives (event
streams too), with its status and the headers that matter. It never goes on to an
agent's own ``api/agents`` (no chains), nor to a path with ``..`` or encoded slashes.
Data set pushes and deploys are in ``deploy_api.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import unquote

import httpx
from httpx import USE_CLIENT_DEFAULT
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgewire.agent.context import PortContext
from edgewire.agent.deploy_api import deploy_routes
from edgewire.agent.http_common import Endpoint, guarded, iter_body, read_body
from edgewire.agent.peer_registry import (
    ACTION_READ_S,
    CONNECT_S,
    POOL_S,
    WRITE_S,
    Peer,
    Peers,
    parse_peer_body,
    unknown_agent,
)
from edgewire.agent.sessions import CSRF_HEADER
from edgewire.errors import ConfigError, ConnectError, PeerTimeout, ProtocolError, one_line
from edgewire.jsonsafe import loads_strict

log = logging.getLogger(__name__)

#: Methods the proxy carries.
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
#: Request headers sent on (besides x-edgewire-*), and answer headers sent back.
REQUEST_HEADERS = ("content-type", "content-length", "accept", "last-event-id")
ANSWER_HEADERS = (
    "content-type", "content-length", "content-encoding", "x-edgewire-sha256", "retry-after",
    "content-disposition", "cache-control", "x-accel-buffering",
)  # fmt: skip
#: Media types a proxied answer keeps; any other goes back as a download, so another
#: agent cannot put a page of its own on this dashboard's origin.
ANSWER_TYPES = (
    "application/json", "text/event-stream", "text/plain", "image/jpeg", "image/png",
    "image/webp", "application/octet-stream",
)  # fmt: skip
#: What every proxied answer carries: no script runs from it, nothing sniffs its type.
SANDBOX = {
    "content-security-policy": "default-src 'none'; sandbox",
    "x-content-type-options": "nosniff",
}
MAX_QUERY = 8192
_PREFIX_SEGMENTS = 5  # "", "api", "agents", NAME, "proxy"


def peers_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    cfg = ctx.config
    peers = Peers(ctx)

    async def listing(request: Request) -> Response:
        return JSONResponse({"agents": peers.listing()})

    async def add(request: Request) -> Response:
        raw = await read_body(request, cap=16 * 1024, timeout=cfg.body_timeout)
        name, url, token = parse_peer_body(loads_strict(raw, what="the body"))
        peer = await peers.add(name, url, token)
        return JSONResponse(peer.public(), status_code=201)

    async def remove(request: Request) -> Response:
        name = str(request.path_params["name"])
        if not await peers.remove(name):
            return unknown_agent(name)
        return JSONResponse({"deleted": name})

    async def proxy(request: Request) -> Response:
        name = str(request.path_params["name"])
        peer = peers.get(name)
        if peer is None:
            return unknown_agent(name)
        path = _forward_path(request)
        return await _forward(peers, peer, request, path, cap=cfg.max_upload_bytes,
                              body_timeout=cfg.body_timeout)  # fmt: skip

    return [
        ("/api/agents", guarded(cfg, listing), ["GET"]),
        ("/api/agents", guarded(cfg, add), ["POST"]),
        ("/api/agents/{name}", guarded(cfg, remove), ["DELETE"]),
        ("/api/agents/{name}/proxy/{path:path}", guarded(cfg, proxy), METHODS),
        *deploy_routes(ctx, peers),
    ]


def _forward_path(request: Request) -> str:
    """The path to ask the other agent for, as the client encoded it; ConfigError for
    one the proxy does not carry."""
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes):
        segments = raw_path.decode("latin-1").split("/")[_PREFIX_SEGMENTS:]
    else:  # a server that gives no raw path: the decoded one, re-encoded as it is
        segments = str(request.path_params["path"]).split("/")
    if any("%2f" in s.lower() or "%5c" in s.lower() or "\\" in s for s in segments):
        raise ConfigError("the proxied path must not hold encoded slashes or backslashes")
    decoded = [unquote(s) for s in segments]
    if any(s in ("", ".", "..") for s in decoded):
        raise ConfigError("the proxied path must not hold empty, '.' or '..' segments")
    plain = "/".join(decoded)
    if plain == "api/agents" or plain.startswith("api/agents/"):
        raise ConfigError("the proxy does not go on to another agent's agents (no chains)")
    if not (plain.startswith(("api/", "v2/")) or plain in ("v2", "metrics")):
        raise ConfigError("the proxy goes only to paths under api/ or v2/, or to metrics")
    return "/" + "/".join(segments)


def _request_headers(request: Request) -> dict[str, str]:
    headers = {
        k: v
        for k, v in request.headers.items()
        if k in REQUEST_HEADERS or (k.startswith("x-edgewire-") and k != CSRF_HEADER)
    }
    # Bytes go through as they are; the other agent compresses nothing for us.
    headers["accept-encoding"] = "identity"
    return headers


async def _forward(
    peers: Peers, peer: Peer, request: Request, path: str, *, cap: int, body_timeout: float
) -> Response:
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        raise ProtocolError(
            f"Content-Encoding {encoding[:40]!r} is not accepted; send the body uncompressed"
        )
    query = request.scope.get("query_string", b"")
    if len(query) > MAX_QUERY:
        raise ProtocolError(f"the query string is over {MAX_QUERY} bytes")
    headers = _request_headers(request)
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    content = iter_body(request, cap=cap, timeout=body_timeout) if has_body else None
    client = peers.client(peer)
    url = httpx.URL(path=path, query=query if isinstance(query, bytes) else b"")
    peers.acquire()
    try:
        wait = None
        if request.method not in ("GET", "HEAD"):
            wait = httpx.Timeout(ACTION_READ_S, connect=CONNECT_S, write=WRITE_S, pool=POOL_S)
        outgoing = client.build_request(
            request.method,
            url,
            headers=headers,
            content=content,
            timeout=wait or USE_CLIENT_DEFAULT,
        )
        answer = await client.send(outgoing, stream=True)
    except httpx.TimeoutException as exc:
        peers.release()
        raise PeerTimeout(f"agent {peer.name!r} at {peer.url} did not answer in time "
                          f"({type(exc).__name__})") from None  # fmt: skip
    except httpx.HTTPError as exc:
        peers.release()
        raise ConnectError(f"cannot reach agent {peer.name!r} at {peer.url}: "
                           f"{one_line(exc)}") from None  # fmt: skip
    except BaseException:
        peers.release()
        raise
    released = False

    async def finish() -> None:
        nonlocal released
        if not released:
            released = True
            peers.release()
            await answer.aclose()

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in answer.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            # The status went out already: the answer ends short, and the log says why.
            log.warning("agent %r's answer to %s %s broke off: %s", peer.name, request.method,
                        path, one_line(exc))  # fmt: skip
        finally:
            with contextlib.suppress(Exception):
                await finish()

    kept = {k: v for k, v in answer.headers.items() if k.lower() in ANSWER_HEADERS}
    if "transfer-encoding" in answer.headers:
        kept.pop("content-length", None)
    media = kept.get("content-type", "").split(";")[0].strip().lower()
    if media not in ANSWER_TYPES:
        kept["content-type"] = "application/octet-stream"
        kept["content-disposition"] = "attachment"
    kept.update(SANDBOX)
    # No media type of its own: the other agent's content-type goes back as it was.
    return StreamingResponse(body(), status_code=answer.status_code, headers=kept,
                             background=BackgroundTask(finish))  # fmt: skip
