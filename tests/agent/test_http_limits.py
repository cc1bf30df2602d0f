"""The HTTP port against slow and oversized request heads and trickled bodies."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.helpers import RunningAgent, agent_in_thread
from tests.serve.models import linear_model


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _still_serves(running: RunningAgent) -> None:
    assert httpx.get(f"http://127.0.0.1:{running.http}/v2/health/live").status_code == 200


def test_a_head_that_never_ends_gets_408_and_is_closed(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "agent", frame_timeout=1.0) as running:
        with socket.create_connection(("127.0.0.1", running.http), timeout=20) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
            started = time.monotonic()
            reply = _reply(sock)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert time.monotonic() - started < 15
        _still_serves(running)


def test_an_idle_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "agent", frame_timeout=1.0) as running:
        sock = socket.create_connection(("127.0.0.1", running.http), timeout=20)
        try:
            assert _reply(sock).startswith(b"HTTP/1.1 408")
        finally:
            sock.close()


def test_a_huge_header_gets_431_before_it_is_all_read(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "agent") as running:
        with socket.create_connection(("127.0.0.1", running.http), timeout=20) as sock:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            try:
                while sent < 64 * 1024 * 1024:  # the agent must stop it long before this
                    sock.sendall(b"a" * 65536)
                    sent += 65536
            except OSError:
                pass  # closed on us: what we want
            reply = _reply(sock)
        assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
        assert sent < 16 * 1024 * 1024
        _still_serves(running)


def test_a_request_with_many_ordinary_headers_is_served(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "agent") as running:
        headers = {f"x-h{i}": "v" * 100 for i in range(200)}  # ~22 kB of head
        response = httpx.get(f"http://127.0.0.1:{running.http}/v2/health/live", headers=headers)
        assert response.status_code == 200


def test_a_body_trickled_forever_is_cut_off_by_the_total_deadline(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    linear_model(model)
    with agent_in_thread(tmp_path / "agent", frame_timeout=1.0, body_timeout=5.0) as running:
        put = httpx.put(
            f"http://127.0.0.1:{running.http}/api/models/m", content=model.read_bytes(), timeout=60
        )
        assert put.status_code == 201, put.text
        with socket.create_connection(("127.0.0.1", running.http), timeout=20) as sock:
            sock.sendall(
                b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            )
            started = time.monotonic()
            reply = b""
            sock.settimeout(0.3)
            while time.monotonic() - started < 15:
                try:
                    sock.sendall(b" ")  # one byte every 0.3 s: never a 5 s pause
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 504"), reply
        assert b"took over 1 s" in reply
        _still_serves(running)
