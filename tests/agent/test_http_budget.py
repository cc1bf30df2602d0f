"""HTTP bodies draw on the agent's shared byte budget (``max_buffered_bytes``)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import RunningAgent, agent_in_thread, upload
from tests.serve.models import linear_model

MiB = 1024 * 1024
FEATURES = 784


def _binary_body(rows: int) -> tuple[bytes, str]:
    """A KServe v2 binary request of ``rows`` rows, and its JSON header's length."""
    x = np.random.default_rng(0).random((rows, FEATURES), dtype=np.float32)
    head = json.dumps({
        "inputs": [{"name": "input_0", "shape": [rows, FEATURES], "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "output_0", "parameters": {"binary_data": False}}],
    }).encode()  # fmt: skip
    return head + x.tobytes(), str(len(head))


def _infer(running: RunningAgent, rows: int, **headers: str) -> httpx.Response:
    body, head_length = _binary_body(rows)
    return httpx.post(
        f"http://127.0.0.1:{running.http}/v2/models/m/infer",
        content=body,
        headers={"Inference-Header-Content-Length": head_length, **headers},
        timeout=30,
    )


def _wait_for(what: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("budget")
    linear_model(tmp / "m.onnx")
    with agent_in_thread(
        tmp / "agent",
        max_frame_bytes=1 * MiB,
        max_request_bytes=1 * MiB,
        max_buffered_bytes=3 * MiB + MiB // 2,
        max_queue_delay_ms=1.0,
        body_timeout=30.0,  # the held bodies below must not time out during the test
        frame_timeout=60.0,
    ) as agent:
        put = upload(agent, tmp / "m.onnx", name="m")
        assert put.status_code == 201, put.text
        assert agent.agent.frame_budget.used == 0  # the upload gave its chunks back
        yield agent


@contextlib.contextmanager
def _half_sent_bodies(running: RunningAgent, count: int, size: int) -> Iterator[None]:
    """``count`` connections that each declare a ``size``-byte body, send half, and wait."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", running.http), timeout=10)
            socks.append(sock)
            sock.sendall(
                b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/octet-stream\r\n"
                b"Inference-Header-Content-Length: 100\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode()
                + b"\0" * (size // 2)
            )
        yield
    finally:
        for sock in socks:
            sock.close()


def test_bodies_past_the_shared_budget_get_a_fast_503_and_the_budget_comes_back(
    running: RunningAgent,
) -> None:
    budget = running.agent.frame_budget
    with _half_sent_bodies(running, 3, 1 * MiB):
        # Each holds its declared length before its first byte is read.
        _wait_for(lambda: budget.used == 3 * MiB)
        started = time.monotonic()
        refused = _infer(running, 300)  # ~0.9 MiB more: over the 3.5 MiB budget
        assert time.monotonic() - started < 5
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["code"] == "busy"
        assert "too many request bodies" in refused.json()["error"]
        small = _infer(running, 1)  # fits in what is left
        assert small.status_code == 200, small.text
        assert budget.used == 3 * MiB
    _wait_for(lambda: budget.used == 0)  # the clients went away: all given back
    big = _infer(running, 300)
    assert big.status_code == 200, big.text
    assert np.asarray(big.json()["outputs"][0]["data"]).size == 300 * 10
    assert budget.used == 0


@pytest.mark.parametrize("value", ["-1", "abc", "12x", "1" * 40])
def test_a_junk_inference_header_length_is_400_naming_the_header(
    running: RunningAgent, value: str
) -> None:
    answer = _infer(running, 1, **{"Inference-Header-Content-Length": value})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "Inference-Header-Content-Length" in error
    assert repr(value) in error
    assert running.agent.frame_budget.used == 0


def test_a_chunked_body_is_held_as_it_arrives_and_released(running: RunningAgent) -> None:
    body, head_length = _binary_body(2)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    answer = httpx.post(
        f"http://127.0.0.1:{running.http}/v2/models/m/infer",
        content=chunks(),  # no Content-Length: Transfer-Encoding: chunked
        headers={"Inference-Header-Content-Length": head_length},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert running.agent.frame_budget.used == 0


def test_the_openapi_document_is_the_hand_written_one(running: RunningAgent) -> None:
    """Not FastAPI's generated document (which would show internals): ours, whose paths
    tests/agent/test_openapi.py keeps equal to the app's routes."""
    answer = httpx.get(f"http://127.0.0.1:{running.http}/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["info"]["title"].lower().startswith("edgewire")
    assert "/api/models/{name}" in document["paths"]


def test_a_body_is_released_after_a_bad_request(running: RunningAgent) -> None:
    body, _ = _binary_body(1)
    answer = httpx.post(
        f"http://127.0.0.1:{running.http}/v2/models/m/infer",
        content=body,  # binary, but no header length: not JSON
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    assert running.agent.frame_budget.used == 0
