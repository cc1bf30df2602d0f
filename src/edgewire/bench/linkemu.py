"""A userspace link emulator: a loopback TCP proxy that adds one-way delay and a rate limit.

Kernel traffic shaping is not available on our machines, so benchmarks put this
proxy between a client and a server. In each direction, every chunk read (at
most 16 KiB) is serialised at the configured rate, departing at
``max(now, previous departure) + len*8/rate``, and is delivered one-way delay
after it departs, in order. The proxy holds at most ``buffer_bytes`` queued in
front of the link plus what is in flight on it (rate x delay); beyond that it
stops reading, so the sender's TCP feels backpressure as on a real link.
Timers are good to about 1 ms on the stock asyncio loop (epoll rounds up to
whole milliseconds); delivery is never early.

Not modelled: loss, jitter, and the delay of the TCP handshake itself.

``measure_link`` checks an emulated link against its settings (goodput and
round-trip time through a small echo/sink server of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import statistics
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from edgewire.errors import ConfigError, ConnectError, PeerTimeout

CHUNK = 16 * 1024
CONNECT_TIMEOUT_S = 10.0
DEFAULT_IDLE_TIMEOUT_S = 300.0
_THREAD_START_TIMEOUT_S = 10.0


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One emulated link, the same in both directions."""

    rate_bps: float | None  # bits/s per direction; None = unlimited
    one_way_delay_s: float = 0.0
    buffer_bytes: int = 256 * 1024  # queued per direction before the proxy stops reading

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not (math.isfinite(self.rate_bps) and self.rate_bps > 0):
            raise ConfigError(f"rate_bps must be positive or None, got {self.rate_bps!r}")
        if not (math.isfinite(self.one_way_delay_s) and self.one_way_delay_s >= 0):
            raise ConfigError(f"one_way_delay_s must be >= 0, got {self.one_way_delay_s!r}")
        if self.buffer_bytes < 1:
            raise ConfigError(f"buffer_bytes must be at least 1, got {self.buffer_bytes!r}")

    @classmethod
    def from_mbit_rtt(cls, mbit: float, rtt_ms: float) -> LinkSpec:
        """A link of ``mbit`` Mbit/s each way and ``rtt_ms`` round trip (half each way)."""
        return cls(rate_bps=mbit * 1e6, one_way_delay_s=rtt_ms / 2000.0)

    @property
    def queue_cap(self) -> int:
        """Bytes one direction may hold: the buffer plus the bytes in flight (rate x delay)."""
        if self.rate_bps is None:
            return self.buffer_bytes
        return self.buffer_bytes + math.ceil(self.rate_bps * self.one_way_delay_s / 8)

    def describe(self) -> str:
        """E.g. ``"20 Mbit/s, 20 ms RTT"``."""
        rate = "unlimited" if self.rate_bps is None else f"{round(self.rate_bps / 1e6, 3):g} Mbit/s"
        return f"{rate}, {round(self.one_way_delay_s * 2000, 3):g} ms RTT"


async def _sleep_until(due: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``due``, never waking before it."""
    wait = due - time.monotonic()
    # A loop, because some event loops (uvloop) round timers to whole ms and
    # may wake a little early.
    while wait > 0:
        await asyncio.sleep(wait)
        wait = due - time.monotonic()


class _Activity:
    """The last time either direction of a connection carried data (for the idle cut-off)."""

    def __init__(self, now: float) -> None:
        self.last = now


class _Pipe:
    """One direction of a proxied connection: read and schedule, then deliver when due."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        spec: LinkSpec,
        activity: _Activity,
        idle_timeout_s: float,
        emulator: LinkEmulator,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._spec = spec
        self._activity = activity
        self._idle_timeout_s = idle_timeout_s
        self._emulator = emulator
        # (due time, chunk); an empty chunk is the end of stream.
        self._queue: deque[tuple[float, bytes]] = deque()
        self._queued = 0
        self._data = asyncio.Event()
        self._space = asyncio.Event()

    async def receive(self) -> None:
        rate, delay, cap = self._spec.rate_bps, self._spec.one_way_delay_s, self._spec.queue_cap
        departure = 0.0
        while True:
            while self._queued >= cap:
                self._space.clear()
                await self._space.wait()
            chunk = await self._read(min(CHUNK, cap - self._queued))
            # Schedule from the previous departure, never from when a timer fired,
            # so that late wake-ups do not add up.
            departure = max(time.monotonic(), departure)
            if rate is not None:
                departure += len(chunk) * 8 / rate
            self._queue.append((departure + delay, chunk))
            self._queued += len(chunk)
            self._emulator.peak_queued_bytes = max(self._emulator.peak_queued_bytes, self._queued)
            self._data.set()
            if not chunk:
                return

    async def _read(self, limit: int) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout_at(self._activity.last + self._idle_timeout_s):
                    chunk = await self._reader.read(limit)
            except TimeoutError:
                # The other direction may have been busy meanwhile.
                if loop.time() < self._activity.last + self._idle_timeout_s:
                    continue
                raise PeerTimeout(f"no traffic for {self._idle_timeout_s:g} s") from None
            self._activity.last = loop.time()
            return chunk

    async def deliver(self) -> None:
        while True:
            while not self._queue:
                self._data.clear()
                await self._data.wait()
            await _sleep_until(self._queue[0][0])
            now = time.monotonic()
            written = 0
            while self._queue and self._queue[0][0] <= now:
                _, chunk = self._queue.popleft()
                if not chunk:
                    await self._writer.drain()
                    if self._writer.can_write_eof():
                        self._writer.write_eof()
                    return
                self._writer.write(chunk)
                written += len(chunk)
            await self._writer.drain()
            self._queued -= written
            self._space.set()


_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (not a FIN), so that the peer sees what this side saw."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_loopback(host: str) -> None:
    if not _is_loopback(host):
        raise ConfigError(f"the link emulator binds loopback only, not {host!r}")


# The emulators running in this process, by port, so that measure_link can
# check a twin of one instead of sending probes to its real upstream.
_RUNNING: dict[int, LinkEmulator] = {}
_RUNNING_LOCK = threading.Lock()


class LinkEmulator:
    """A TCP proxy on loopback in front of ``upstream`` that behaves like ``spec``."""

    def __init__(
        self,
        *,
        upstream: tuple[str, int],
        spec: LinkSpec,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        _check_loopback(host)
        self.upstream = upstream
        self.spec = spec
        self.host = host
        self.idle_timeout_s = idle_timeout_s
        #: The most bytes any one direction has held (a check that the queue is bounded).
        self.peak_queued_bytes = 0
        self._requested_port = port
        self._port: int | None = None
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        if self._port is None:
            raise ConfigError("the link emulator has no port until start() has run")
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            return
        self._closing = asyncio.Event()  # bound to this loop, even after a restart
        self._server = await asyncio.start_server(self._session, self.host, self._requested_port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        with _RUNNING_LOCK:
            _RUNNING[self._port] = self

    async def close(self) -> None:
        """Stop listening and cut every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with _RUNNING_LOCK:
            if self._port is not None and _RUNNING.get(self._port) is self:
                del _RUNNING[self._port]
        # Sessions end themselves on this signal: cancelling a task that
        # asyncio.start_server created trips over a bug in Python 3.11's streams.
        self._closing.set()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> LinkEmulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _session(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)
        writers = [client_writer]
        try:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except (OSError, TimeoutError):
                _reset(client_writer)  # as a refused connect looks to the client
                return
            writers.append(up_writer)
            await self._pump(client_reader, client_writer, up_reader, up_writer)
        except* (OSError, ConnectError):
            # A reset or idle cut-off on one side resets the other side too.
            for writer in writers:
                _reset(writer)
        finally:
            for writer in writers:
                writer.close()
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _pump(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        activity = _Activity(asyncio.get_running_loop().time())
        pipes = [
            _Pipe(
                reader,
                writer,
                spec=self.spec,
                activity=activity,
                idle_timeout_s=self.idle_timeout_s,
                emulator=self,
            )
            for reader, writer in ((client_reader, up_writer), (up_reader, client_writer))
        ]
        async with asyncio.TaskGroup() as group:
            # A failing pipe makes the group cancel the wait below and re-raise.
            watcher = group.create_task(self._until_closing())
            tasks = [group.create_task(p.receive()) for p in pipes]
            tasks += [group.create_task(p.deliver()) for p in pipes]
            await asyncio.wait(tasks)
            watcher.cancel()

    async def _until_closing(self) -> None:
        await self._closing.wait()
        raise ConnectError("the link emulator closed")


class LinkEmulatorThread:
    """A LinkEmulator on its own event loop in a daemon thread, for blocking callers.

    ``with LinkEmulatorThread(upstream=..., spec=...) as link: connect to link.port``
    """

    def __init__(
        self,
        *,
        upstream: tuple[str, int],
        spec: LinkSpec,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.emulator = LinkEmulator(upstream=upstream, spec=spec, host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def spec(self) -> LinkSpec:
        return self.emulator.spec

    def __enter__(self) -> LinkEmulatorThread:
        # The stock selector loop, whatever the policy: its timers are finer than uvloop's.
        loop = asyncio.SelectorEventLoop()
        thread = threading.Thread(target=loop.run_forever, name="edgewire-linkemu", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            started = asyncio.run_coroutine_threadsafe(self.emulator.start(), loop)
            started.result(timeout=_THREAD_START_TIMEOUT_S)
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        try:
            closed = asyncio.run_coroutine_threadsafe(self.emulator.close(), loop)
            closed.result(timeout=_THREAD_START_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=_THREAD_START_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()


# --- self-check: measure what an emulated link really delivers ------------------------

_ECHO, _SINK = b"E", b"S"
_SINK_HEADER = struct.Struct(">Q")  # bytes the client will send
_SINK_REPLY = struct.Struct(">Qd")  # bytes timed, seconds from first to last byte
MAX_CHECK_BYTES = 1 << 30
CHECK_READ_TIMEOUT_S = 60.0
_RTT_SAMPLES = 5


async def _read_with_timeout(reader: asyncio.StreamReader, limit: int) -> bytes:
    async with asyncio.timeout(CHECK_READ_TIMEOUT_S):
        return await reader.read(limit)


async def _check_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(CHECK_READ_TIMEOUT_S):
            mode = await reader.readexactly(1)
        if mode == _ECHO:
            while chunk := await _read_with_timeout(reader, CHUNK):
                writer.write(chunk)
                await writer.drain()
        elif mode == _SINK:
            async with asyncio.timeout(CHECK_READ_TIMEOUT_S):
                (total,) = _SINK_HEADER.unpack(await reader.readexactly(_SINK_HEADER.size))
            if not 0 < total <= MAX_CHECK_BYTES:
                return
            received, first, started, now = 0, 0, 0.0, 0.0
            while received < total:
                chunk = await _read_with_timeout(reader, min(CHUNK, total - received))
                if not chunk:
                    return
                now = time.perf_counter()
                if not received:
                    first, started = len(chunk), now
                received += len(chunk)
            writer.write(_SINK_REPLY.pack(total - first, now - started))
            await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass  # a broken check connection only ends this check
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def serve_link_check(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """The echo/sink server that ``measure_link`` talks to (put the link in front of it)."""
    _check_loopback(host)
    return await asyncio.start_server(_check_session, host, port)


async def measure_link(
    host: str, port: int, *, nbytes: int = 2_000_000, timeout_s: float = 120.0
) -> dict[str, float]:
    """Measure the link at ``host:port``, so benchmarks can print configured vs measured.

    If ``host:port`` is a LinkEmulator of this process, a twin link of the same
    spec is measured in front of a check server of our own: the emulator's real
    upstream never sees the probes. Otherwise the far end of ``host:port`` must
    be ``serve_link_check``.

    Returns ``mbit``, the one-way goodput in Mbit/s timed at the receiver from
    first to last byte, and ``rtt_ms``, the median round trip of a one-byte message.
    """
    with _RUNNING_LOCK:
        emulator = _RUNNING.get(port)
    if emulator is not None and _is_loopback(host):
        return await check_link(emulator.spec, nbytes=nbytes, timeout_s=timeout_s)
    return await _probe(host, port, nbytes=nbytes, timeout_s=timeout_s)


async def check_link(
    spec: LinkSpec, *, nbytes: int = 2_000_000, timeout_s: float = 120.0
) -> dict[str, float]:
    """Emulate ``spec`` in front of a fresh check server and measure it."""
    server = await serve_link_check()
    try:
        upstream = ("127.0.0.1", int(server.sockets[0].getsockname()[1]))
        async with LinkEmulator(upstream=upstream, spec=spec) as link:
            return await _probe("127.0.0.1", link.port, nbytes=nbytes, timeout_s=timeout_s)
    finally:
        server.close()
        await server.wait_closed()


async def _probe(host: str, port: int, *, nbytes: int, timeout_s: float) -> dict[str, float]:
    """Time one-byte echoes and a sink of ``nbytes`` through ``host:port``."""
    if not CHUNK <= nbytes <= MAX_CHECK_BYTES:
        raise ConfigError(f"nbytes must be in {CHUNK}..{MAX_CHECK_BYTES}, got {nbytes!r}")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_ECHO)
                samples = []
                for _ in range(_RTT_SAMPLES):
                    sent = time.perf_counter()
                    writer.write(b"p")
                    await writer.drain()
                    await reader.readexactly(1)
                    samples.append(time.perf_counter() - sent)
            finally:
                writer.close()
                await writer.wait_closed()
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(_SINK + _SINK_HEADER.pack(nbytes))
                block = bytes(4 * CHUNK)
                for offset in range(0, nbytes, len(block)):
                    writer.write(block[: nbytes - offset])
                    await writer.drain()
                timed, seconds = _SINK_REPLY.unpack(await reader.readexactly(_SINK_REPLY.size))
            finally:
                writer.close()
                await writer.wait_closed()
    except TimeoutError:
        raise PeerTimeout(f"the link check via {host}:{port} took over {timeout_s:g} s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise ConnectError(f"the link check via {host}:{port} failed: {exc}") from exc
    return {
        "mbit": timed * 8 / max(seconds, 1e-9) / 1e6,
        "rtt_ms": statistics.median(samples) * 1000,
    }
