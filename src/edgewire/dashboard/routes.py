"""The dashboard's pages, static files, login and logout, and the overview's data.

Pages are rendered on the server (autoescaped templates) and carry no data of their
own: their scripts (``static/``) call the agent's HTTP API, the same one the CLI uses,
with the session cookie and the page's CSRF token. With a token configured, a page
without a session sends the browser to the login form; on loopback with no token the
pages are open, as the rest of the API is.
"""

from __future__ import annotations

import asyncio
import hmac
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from edgewire import __version__
from edgewire.agent.context import PortContext
from edgewire.agent.http_common import (
    Endpoint,
    check_management,
    error_response,
    guarded,
    read_body,
    session_cookie,
    sessions_of,
)
from edgewire.agent.sessions import SESSION_TTL_S, Session
from edgewire.dashboard.overview import Sampler, device
from edgewire.errors import AuthError, BusyError, EdgewireError
from edgewire.serve.store import check_name
from edgewire.train.choices import MODEL_NAMES
from edgewire.train.folder import FolderOptions
from edgewire.wire import sse

HERE = Path(__file__).parent
STATIC = HERE / "static"
#: Seconds between two overview events.
OVERVIEW_S = 1.0
#: Overview streams open at once (each samples the registry once a second).
MAX_OVERVIEW_STREAMS = 16
LOGIN_BODY_BYTES = 4096

#: The pages: path, template, title (the order is the navigation's).
PAGES = (
    ("/", "overview.html", "Overview"),
    ("/models", "models.html", "Models"),
    ("/workspaces", "workspaces.html", "Workspaces"),
    ("/run", "run.html", "Run"),
    ("/jobs", "jobs.html", "Jobs"),
    ("/agents", "agents.html", "Agents"),
)

#: The pages' own scripts and styles only; no inline script, no other origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of ``static/`` read once: a request can only name one of these."""
    return {
        p.name: (p.read_bytes(), TYPES[p.suffix])
        for p in sorted(STATIC.iterdir())
        if p.is_file() and p.suffix in TYPES
    }


def _safe_next(value: str | None) -> str:
    """Where to go after the login: a path of this agent only (no other host)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value[:512]


def dashboard_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    cfg = ctx.config
    files = _static_files()
    streams = [0]

    def session_of(request: Request) -> Session | None:
        sessions = sessions_of(request)
        return (
            None if sessions is None else sessions.get(request.cookies.get(session_cookie(request)))
        )

    def render(request: Request, template: str, *, status: int = 200, **values: Any) -> Response:
        session = session_of(request)
        html = _ENV.get_template(template).render(
            version=__version__,
            pages=PAGES,
            path=request.url.path,
            csrf=session.csrf if session is not None else "",
            logged_in=session is not None,
            token_required=bool(cfg.token),
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def page(template: str, title: str, **fixed: Any) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                check_management(cfg, request)
            except AuthError:
                if not cfg.token:
                    return render(request, "refused.html", status=403, title="Not allowed")
                target = urllib.parse.quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            params: dict[str, Any] = {k: str(v) for k, v in request.path_params.items()}
            if "ws" in params:
                try:
                    check_name(params["ws"], what="workspace name")
                except EdgewireError as exc:
                    return error_response(exc)
            return render(request, template, title=title, **fixed, **params)

        return endpoint

    async def read_form(request: Request) -> dict[str, list[str]]:
        """A small urlencoded form (login, logout); more fields than it has: none."""
        body = await read_body(request, cap=LOGIN_BODY_BYTES, timeout=cfg.body_timeout)
        try:
            return urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:
            return {}

    async def login_form(request: Request) -> Response:
        if not cfg.token:
            return RedirectResponse("/", status_code=303)
        nxt = _safe_next(request.query_params.get("next"))
        return render(request, "login.html", title="Log in", next=nxt, error=None)

    async def login(request: Request) -> Response:
        if not cfg.token:
            return RedirectResponse("/", status_code=303)
        sessions = sessions_of(request)
        client = request.client.host if request.client else ""
        if sessions is None:
            raise AuthError("this agent keeps no sessions")
        if not sessions.login_allowed(client):
            return render(request, "login.html", status=429, title="Log in", next="/",
                          error="Too many wrong tokens from this address; wait a minute.")  # fmt: skip
        try:
            form = await read_form(request)
        except EdgewireError as exc:
            return error_response(exc)
        given = (form.get("token") or [""])[0]
        nxt = _safe_next((form.get("next") or ["/"])[0])
        if not hmac.compare_digest(given.encode("utf-8", "replace"), cfg.token.encode()):
            sessions.failed(client)
            return render(request, "login.html", status=401, title="Log in", next=nxt,
                          error="That is not this agent's token.")  # fmt: skip
        session = sessions.create()
        answer = RedirectResponse(nxt, status_code=303)
        answer.set_cookie(
            session_cookie(request), session.id, max_age=int(SESSION_TTL_S), path="/", httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip
        return answer

    async def logout(request: Request) -> Response:
        sessions = sessions_of(request)
        session = session_of(request)
        if sessions is not None and session is not None:
            try:
                form = await read_form(request)
            except EdgewireError as exc:
                return error_response(exc)
            if not sessions.csrf_ok(session, (form.get("csrf") or [""])[0]):
                return error_response(AuthError("log out from the dashboard's own button"))
            sessions.end(session.id)
        answer = RedirectResponse("/login" if cfg.token else "/", status_code=303)
        answer.delete_cookie(session_cookie(request), path="/")
        return answer

    async def static(request: Request) -> Response:
        found = files.get(str(request.path_params["name"]))
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        data, media = found
        return Response(data, media_type=media, headers={"X-Content-Type-Options": "nosniff",
                                                         "Cache-Control": "no-cache"})  # fmt: skip

    async def overview(request: Request) -> Response:
        data = Sampler().sample(ctx)
        data["device"] = await asyncio.to_thread(device)
        return JSONResponse(data)

    async def overview_events(request: Request) -> Response:
        if streams[0] >= MAX_OVERVIEW_STREAMS:
            raise BusyError(
                f"{MAX_OVERVIEW_STREAMS} overview streams are open; close a dashboard tab"
            )
        streams[0] += 1
        return StreamingResponse(
            _follow_overview(ctx, streams), media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    # The project page names the models training knows, and the default one.
    project_page = page(
        "workspace.html", "Workspace", models=MODEL_NAMES, default_model=FolderOptions().model
    )
    routes: list[tuple[str, Endpoint, list[str]]] = [
        (path, page(template, title), ["GET"]) for path, template, title in PAGES
    ]
    routes += [
        ("/workspaces/{ws}", project_page, ["GET"]),
        ("/login", login_form, ["GET"]),
        ("/login", login, ["POST"]),
        ("/logout", logout, ["POST"]),
        ("/static/{name}", static, ["GET"]),
        ("/api/overview", guarded(cfg, overview), ["GET"]),
        ("/api/overview/events", guarded(cfg, overview_events), ["GET"]),
    ]
    return routes


async def _follow_overview(ctx: PortContext, streams: list[int]) -> AsyncIterator[bytes]:
    """An overview event each second until the client goes or the agent stops."""
    sampler = Sampler()
    try:
        first = sampler.sample(ctx)
        first["device"] = await asyncio.to_thread(device)
        yield sse.encode("overview", first)
        while not ctx.stopping.is_set():
            try:
                async with asyncio.timeout(OVERVIEW_S):
                    await ctx.stopping.wait()
            except TimeoutError:
                pass
            yield sse.encode("overview", sampler.sample(ctx))
    finally:
        streams[0] -= 1
