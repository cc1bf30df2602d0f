"""A self-check for emulated links: what a link really delivers, against its settings.

``measure_link`` times one-byte round trips and the goodput of a bulk transfer
through a link, to a small echo/sink server (``serve_link_check``) behind it, so
that benchmarks can print the configured and the measured figures side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import struct
import time

from edgewire.bench.linkemu import CHUNK, LinkEmulator, LinkSpec, require_loopback, running_emulator
from edgewire.errors import ConfigError, ConnectError, PeerTimeout

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
    require_loopback(host, what="the link check server")
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
    emulator = running_emulator(host, port)
    if emulator is not None:
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
