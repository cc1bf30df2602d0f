"""Frames of the native wire protocol (v1): a fixed 20-byte header and a payload.

Sans-IO: :class:`FrameDecoder` is fed bytes in chunks of any size and returns
whole frames; :func:`encode_frame` returns the bytes of one frame. See
``docs/protocol.md`` for the layout.
"""

from __future__ import annotations

import struct
import zlib
from enum import IntEnum
from typing import NamedTuple

from edgewire.errors import ChecksumMismatch, FrameTooLarge, ProtocolError

MAGIC = b"EW"
VERSION = 1
#: magic, version, type, flags, reserved, request id, payload length, payload crc32
HEADER = struct.Struct("<2sBBHHIII")
HEADER_SIZE = HEADER.size
#: The largest payload a decoder accepts unless configured otherwise.
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
#: The wire format cannot express more than this.
ABSOLUTE_MAX_PAYLOAD = 2**32 - 1


class MsgType(IntEnum):
    HELLO = 1
    CAPABILITIES = 2
    PING = 3
    PONG = 4
    ERROR = 5
    INFER_REQUEST = 16
    INFER_RESPONSE = 17
    TRAIN_BEGIN = 32
    TRAIN_READY = 33
    TRAIN_BATCH = 34
    TRAIN_FEEDBACK = 35
    TRAIN_EPOCH = 36
    TRAIN_END = 37
    TRAIN_SUMMARY = 38
    SPLIT_TAIL_REQUEST = 48
    SPLIT_TAIL_RESPONSE = 49


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)
_TYPE_OF = {int(t): t for t in MsgType}


class Frame(NamedTuple):
    """One frame (a named tuple: a frame is made for every message on the hot path)."""

    type: MsgType
    payload: bytes
    request_id: int = 0
    flags: int = 0


def encode_frame(
    msg_type: MsgType, payload: bytes = b"", *, request_id: int = 0, flags: int = 0
) -> bytes:
    """The bytes of one frame."""
    if len(payload) > ABSOLUTE_MAX_PAYLOAD:
        raise FrameTooLarge(f"payload of {len(payload)} bytes cannot be framed")
    if not 0 <= request_id < 2**32:
        raise ProtocolError(f"request id {request_id!r} is not a u32")
    if not 0 <= flags < 2**16:
        raise ProtocolError(f"flags {flags!r} is not a u16")
    header = HEADER.pack(
        MAGIC, VERSION, int(msg_type), flags, 0, request_id, len(payload), zlib.crc32(payload)
    )
    return header + payload


def parse_header(
    header: bytes | bytearray | memoryview, *, max_payload: int, offset: int = 0
) -> tuple[MsgType, int, int, int, int]:
    """Check the header at ``offset``; return (type, flags, request id, payload length, crc32)."""
    magic, version, msg_type, flags, reserved, request_id, length, crc = HEADER.unpack_from(
        header, offset
    )
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}; is the peer speaking the edgewire protocol?")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks {VERSION})")
    if msg_type not in _KNOWN_TYPES:
        raise ProtocolError(f"unknown message type {msg_type}")
    if reserved != 0:
        raise ProtocolError(f"reserved header field is {reserved}, must be 0")
    if length > max_payload:
        raise FrameTooLarge(f"frame payload of {length} bytes is over the maximum {max_payload}")
    return _TYPE_OF[msg_type], flags, request_id, length, crc


class FrameDecoder:
    """Incremental frame decoder: ``feed(chunk)`` returns the frames completed so far.

    After a :class:`ProtocolError` the decoder is broken and every later call
    raises again: a byte stream cannot be resynchronised safely.
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= ABSOLUTE_MAX_PAYLOAD:
            raise ValueError(f"max_payload {max_payload!r} out of range")
        self._max_payload = max_payload
        self._buf = bytearray()
        self._pending: tuple[MsgType, int, int, int, int] | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole frame."""
        return len(self._buf)

    @property
    def needed(self) -> int:
        """Bytes still missing before the next frame completes (at least 1)."""
        if self._pending is None:
            if len(self._buf) >= HEADER_SIZE:  # a header kept whole by _feed_whole
                length: int = HEADER.unpack_from(self._buf)[6]
                return max(1, HEADER_SIZE + length - len(self._buf))
            return max(1, HEADER_SIZE - len(self._buf))
        return max(1, self._pending[3] - len(self._buf))

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._error is not None:
            raise self._error
        if not self._buf and self._pending is None:
            return self._feed_whole(data)
        self._buf += data
        frames: list[Frame] = []
        try:
            while True:
                frame = self._next()
                if frame is None:
                    return frames
                frames.append(frame)
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            raise

    def _feed_whole(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """``feed`` with nothing held: whole frames come straight from ``data`` (one copy
        each, of the payload), and only a cut-off rest is kept."""
        frames: list[Frame] = []
        pos, size = 0, len(data)
        try:
            while size - pos >= HEADER_SIZE:
                msg_type, flags, request_id, length, crc = parse_header(
                    data, max_payload=self._max_payload, offset=pos
                )
                end = pos + HEADER_SIZE + length
                if end > size:
                    break
                payload = bytes(data[pos + HEADER_SIZE : end])
                if zlib.crc32(payload) != crc:
                    raise ChecksumMismatch(f"{msg_type.name} frame payload fails its crc32 check")
                frames.append(Frame(msg_type, payload, request_id, flags))
                pos = end
        except ProtocolError as exc:
            self._error = exc
            raise
        if pos < size:
            self._buf += data[pos:]
        return frames

    def _next(self) -> Frame | None:
        if self._pending is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            self._pending = parse_header(
                bytes(self._buf[:HEADER_SIZE]), max_payload=self._max_payload
            )
            del self._buf[:HEADER_SIZE]
        msg_type, flags, request_id, length, crc = self._pending
        if len(self._buf) < length:
            return None
        payload = bytes(self._buf[:length])
        del self._buf[:length]
        self._pending = None
        if zlib.crc32(payload) != crc:
            raise ChecksumMismatch(f"{msg_type.name} frame payload fails its crc32 check")
        return Frame(type=msg_type, payload=payload, request_id=request_id, flags=flags)

    def flush(self) -> None:
        """Call at end of stream: raises if a frame was cut off."""
        if self._error is not None:
            raise self._error
        if self._pending is not None or self._buf:
            raise ProtocolError("stream ended in the middle of a frame (truncated)")
