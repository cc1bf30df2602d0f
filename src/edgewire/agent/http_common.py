"""What the agent's HTTP routes share: error answers, capped body reads, the management check.

Bodies draw on the same :class:`~edgewire.wire.stream.ByteBudget` as the native
port's partly received frames (``max_buffered_bytes``): a :class:`BodyHold`
reserves a body's declared length before its first byte is read (or grows
chunk by chunk when no length is declared), refuses with ``busy`` (503 with
Retry-After) when the budget is spent, and gives everything back when the
request is done (:func:`holding`).

A leaf of ``agent/``: the inference routes (``http.py``) and the management
routes (``management.py``) both import it, and it imports neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from edgewire.agent.sessions import CSRF_HEADER, SAFE_METHODS, Sessions, cookie_name
from edgewire.config import AgentConfig, is_loopback
from edgewire.errors import (
    AuthError,
    BusyError,
    ConnectError,
    EdgewireError,
    FrameTooLarge,
    PeerTimeout,
    ProtocolError,
)
from edgewire.serve import kserve
from edgewire.wire.stream import ByteBudget

#: An HTTP route's handler.
Endpoint = Callable[[Request], Awaitable[Response]]

BODY_CHUNK_TIMEOUT = 10.0


def guarded(
    config: AgentConfig,
    handler: Endpoint,
    *,
    status: Callable[[EdgewireError, Request], int | None] | None = None,
) -> Endpoint:
    """``handler`` behind the management token; an edgewire error it raises becomes its
    one-line JSON answer (with ``status(exc, request)`` where that gives one)."""

    async def endpoint(request: Request) -> Response:
        try:
            check_management(config, request)
            return await handler(request)
        except EdgewireError as exc:
            return error_response(exc, status=None if status is None else status(exc, request))

    return endpoint


def error_response(exc: EdgewireError, *, status: int | None = None) -> Response:
    """The JSON error body for ``exc``, with the HTTP status its class carries."""
    code = status or exc.http_status
    headers = {"Retry-After": "1"} if code == 503 else None
    return Response(
        kserve.error_body(exc.message, exc.code, exc.details),
        status_code=code,
        media_type="application/json",
        headers=headers,
    )


def not_found(message: str, code: str) -> Response:
    """404 with the usual one-line body: no error class means "there is no such thing"
    (a run, a job, a workspace, an agent), so each route names its own ``code``."""
    return Response(
        kserve.error_body(message, code), status_code=404, media_type="application/json"
    )


class BodyHold:
    """The bytes of the shared budget that one request holds; :meth:`release` gives them back."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    def hold(self, size: int) -> None:
        """Hold ``size`` bytes in all (more or fewer than now); BusyError if the budget
        cannot give that many more (then what was held stays held)."""
        if not self._budget.change(size - self.held):
            raise BusyError(
                "the agent is receiving too many request bodies at once; "
                "send this request again later"
            )
        self.held = size

    def release(self) -> None:
        self._budget.change(-self.held)
        self.held = 0


@contextlib.contextmanager
def holding(budget: ByteBudget) -> Iterator[BodyHold]:
    """A :class:`BodyHold` released when the block ends, however it ends."""
    hold = BodyHold(budget)
    try:
        yield hold
    finally:
        hold.release()


async def iter_body(
    request: Request,
    *,
    cap: int,
    timeout: float = BODY_CHUNK_TIMEOUT,
    total: float | None = None,
    hold: BodyHold | None = None,
) -> AsyncIterator[bytes]:
    """The request body in chunks, refused past ``cap`` bytes, when a chunk takes over
    ``timeout`` s, or when the whole body takes over ``total`` s.

    With ``hold``, the declared Content-Length is held of the shared budget before
    anything is read, and the bytes received so far when none is declared."""
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
        if size < 0:
            raise ProtocolError(f"bad Content-Length {declared!r}")
        if size > cap:
            raise FrameTooLarge(f"body of {size} bytes is over the limit of {cap}")
        if hold is not None:
            hold.hold(size)
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
        except ClientDisconnect:
            raise ConnectError("the client went away while sending the body") from None
        except TimeoutError:
            if give_up is not None and loop.time() >= give_up:
                raise PeerTimeout(f"request body took over {total:g} s") from None
            raise PeerTimeout(f"request body stalled for {timeout:g} s") from None
        received += len(chunk)
        if received > cap:
            raise FrameTooLarge(f"body is over the limit of {cap} bytes")
        if hold is not None and received > hold.held:
            hold.hold(received)
        yield chunk


async def read_body(
    request: Request,
    *,
    cap: int,
    timeout: float = BODY_CHUNK_TIMEOUT,
    total: float | None = None,
    hold: BodyHold | None = None,
) -> bytes:
    """The whole body (see :func:`iter_body`); with ``hold``, its bytes stay held of the
    budget until the caller releases them, when it is done with the body."""
    chunks = iter_body(request, cap=cap, timeout=timeout, total=total, hold=hold)
    return b"".join([chunk async for chunk in chunks])


def check_management(config: AgentConfig, request: Request) -> None:
    """Management needs the token (a Bearer header, or the dashboard's session cookie
    with its CSRF header when the request changes state); with none configured, only
    loopback callers. A browser's cross-site request that changes state is refused
    either way (its ``Origin`` is not this agent)."""
    unsafe = request.method not in SAFE_METHODS
    if unsafe:
        _check_origin(request)
    token = config.token
    if token:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), token.encode()
        ):
            return
        sessions = sessions_of(request)
        cookie = request.cookies.get(session_cookie(request))
        session = None if sessions is None else sessions.get(cookie)
        if sessions is not None and session is not None:
            if unsafe and not sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
                raise AuthError(
                    "this request changes state: it needs the page's X-Edgewire-CSRF header"
                )
            return
        raise AuthError("a valid 'Authorization: Bearer <token>' header is required")
    client = request.client.host if request.client else ""
    if not is_loopback(client):
        raise AuthError("management from other hosts needs the agent to run with --token")
    if not _loopback_host(request.headers.get("host", "")):
        # A page whose name was rebound to 127.0.0.1 is same-origin with the agent and
        # sends its own name as Host: without a token, only loopback names are served.
        raise AuthError("without a token the agent answers only to localhost or 127.0.0.1")


def session_cookie(request: Request) -> str:
    """The name of this agent's session cookie (its port in it)."""
    server = request.scope.get("server")
    return cookie_name(server[1] if server and len(server) > 1 else None)


def sessions_of(request: Request) -> Sessions | None:
    """The dashboard sessions of the app serving ``request`` (None outside the agent's app)."""
    app = request.scope.get("app")
    state = getattr(app, "state", None)
    found = getattr(state, "sessions", None)
    return found if isinstance(found, Sessions) else None


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    return name == "localhost" or name.endswith(".localhost") or is_loopback(name)


def _check_origin(request: Request) -> None:
    """Refuse a browser's request from another site: its Origin names another host."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser's cross-origin request (curl, httpx, the CLI)
    host = request.headers.get("host", "")
    _, _, rest = origin.partition("://")
    if not host or rest.rstrip("/").lower() != host.lower():
        raise AuthError(f"a request from another site ({origin[:80]!r}) is refused")
