"""The I/O edge of the wire protocol: frames over an asyncio stream, with timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from typing import Any

import numpy.typing as npt

from edgewire.errors import (
    BusyError,
    ConnectError,
    PeerTimeout,
    ProtocolError,
    RemoteError,
    error_for_code,
)
from edgewire.wire.frames import DEFAULT_MAX_PAYLOAD, Frame, FrameDecoder, MsgType, encode_frame
from edgewire.wire.messages import (
    DEFAULT_LIMITS,
    Limits,
    Message,
    decode_message,
    encode_message,
    error_payload,
)

READ_CHUNK = 256 * 1024


class ByteBudget:
    """Bytes that all of a server's connections together may hold in frames they
    are still receiving: each frame is capped, and this caps their sum, so many
    peers each parking a nearly whole 64 MiB frame cannot exhaust memory."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def change(self, delta: int) -> bool:
        """Hold ``delta`` more bytes (or fewer, if negative); False if that would
        go over the capacity (then nothing is held)."""
        if delta > 0 and self.used + delta > self.capacity:
            return False
        self.used += delta
        return True


class TimedReads:
    """Reads from one stream, each bounded by its own timeout, with one timer in all.

    ``asyncio.timeout`` schedules and cancels a timer for every read; here one
    timer per stream fires at the earliest deadline and, if the read it was for
    has finished, re-arms itself for the one in progress, if any. A read then
    costs a clock read, not a timer. Reads are made by one task at a time.
    """

    __slots__ = ("_expired", "_timer", "_until", "_waiting", "reader")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self._timer: asyncio.TimerHandle | None = None
        self._until: float | None = None
        self._waiting: asyncio.Task[Any] | None = None
        self._expired = False

    async def read(self, size: int, wait: float | None) -> bytes:
        """Up to ``size`` bytes (b"" at end of stream); TimeoutError after ``wait`` s
        without any (None: no limit)."""
        if wait is None:
            return await self.reader.read(size)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        task = asyncio.current_task()
        self._until, self._waiting = until, task
        timer = self._timer
        if timer is None or timer.when() > until:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(until, self._expire, loop)
        try:
            return await self.reader.read(size)
        except asyncio.CancelledError:
            if not self._expired or task is None:
                raise
            self._expired = False
            if task.uncancel() > 0:  # cancelled by someone else too: theirs wins
                raise
            raise TimeoutError from None
        finally:
            self._until = self._waiting = None

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        until, task = self._until, self._waiting
        if until is None or task is None:
            return  # no read waits now; the next one arms the timer again
        if loop.time() < until:
            self._timer = loop.call_at(until, self._expire, loop)
            return
        self._expired = True
        task.cancel()

    def cancel(self) -> None:
        """Stop the timer (the stream is done with)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class FramedStream:
    """Reads and writes whole frames; every read has a timeout."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        limits: Limits = DEFAULT_LIMITS,
        budget: ByteBudget | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.limits = limits
        self._budget = budget
        self._held = 0
        self._decoder = FrameDecoder(max_payload=max_payload)
        # Frames decoded and not yet read: a list and the index of the next one (an idle
        # connection holds an empty list, not a deque's 600-byte block).
        self._ready: list[Frame] = []
        self._next = 0
        self._reads = TimedReads(reader)

    async def read_frame(
        self, timeout: float | None, *, frame_timeout: float | None = None
    ) -> Frame | None:
        """The next frame, or None at a clean end of stream.

        ``timeout`` bounds the wait for a frame to start; once its first byte is
        here, the whole frame must arrive within ``frame_timeout`` (default:
        ``timeout``), so a peer trickling one byte a second is cut off.
        """
        if self._next < len(self._ready):
            return self._take()
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while self._next >= len(self._ready):
            if self._decoder.buffered and deadline is None:
                limit = frame_timeout if frame_timeout is not None else timeout
                deadline = None if limit is None else loop.time() + limit
            wait = timeout if deadline is None else max(0.0, deadline - loop.time())
            try:
                chunk = await self._reads.read(READ_CHUNK, wait)
            except TimeoutError as exc:
                what = "frame to complete" if deadline is not None else "frame"
                raise PeerTimeout(f"no {what} within {wait:.3g} s") from exc
            except (ConnectionError, OSError) as exc:
                raise ConnectError(f"connection lost: {exc}") from exc
            if not chunk:
                self._hold(0)
                self._decoder.flush()
                return None
            self._ready, self._next = self._decoder.feed(chunk), 0
            self._hold(self._decoder.buffered)
        return self._take()

    def _take(self) -> Frame:
        frame = self._ready[self._next]
        self._next += 1
        if self._next == len(self._ready):
            self._ready, self._next = [], 0
        return frame

    def _hold(self, buffered: int) -> None:
        if self._budget is None:
            return
        if not self._budget.change(buffered - self._held):
            raise BusyError(
                "the agent is receiving too much data at once; send this frame again later"
            )
        self._held = buffered

    async def read_message(
        self, timeout: float | None, *, frame_timeout: float | None = None
    ) -> tuple[Frame, Message] | None:
        """The next frame and its decoded payload; error frames raise RemoteError."""
        frame = await self.read_frame(timeout, frame_timeout=frame_timeout)
        if frame is None:
            return None
        message = decode_message(frame.payload, self.limits)
        if frame.type is MsgType.ERROR:
            code = str(message.meta.get("code", "internal"))
            text = str(message.meta.get("message", "remote error"))
            raise _remote_error(code, text)
        return frame, message

    def send(
        self,
        msg_type: MsgType,
        meta: dict[str, Any] | None = None,
        tensors: list[npt.NDArray[Any]] | None = None,
        *,
        request_id: int = 0,
    ) -> None:
        payload = encode_message(meta, tensors)
        self.writer.write(encode_frame(msg_type, payload, request_id=request_id))

    def send_error(self, code: str, message: str, *, request_id: int = 0) -> None:
        self.writer.write(
            encode_frame(MsgType.ERROR, error_payload(code, message), request_id=request_id)
        )

    async def drain(self, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self.writer.drain()
        except TimeoutError as exc:
            raise PeerTimeout(f"peer did not read our data within {timeout:g} s") from exc
        except (ConnectionError, OSError) as exc:
            raise ConnectError(f"connection lost: {exc}") from exc

    def release(self) -> None:
        """Give back what a partly received frame held of the shared budget (and the
        read timer)."""
        self._reads.cancel()
        if self._budget is not None:
            self._budget.change(-self._held)
        self._held = 0

    async def close_after_error(self, linger: float = 1.0) -> None:
        """Close so that the peer still reads our error frame (see ``linger_close``)."""
        self.release()
        await linger_close(self.reader, self.writer, linger)

    async def close(self) -> None:
        self.release()
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            pass


async def linger_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, linger: float = 1.0
) -> None:
    """Close so that the peer still reads what we sent last (an error reply, say).

    Closing a socket with unread input makes the kernel send RST, and an RST
    can destroy our last reply before the peer reads it. So: send FIN, throw
    away whatever the peer is still sending for up to ``linger`` seconds, then
    close. A peer that does not take our reply within ``linger`` is cut off.
    """
    try:
        async with asyncio.timeout(linger):
            await writer.drain()
    except (TimeoutError, ConnectionError, OSError):
        writer.transport.abort()
        return
    with contextlib.suppress(TimeoutError, ConnectionError, OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(linger):
            while await reader.read(READ_CHUNK):
                pass
    writer.close()
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _remote_error(code: str, text: str) -> RemoteError:
    cls = error_for_code(code)
    return RemoteError(f"{text} [{cls.code}]", remote_code=code)


async def open_framed(
    host: str,
    port: int,
    *,
    timeout: float = 10.0,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    ssl: _ssl.SSLContext | bool | None = None,
) -> FramedStream:
    """A framed connection to ``host:port``; ``ssl``: TLS with this context (True: the
    default one, which checks the certificate against the system's CAs and ``host``)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, limit=READ_CHUNK, ssl=ssl or None
            )
    except TimeoutError as exc:
        raise PeerTimeout(f"connecting to {host}:{port} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    return FramedStream(reader, writer, max_payload=max_payload)


__all__ = ["FramedStream", "ProtocolError", "open_framed"]
