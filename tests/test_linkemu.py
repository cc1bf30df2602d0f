"""The userspace link emulator: byte-exact, propagates EOF and resets, and is never faster
than its settings (timing is checked only as safe lower bounds plus generous upper ones)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import socketserver
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from edgewire.bench.linkcheck import check_link, measure_link, serve_link_check
from edgewire.bench.linkemu import LinkEmulator, LinkEmulatorThread, LinkSpec
from edgewire.errors import ConfigError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Serve = Callable[[Handler], Awaitable[tuple[str, int]]]
FAST = LinkSpec(rate_bps=400e6, one_way_delay_s=0.002, buffer_bytes=64 * 1024)


def _server_side(handler: Handler) -> Handler:
    """A test server's handler that ends quietly when the emulator resets it, and closes."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            await _close(writer)

    return run


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@_server_side
async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()


@_server_side
async def _digest_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads to EOF, then answers the count and sha256 of what came."""
    data = await reader.read()
    writer.write(f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode())
    await writer.drain()


@_server_side
async def _count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers one byte once the 4-byte-announced number of bytes has arrived."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    await reader.readexactly(size)
    writer.write(b"K")
    await writer.drain()


def _stalled(release: asyncio.Event) -> Handler:
    """A server that reads nothing until ``release`` is set."""

    @_server_side
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    return stall


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[str, int]:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return ("127.0.0.1", int(server.sockets[0].getsockname()[1]))

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        for i in range(0, len(payload), 7000):  # odd-sized writes
            writer.write(payload[i : i + 7000])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    async with asyncio.timeout(10):
        echoed = await reader.read()
    await sender
    await _close(writer)
    return echoed


# --- integrity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", [FAST, LinkSpec(rate_bps=None), LinkSpec(rate_bps=None, buffer_bytes=1000)]
)
async def test_concurrent_connections_are_byte_exact(serve: Serve, spec: LinkSpec) -> None:
    upstream = await serve(_echo)
    payloads = [os.urandom(300_000 + i * 1234) for i in range(4)]
    async with LinkEmulator(upstream=upstream, spec=spec) as link:
        echoed = await asyncio.gather(*(_exchange(link.port, p) for p in payloads))
    assert [hashlib.sha256(e).digest() for e in echoed] == [
        hashlib.sha256(p).digest() for p in payloads
    ]
    assert 0 < link.peak_queued_bytes <= spec.queue_cap


async def test_eof_is_propagated_both_ways(serve: Serve) -> None:
    upstream = await serve(_digest_at_eof)
    payload = os.urandom(100_000)
    async with LinkEmulator(upstream=upstream, spec=FAST) as link:
        answer = await _exchange(link.port, payload)
    assert answer.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"


async def test_refused_upstream_closes_the_client() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    async with LinkEmulator(upstream=("127.0.0.1", dead), spec=FAST) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        async with asyncio.timeout(5):
            with pytest.raises(ConnectionResetError):
                await reader.read()
                raise AssertionError("got EOF instead of a reset")
        await _close(writer)


async def test_upstream_reset_resets_the_client(serve: Serve) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    upstream = await serve(_server_side(reset))
    async with LinkEmulator(upstream=upstream, spec=FAST) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"x")
        async with asyncio.timeout(5):
            with pytest.raises(ConnectionResetError):
                await reader.read()
                # An orderly EOF would fail the test: a reset must not look like one.
                raise AssertionError("got EOF instead of a reset")
        await _close(writer)


async def test_close_cuts_open_connections(serve: Serve) -> None:
    upstream = await serve(_echo)
    link = LinkEmulator(upstream=upstream, spec=LinkSpec(rate_bps=1e6, one_way_delay_s=0.5))
    await link.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    writer.write(b"hello")
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):  # well before the 1 s echo could come back
        await link.close()
        with pytest.raises(ConnectionResetError):
            await reader.read()
            raise AssertionError("got EOF instead of a reset")
    await _close(writer)


async def test_idle_connections_are_cut(serve: Serve) -> None:
    upstream = await serve(_echo)
    async with LinkEmulator(upstream=upstream, spec=FAST, idle_timeout_s=0.2) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        async with asyncio.timeout(3):
            with pytest.raises(ConnectionResetError):
                await reader.read()
                raise AssertionError("got EOF instead of a reset")
        await _close(writer)


async def test_queue_is_bounded_when_upstream_stops_reading(serve: Serve) -> None:
    spec = LinkSpec(rate_bps=50e6, one_way_delay_s=0.001, buffer_bytes=32 * 1024)
    release = asyncio.Event()
    upstream = await serve(_stalled(release))
    async with LinkEmulator(upstream=upstream, spec=spec) as link:
        _, writer = await asyncio.open_connection("127.0.0.1", link.port)
        block = bytes(65536)

        async def flood() -> None:
            while True:
                writer.write(block)
                await writer.drain()

        flooder = asyncio.create_task(flood())
        await asyncio.sleep(0.5)
        assert not flooder.done()  # the sender is held back, not failed
        flooder.cancel()
        release.set()
        writer.transport.abort()
    assert spec.queue_cap // 2 < link.peak_queued_bytes <= spec.queue_cap


# --- timing: lower bounds that physics guarantees, upper bounds at 4x ----------------------


async def test_rate_limit_is_never_beaten(serve: Serve) -> None:
    upstream = await serve(_count)
    size = 500_000
    async with LinkEmulator(upstream=upstream, spec=LinkSpec(rate_bps=8e6)) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        writer.write(size.to_bytes(4, "big") + os.urandom(size))
        await writer.drain()
        assert await reader.readexactly(1) == b"K"
        elapsed = loop.time() - start
        await _close(writer)
    assert 0.5 <= elapsed < 4 * 0.5  # 500 kB at 8 Mbit/s


async def test_delay_is_never_beaten(serve: Serve) -> None:
    upstream = await serve(_echo)
    spec = LinkSpec(rate_bps=None, one_way_delay_s=0.010)
    async with LinkEmulator(upstream=upstream, spec=spec) as link:
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        loop = asyncio.get_running_loop()
        times = []
        for _ in range(3):
            start = loop.time()
            writer.write(b"p")
            await reader.readexactly(1)
            times.append(loop.time() - start)
        await _close(writer)
    assert min(times) >= 0.020
    assert min(times) < 4 * 0.020


async def test_measure_link_reports_configured_figures() -> None:
    spec = LinkSpec.from_mbit_rtt(8, 20)
    measured = await check_link(spec, nbytes=400_000)
    # Timed at the receiver, so a little over the rate is possible, never much.
    assert 8 / 4 < measured["mbit"] <= 8 * 1.1
    assert 20 <= measured["rtt_ms"] < 4 * 20


def test_never_early_under_uvloop() -> None:
    # uvloop rounds timers to whole milliseconds; delivery must still never be early.
    uvloop = pytest.importorskip("uvloop")
    measured = uvloop.run(check_link(LinkSpec.from_mbit_rtt(50, 10), nbytes=100_000))
    assert 10 <= measured["rtt_ms"] < 4 * 10


async def test_measure_link_on_an_emulator_leaves_its_upstream_alone(serve: Serve) -> None:
    seen: list[bytes] = []

    @_server_side
    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())

    upstream = await serve(record)
    async with LinkEmulator(upstream=upstream, spec=LinkSpec.from_mbit_rtt(8, 20)) as link:
        measured = await measure_link("127.0.0.1", link.port, nbytes=200_000)
    assert 8 / 4 < measured["mbit"] <= 8 * 1.1
    assert 20 <= measured["rtt_ms"] < 4 * 20
    assert seen == []


async def test_measure_link_straight_to_a_check_server() -> None:
    server = await serve_link_check()
    try:
        port = int(server.sockets[0].getsockname()[1])
        measured = await measure_link("127.0.0.1", port, nbytes=100_000)  # no link at all
        assert measured["mbit"] > 8 and measured["rtt_ms"] < 20
        with pytest.raises(ConfigError):
            await measure_link("127.0.0.1", port, nbytes=10)
    finally:
        server.close()
        await server.wait_closed()


# --- the thread wrapper, for blocking clients ------------------------------------------


class _BlockingEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def blocking_echo() -> Iterator[tuple[str, int]]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _BlockingEcho) as server:
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield ("127.0.0.1", server.server_address[1])
        server.shutdown()
        thread.join()


def test_thread_wrapper_serves_blocking_clients(blocking_echo: tuple[str, int]) -> None:
    payload = os.urandom(200_000)
    with LinkEmulatorThread(upstream=blocking_echo, spec=FAST) as link:
        with socket.create_connection(("127.0.0.1", link.port), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            echoed = bytearray()
            while chunk := sock.recv(65536):
                echoed += chunk
        assert bytes(echoed) == payload
        # The benchmarks' pattern: a blocking caller checks the link it set up.
        measured = asyncio.run(measure_link("127.0.0.1", link.port, nbytes=100_000))
        assert measured["rtt_ms"] >= 2 * FAST.one_way_delay_s * 1000
        port = link.port
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the emulator is gone after the with block


# --- LinkSpec ----------------------------------------------------------------------------


def test_linkspec() -> None:
    spec = LinkSpec.from_mbit_rtt(20, 20)
    assert spec.rate_bps == 20e6 and spec.one_way_delay_s == pytest.approx(0.010)
    assert spec.describe() == "20 Mbit/s, 20 ms RTT"
    assert LinkSpec(rate_bps=None).describe() == "unlimited, 0 ms RTT"
    assert LinkSpec.from_mbit_rtt(2.5, 45).describe() == "2.5 Mbit/s, 45 ms RTT"
    assert spec.queue_cap == 256 * 1024 + 25_000
    for bad in [
        {"rate_bps": 0.0},
        {"rate_bps": -1.0},
        {"rate_bps": float("inf")},
        {"rate_bps": None, "one_way_delay_s": -0.1},
        {"rate_bps": None, "buffer_bytes": 0},
    ]:
        with pytest.raises(ConfigError):
            LinkSpec(**bad)  # type: ignore[arg-type]


async def test_emulator_and_check_server_bind_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        LinkEmulator(upstream=("127.0.0.1", 1), spec=FAST, host="0.0.0.0")
    with pytest.raises(ConfigError, match="link check server binds loopback only"):
        await serve_link_check("0.0.0.0")
    with pytest.raises(ConfigError, match="start"):
        _ = LinkEmulator(upstream=("127.0.0.1", 1), spec=FAST).port
