"""The seed 002 server and stress tool copies, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from edgewire.bench.seed_server import SeedServer
from edgewire.bench.seed_stress import BurstResult, run_burst
from edgewire.errors import ConfigError
from edgewire.wire.mnistprot import (
    CMD_INFERENCE_OUTPUT,
    DIGIT_LEN,
    OUTPUT_LEN,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    decode_response,
    encode_request,
    encode_response,
)

RNG = np.random.default_rng(2)
WEIGHTS = RNG.standard_normal((DIGIT_LEN, OUTPUT_LEN)).astype(np.float32) / 28
BIAS = np.arange(OUTPUT_LEN, dtype=np.float32) / 10
DIGIT = RNG.random(DIGIT_LEN, dtype=np.float32)


def linear(batch: np.ndarray) -> np.ndarray:
    assert batch.shape == (1, DIGIT_LEN)
    assert batch.dtype == np.float32
    return batch @ WEIGHTS + BIAS


@pytest.fixture
def server() -> Iterator[SeedServer]:
    with SeedServer(linear) as srv:
        yield srv


def exchange(port: int, *chunks: bytes) -> bytes:
    """Send ``chunks`` on one connection, half-close, read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        answer = bytearray()
        while chunk := sock.recv(4096):
            answer += chunk
    return bytes(answer)


def test_real_request_gets_the_models_ten_outputs(server: SeedServer) -> None:
    request = encode_request(DIGIT)
    answer = exchange(server.port, request[:1000], request[1000:2048], request[2048:])
    assert len(answer) == RESPONSE_SIZE
    response = decode_response(answer)
    assert response.cmd == CMD_INFERENCE_OUTPUT
    assert response.output_n == OUTPUT_LEN
    expected = linear(DIGIT.reshape(1, DIGIT_LEN))[0]
    np.testing.assert_array_equal(response.output, expected)
    assert response.timer_ms >= 0.0


def test_bad_requests_are_dropped_and_the_server_keeps_serving(server: SeedServer) -> None:
    response_bytes = encode_response(np.zeros(OUTPUT_LEN, np.float32), 1.0)
    garbage = b"\xff" * REQUEST_SIZE
    assert exchange(server.port, response_bytes + bytes(REQUEST_SIZE)) == b""  # cmd 2
    assert exchange(server.port, garbage) == b""
    assert exchange(server.port, b"short") == b""  # EOF ends the read (the seed spun)
    assert len(exchange(server.port, encode_request(DIGIT))) == RESPONSE_SIZE


def test_close_wakes_a_handler_stuck_in_recv() -> None:
    srv = SeedServer(linear)
    srv.start()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as idle:
        idle.sendall(b"partial")  # the seed server has no read timeout: it waits
        for _ in range(3000):
            if srv.active_connections == 1:
                break
            time.sleep(0.01)
        assert srv.active_connections == 1
        closer = threading.Thread(target=srv.close)
        closer.start()
        closer.join(timeout=30)
        assert not closer.is_alive()
        with contextlib.suppress(ConnectionResetError):  # a reset is just as closed as a FIN
            assert idle.recv(16) == b""
    srv.close()  # a second close is harmless


def test_non_loopback_bind_is_refused() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        SeedServer(linear, host="0.0.0.0")


def test_burst_of_twenty_against_the_seed_server(server: SeedServer) -> None:
    result = run_burst("127.0.0.1", server.port, clients=20, digit=DIGIT, timeout=60)
    assert isinstance(result, BurstResult)
    assert (result.clients, result.ok, result.errors) == (20, 20, 0)
    assert len(result.latencies_ms) == 20
    assert len(result.server_ms) == 20
    assert all(ms >= 0 for ms in result.server_ms)
    assert result.seconds > 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_burst_against_a_closed_port_fails_fast() -> None:
    result = run_burst("127.0.0.1", free_port(), clients=10, timeout=20)
    assert (result.ok, result.errors, result.latencies_ms) == (0, 10, [])


def test_burst_against_a_silent_server_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody ever answers
        result = run_burst("127.0.0.1", listener.getsockname()[1], clients=4, timeout=0.5)
    assert (result.ok, result.errors) == (0, 4)
    assert result.seconds >= 0.5


def test_burst_refuses_a_bad_client_count() -> None:
    for clients in (0, 5000):
        with pytest.raises(ConfigError, match="clients"):
            run_burst("127.0.0.1", 1, clients=clients)


class FastServer:
    """A concurrent asyncio answerer with a deep backlog, to drive 1,000 threads."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(REQUEST_SIZE)
        writer.write(encode_response(np.ones(OUTPUT_LEN, np.float32), 0.25))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def _main(self) -> None:
        srv = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=2048)
        self.port = srv.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        srv.close()
        await srv.wait_closed()

    def __enter__(self) -> FastServer:
        self._thread.start()
        self._ready.wait(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)


def test_burst_of_a_thousand_threads() -> None:
    before = threading.stack_size()
    with FastServer() as fast:
        result = run_burst("127.0.0.1", fast.port, clients=1000, timeout=60)
    assert (result.ok, result.errors) == (1000, 0)
    assert set(result.server_ms) == {0.25}
    assert threading.stack_size() == before  # restored after starting the clients
