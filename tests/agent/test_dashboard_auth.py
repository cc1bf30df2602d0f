"""The dashboard's pages and login on a real agent: cookie, CSRF, cross-site refusals."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgewire.agent import sessions as sessions_mod
from edgewire.dashboard.routes import PAGES
from edgewire.wire import sse
from tests.helpers import RunningAgent, agent_in_thread

TOKEN = "dashboard-token-1"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    with agent_in_thread(tmp_path_factory.mktemp("dash"), token=TOKEN) as running:
        yield running


def _client(agent: RunningAgent) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{agent.http}", timeout=10)


def _login(client: httpx.Client, token: str = TOKEN, nxt: str = "/") -> httpx.Response:
    return client.post("/login", data={"token": token, "next": nxt})


def _csrf(html: str) -> str:
    marker = '<meta name="csrf" content="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def test_pages_without_a_session_go_to_the_login_form(agent: RunningAgent) -> None:
    with _client(agent) as client:
        for path, _template, _title in PAGES:
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"] == f"/login?next={path}"
        form = client.get("/login?next=/models")
        assert form.status_code == 200
        assert 'name="token"' in form.text and 'value="/models"' in form.text
        assert "default-src 'self'" in form.headers["content-security-policy"]
        assert form.headers["x-frame-options"] == "DENY"


def test_a_login_sets_an_httponly_samesite_cookie_and_opens_every_page(
    agent: RunningAgent,
) -> None:
    with _client(agent) as client:
        answer = _login(client, nxt="/models")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/models"
        cookie = answer.headers["set-cookie"].lower()
        assert sessions_mod.cookie_name(agent.http) in cookie  # one per agent (its port)
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert TOKEN.lower() not in cookie  # the session is a random id, not the token
        for path, _template, title in PAGES:
            page = client.get(path)
            assert page.status_code == 200, path
            assert f"<title>{title} · edgewire</title>" in page.text
            assert _csrf(page.text)
        assert client.get("/workspaces/birds").status_code == 200
        assert client.get("/workspaces/..%2Fetc").status_code in (400, 404, 422)
        overview = client.get("/api/overview").json()
        assert overview["token_required"] is True
        assert set(overview["protocols"]) == {"native", "mnistprot", "http"}
        assert overview["device"]["cpus"] >= 1


def test_a_wrong_token_is_refused_and_gives_no_cookie(agent: RunningAgent) -> None:
    with _client(agent) as client:
        answer = _login(client, token="not-the-token")
        assert answer.status_code == 401
        assert "set-cookie" not in answer.headers
        assert "not this agent" in answer.text
        assert client.get("/api/overview").status_code == 401
        assert client.get("/").status_code == 303


def test_the_login_goes_only_to_this_agents_own_pages(agent: RunningAgent) -> None:
    with _client(agent) as client:
        for bad in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
            answer = _login(client, nxt=bad)
            assert answer.status_code == 303
            assert answer.headers["location"] == "/"


def test_a_management_action_with_the_cookie_needs_the_csrf_header(agent: RunningAgent) -> None:
    with _client(agent) as client:
        _login(client)
        csrf = _csrf(client.get("/").text)
        # The cookie alone opens what changes nothing...
        assert client.get("/api/models").status_code == 200
        # ...but not an action: a form of another site could send the cookie, not the header.
        refused = client.delete("/api/models/none")
        assert refused.status_code == 401
        assert "X-Edgewire-CSRF" in refused.json()["error"]
        wrong = client.delete("/api/models/none", headers={"X-Edgewire-CSRF": "nope"})
        assert wrong.status_code == 401
        allowed = client.delete("/api/models/none", headers={"X-Edgewire-CSRF": csrf})
        assert allowed.status_code == 404  # past the check: the model does not exist


def test_without_cookie_or_token_a_management_action_is_refused(agent: RunningAgent) -> None:
    with _client(agent) as client:
        answer = client.post("/api/models/x/activate", json={"version": 1})
        assert answer.status_code == 401
        assert answer.json()["code"] == "auth"


def test_a_cross_site_request_is_refused_even_with_the_token(agent: RunningAgent) -> None:
    with _client(agent) as client:
        headers = {"Authorization": f"Bearer {TOKEN}", "Origin": "https://evil.example"}
        answer = client.delete("/api/models/none", headers=headers)
        assert answer.status_code == 401
        assert "another site" in answer.json()["error"]
        same = {"Authorization": f"Bearer {TOKEN}", "Origin": f"http://127.0.0.1:{agent.http}"}
        assert client.delete("/api/models/none", headers=same).status_code == 404


def test_logout_ends_the_session_only_from_the_dashboards_own_form(agent: RunningAgent) -> None:
    with _client(agent) as client:
        _login(client)
        csrf = _csrf(client.get("/").text)
        cookie = client.cookies.get(sessions_mod.cookie_name(agent.http))
        assert client.post("/logout", data={"csrf": "forged"}).status_code == 401
        assert client.get("/").status_code == 200
        answer = client.post("/logout", data={"csrf": csrf})
        assert answer.status_code == 303
        client.cookies.set(
            sessions_mod.cookie_name(agent.http), str(cookie)
        )  # an old cookie kept by an attacker
        assert client.get("/api/overview").status_code == 401


def test_static_files_are_only_the_dashboards_own(agent: RunningAgent) -> None:
    with _client(agent) as client:
        js = client.get("/static/app.js")
        assert js.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript")
        assert js.headers["x-content-type-options"] == "nosniff"
        for bad in ("../routes.py", "..%2Froutes.py", "routes.py", "%2e%2e%2fsessions.py"):
            assert client.get(f"/static/{bad}").status_code == 404, bad


def test_failed_logins_are_limited_per_address(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path, token=TOKEN) as running, _client(running) as client:
        codes = [_login(client, token="wrong-token").status_code for _ in range(12)]
        assert codes[: sessions_mod.LOGIN_FAILURES] == [401] * sessions_mod.LOGIN_FAILURES
        assert codes[-1] == 429
        # Even the right token waits out the window: guessing gains nothing.
        assert _login(client).status_code == 429


def test_the_overview_stream_counts_requests(agent: RunningAgent) -> None:
    with _client(agent) as client:
        _login(client)
        decoder = sse.Decoder()
        seen = []
        with client.stream("GET", "/api/overview/events") as stream:
            for chunk in stream.iter_bytes():
                seen += [e for e in decoder.feed(chunk) if e.kind == "overview"]
                if len(seen) >= 2:
                    break
        assert seen[0].data["device"]["cpus"] >= 1
        assert "rps" in seen[1].data["protocols"]["http"]
        assert seen[1].data["protocols"]["http"]["rps"] is not None


def test_without_a_token_pages_are_open_on_loopback(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path) as running, _client(running) as client:
        assert client.get("/").status_code == 200
        assert client.get("/login").headers["location"] == "/"
        assert client.delete("/api/models/none").status_code == 404
        evil = client.delete("/api/models/none", headers={"Origin": "http://evil.example"})
        assert evil.status_code == 401


def test_without_a_token_a_rebound_host_name_is_refused(tmp_path: Path) -> None:
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 is
    same-origin with the agent; without a token only loopback names are answered."""
    with agent_in_thread(tmp_path) as running, _client(running) as client:
        rebound = {
            "Host": f"evil.example:{running.http}",
            "Origin": f"http://evil.example:{running.http}",
        }
        body = {"name": "evil", "url": "http://127.0.0.1:1", "token": "abcdefgh1"}
        answer = client.post("/api/agents", json=body, headers=rebound)
        assert answer.status_code == 401
        assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
        for host in ("localhost", f"localhost:{running.http}", "127.0.0.1", "[::1]:80"):
            assert client.get("/api/models", headers={"Host": host}).status_code == 200, host


@pytest.mark.parametrize(
    "path", ["/login", "/api/workspaces/slow/images/a", "/api/agents", "/api/deploy"]
)
def test_a_stalled_body_is_cut_off_and_the_agent_serves_on(tmp_path: Path, path: str) -> None:
    with agent_in_thread(tmp_path, token=TOKEN, body_timeout=0.5) as running:
        with _client(running) as client:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            made = client.post("/api/workspaces", json={"name": "slow", "classes": ["a", "b"]},
                               headers=headers)  # fmt: skip
            assert made.status_code == 201
        with socket.create_connection(("127.0.0.1", running.http), timeout=10) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: 4000\r\n\r\n".encode()
                + b"{"  # and nothing more
            )
            reply = b""
            while b"stalled" not in reply and (chunk := sock.recv(4096)):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 504"), reply[:200]
        with _client(running) as client:
            assert client.get("/v2/health/live").json() == {"live": True}
