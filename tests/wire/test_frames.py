"""Frame codec: round trips, every split point, and each malformed frame of RELIABILITY.md."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgewire.errors import ChecksumMismatch, FrameTooLarge, ProtocolError
from edgewire.wire.frames import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    Frame,
    FrameDecoder,
    MsgType,
    encode_frame,
)

types = st.sampled_from(list(MsgType))


def raw_header(
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    msg_type: int = int(MsgType.PING),
    flags: int = 0,
    reserved: int = 0,
    request_id: int = 1,
    length: int = 0,
    crc: int = 0,
) -> bytes:
    return HEADER.pack(magic, version, msg_type, flags, reserved, request_id, length, crc)


@given(
    msg_type=types,
    payload=st.binary(max_size=2048),
    rid=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 2**16 - 1),
)
def test_round_trip(msg_type: MsgType, payload: bytes, rid: int, flags: int) -> None:
    data = encode_frame(msg_type, payload, request_id=rid, flags=flags)
    assert len(data) == HEADER_SIZE + len(payload)
    (frame,) = FrameDecoder().feed(data)
    assert frame == Frame(type=msg_type, payload=payload, request_id=rid, flags=flags)


def test_every_split_point_of_a_stream() -> None:
    stream = b"".join(
        encode_frame(t, bytes(range(n % 256)) * 3, request_id=n)
        for n, t in enumerate([MsgType.HELLO, MsgType.TRAIN_BATCH, MsgType.PING, MsgType.ERROR])
    )
    expected = FrameDecoder().feed(stream)
    assert len(expected) == 4
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert frames == expected, cut
        decoder.flush()


def test_byte_at_a_time() -> None:
    stream = encode_frame(MsgType.PING, b"abc") + encode_frame(MsgType.PONG, b"")
    decoder = FrameDecoder()
    frames = [f for i in range(len(stream)) for f in decoder.feed(stream[i : i + 1])]
    assert [f.type for f in frames] == [MsgType.PING, MsgType.PONG]


@given(chunks=st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_random_chunking(chunks: list[int]) -> None:
    stream = b"".join(encode_frame(MsgType.INFER_REQUEST, bytes([i]) * i) for i in range(12))
    decoder = FrameDecoder()
    frames, pos = [], 0
    for size in chunks * 50:
        if pos >= len(stream):
            break
        frames += decoder.feed(stream[pos : pos + size])
        pos += size
    frames += decoder.feed(stream[pos:])
    assert [len(f.payload) for f in frames] == list(range(12))


@pytest.mark.parametrize("length", [2**32 - 1, 1025, 1024 + 1])
def test_length_over_maximum_refused_before_payload(length: int) -> None:
    decoder = FrameDecoder(max_payload=1024)
    with pytest.raises(FrameTooLarge, match=str(length)):
        decoder.feed(raw_header(length=length))
    assert decoder.buffered == 0


def test_length_at_maximum_accepted() -> None:
    payload = b"x" * 1024
    (frame,) = FrameDecoder(max_payload=1024).feed(encode_frame(MsgType.PING, payload))
    assert frame.payload == payload


def test_length_zero_is_a_valid_empty_frame() -> None:
    (frame,) = FrameDecoder().feed(raw_header(length=0, crc=zlib.crc32(b"")))
    assert frame.payload == b""


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (raw_header(magic=b"XX"), "bad magic"),
        (raw_header(version=2), "unsupported protocol version 2"),
        (raw_header(version=0), "unsupported protocol version 0"),
        (raw_header(msg_type=99), "unknown message type 99"),
        (raw_header(msg_type=0), "unknown message type 0"),
        (raw_header(reserved=7), "reserved"),
    ],
)
def test_bad_headers(header: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(header)


def test_checksum_mismatch() -> None:
    data = bytearray(encode_frame(MsgType.PING, b"hello"))
    data[-1] ^= 0x01
    with pytest.raises(ChecksumMismatch):
        FrameDecoder().feed(bytes(data))


def test_truncated_header_and_payload_at_eof() -> None:
    for data in (encode_frame(MsgType.PING, b"abc")[:5], encode_frame(MsgType.PING, b"abc")[:-1]):
        decoder = FrameDecoder()
        assert decoder.feed(data) == []
        with pytest.raises(ProtocolError, match="truncated"):
            decoder.flush()


def test_garbage_after_a_valid_frame() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="bad magic"):
        decoder.feed(encode_frame(MsgType.PING, b"ok") + b"GARBAGE GARBAGE GARBAGE!")


def test_decoder_stays_broken_after_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00" * HEADER_SIZE)
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(MsgType.PING))


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(MsgType.PING, request_id=2**32)
    with pytest.raises(ProtocolError):
        encode_frame(MsgType.PING, flags=-1)


def test_header_layout_is_documented() -> None:
    # docs/protocol.md describes this exact layout; a change here is a protocol change.
    data = encode_frame(MsgType.TRAIN_BATCH, b"xyz", request_id=0x01020304, flags=5)
    assert data[:2] == b"EW"
    assert struct.unpack("<BBHHIII", data[2:20]) == (1, 34, 5, 0, 0x01020304, 3, zlib.crc32(b"xyz"))
