"""POSTs: only to allow-listed URL prefixes, with a timeout; a real server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest

from edgewire.actions.post import allowed, check_allowed, post_json
from edgewire.errors import NotAllowed


class _Hook(BaseHTTPRequestHandler):
    bodies: list[dict[str, object]] = []
    release = threading.Event()

    def do_POST(self) -> None:  # http.server's name
        if self.path == "/slow":
            self.release.wait(5)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.bodies.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.bodies.clear()
    _Hook.release.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Hook.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://10.0.0.5:8080/hooks/seen", True),
        ("http://10.0.0.5:8080/hooks", False),
        ("http://10.0.0.5:8080/hooksx", False),
        ("http://10.0.0.5:8081/hooks/seen", False),
        ("https://10.0.0.5:8080/hooks/seen", False),
        ("http://10.0.0.5.evil:8080/hooks/seen", False),
        ("http://user@10.0.0.5:8080/hooks/seen", False),
        ("http://a.example/x", True),
        ("http://a.example.evil/x", False),
        ("http://[::1", False),
        # httpx sends /admin for this: the path is compared as sent, and refused anyway.
        ("http://10.0.0.5:8080/hooks/../admin", False),
        ("http://10.0.0.5:8080/hooks/x/../seen", False),
        ("http://10.0.0.5:8080/hooks/%2e%2e/admin", False),
        ("http://10.0.0.5:8080/hooks/%2E%2E%2Fadmin", False),
        ("http://10.0.0.5:8080/hooks%2fseen", False),
        ("http://10.0.0.5:80800/hooks/seen", False),
        ("HTTP://10.0.0.5:8080/hooks/seen", True),
    ],
)
def test_the_allow_list_matches_origin_and_path_prefix(url: str, ok: bool) -> None:
    assert allowed(url, ["http://10.0.0.5:8080/hooks/", "http://a.example"]) is ok


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://10.0.0.5:8080/hooks", True),
        ("http://10.0.0.5:8080/hooks/seen", True),
        ("http://10.0.0.5:8080/hooksX", False),
        ("http://10.0.0.5:80800/hooks", False),
        ("http://10.0.0.5:808/hooks", False),
        ("http://10.0.0.5/hooks", False),
    ],
)
def test_an_entry_without_a_trailing_slash_matches_at_a_slash(url: str, ok: bool) -> None:
    assert allowed(url, ["http://10.0.0.5:8080/hooks"]) is ok


async def test_a_dot_dot_path_never_reaches_the_path_it_names(hook: str) -> None:
    # What the allow-list saw is what would have been sent: /admin, not /allowed/.
    url = hook + "/allowed/../admin"
    assert httpx.URL(url).path == "/admin"
    with pytest.raises(NotAllowed):
        check_allowed(url, [hook + "/allowed/"])


def test_a_url_off_the_list_is_refused_naming_the_fix() -> None:
    with pytest.raises(NotAllowed, match="add its prefix to run_post_allow"):
        check_allowed("http://10.9.9.9/x", [])


async def test_a_post_sends_its_json_and_reports_the_status(hook: str) -> None:
    result = await post_json(hook + "/seen", {"class": "cat", "score": 0.9}, timeout_s=5)
    assert result.status == 204 and result.error is None
    assert _Hook.bodies == [{"class": "cat", "score": 0.9}]


async def test_a_slow_peer_is_cut_off_at_the_timeout(hook: str) -> None:
    result = await post_json(hook + "/slow", {"a": 1}, timeout_s=0.3)
    assert result.status is None and result.error == "no answer in 0.3 s"


async def test_nobody_listening_is_a_result_not_an_exception() -> None:
    result = await post_json("http://127.0.0.1:9/x", {}, timeout_s=2)
    assert result.status is None and result.error is not None
