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

:mod:`edgewire.bench.linkcheck` measures what an emulated link really delivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from edgewire.config import is_loopback
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


def require_loopback(host: str, *, what: str = "the link emulator") -> None:
    """Refuse a bind beyond loopback: these test servers have no authentication."""
    if not is_loopback(host):
        raise ConfigError(f"{what} binds loopback only, not {host!r}")


# The emulators running in this process, by port, so that a link check can
# measure a twin of one instead of sending probes to its real upstream.
_RUNNING: dict[int, LinkEmulator] = {}
_RUNNING_LOCK = threading.Lock()


def running_emulator(host: str, port: int) -> LinkEmulator | None:
    """The LinkEmulator of this process listening on loopback ``port``, if any."""
    if not is_loopback(host):
        return None
    with _RUNNING_LOCK:
        return _RUNNING.get(port)


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
        require_loopback(host)
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
