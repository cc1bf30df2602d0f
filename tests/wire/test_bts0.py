"""The BTS0 codec: header layout, the seed's caps, and a decoder that survives any split."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewire.errors import FrameTooLarge, ProtocolError
from edgewire.wire.bts0 import (
    DTYPE_FLOAT32,
    ERR_REPLY,
    HEADER_SIZE,
    MAGIC,
    MAX_DATA_BYTES,
    MAX_LABEL_BYTES,
    OK_REPLY_SUFFIX,
    Bts0Batch,
    Bts0Decoder,
    Bts0Header,
    encode_batch,
    format_reply,
    parse_header,
)

IMAGE_BYTES = 4 * 28 * 28


def seed_header(
    index: int, data_len: int, label_len: int, *, magic: bytes = b"BTS0", dtype: int = 1
) -> bytes:
    """A header laid out field by field as the seed's sender writes it."""
    return (
        magic
        + struct.pack("<I", index)
        + struct.pack("<I", dtype)
        + b"\x00\x00\x00\x00"
        + struct.pack("<Q", data_len)
        + struct.pack("<Q", label_len)
    )


def make_batch(index: int, n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return encode_batch(index, images, labels), images, labels


def as_tuple(batch: Bts0Batch) -> tuple[Bts0Header, bytes, bytes]:
    return batch.header, batch.images.tobytes(), batch.labels.tobytes()


STREAM_PARTS = [make_batch(i, 2, seed=i) for i in range(3)]
STREAM = b"".join(part[0] for part in STREAM_PARTS)
EXPECTED = [
    (Bts0Header(i, DTYPE_FLOAT32, 2 * IMAGE_BYTES, 2), images.tobytes(), labels.tobytes())
    for i, (_, images, labels) in enumerate(STREAM_PARTS)
]


# --- header -----------------------------------------------------------------


def test_constants() -> None:
    assert HEADER_SIZE == 32
    assert MAGIC == b"BTS0"
    assert MAX_DATA_BYTES == 20 * 1024 * 1024
    assert MAX_LABEL_BYTES == 128 * 1024
    assert OK_REPLY_SUFFIX == b"OK\n"
    assert ERR_REPLY == b"ERR\n"


@given(index=st.integers(0, 2**32 - 1), n=st.integers(1, MAX_DATA_BYTES // IMAGE_BYTES))
def test_header_pack_parse_round_trip(index: int, n: int) -> None:
    header = Bts0Header(index, DTYPE_FLOAT32, n * IMAGE_BYTES, n)
    raw = header.pack()
    assert len(raw) == HEADER_SIZE
    assert raw == seed_header(index, n * IMAGE_BYTES, n)
    assert parse_header(raw) == header


def test_seed_layout_parses() -> None:
    raw = seed_header(3, 8 * IMAGE_BYTES, 8)
    assert raw[:4] == b"BTS0" and raw[12:16] == bytes(4)
    assert parse_header(raw) == Bts0Header(batch_index=3, dtype=1, data_len=8 * 3136, label_len=8)


def test_largest_batch_under_the_cap_parses() -> None:
    n = MAX_DATA_BYTES // IMAGE_BYTES
    assert parse_header(seed_header(0, n * IMAGE_BYTES, n)).label_len == n


@pytest.mark.parametrize(
    ("raw", "error", "shown"),
    [
        (seed_header(0, IMAGE_BYTES, 1, magic=b"BTSX"), ProtocolError, "b'BTSX'"),
        (seed_header(0, IMAGE_BYTES, 1, magic=b"\x00\x00\x00\x00"), ProtocolError, "x00"),
        (seed_header(0, IMAGE_BYTES, 1, dtype=2), ProtocolError, "dtype 2"),
        (seed_header(0, IMAGE_BYTES, 1, dtype=0), ProtocolError, "dtype 0"),
        (seed_header(0, 0, 0), ProtocolError, "data length is 0"),
        (seed_header(0, MAX_DATA_BYTES + 1, 1), FrameTooLarge, str(MAX_DATA_BYTES + 1)),
        (seed_header(0, 2**64 - 1, 1), FrameTooLarge, str(2**64 - 1)),
        (seed_header(0, IMAGE_BYTES, MAX_LABEL_BYTES + 1), FrameTooLarge, "131073"),
        (seed_header(0, 2 * IMAGE_BYTES, 3), ProtocolError, "6272 does not match label length 3"),
        (seed_header(0, IMAGE_BYTES + 1, 1), ProtocolError, "3137"),
        (seed_header(0, IMAGE_BYTES, 0), ProtocolError, "label length 0"),
        (seed_header(0, IMAGE_BYTES, 1)[:31], ProtocolError, "got 31"),
        (seed_header(0, IMAGE_BYTES, 1) + b"\x00", ProtocolError, "got 33"),
    ],
)
def test_bad_headers_are_refused(raw: bytes, error: type[ProtocolError], shown: str) -> None:
    with pytest.raises(error) as info:
        parse_header(raw)
    # Size errors are FrameTooLarge, every other refusal a plain ProtocolError.
    assert type(info.value) is error
    assert shown in str(info.value)


def test_pack_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ProtocolError, match=str(2**32)):
        Bts0Header(2**32, DTYPE_FLOAT32, IMAGE_BYTES, 1).pack()
    with pytest.raises(ProtocolError, match="-1"):
        Bts0Header(0, DTYPE_FLOAT32, -1, 1).pack()


# --- encode_batch -----------------------------------------------------------


def test_encode_batch_matches_the_seed_layout() -> None:
    images = np.arange(2 * 784, dtype=np.float32).reshape(2, 784) / np.float32(255)
    labels = np.array([7, 2], dtype=np.uint8)
    raw = encode_batch(5, images, labels)
    assert raw[:HEADER_SIZE] == seed_header(5, 2 * IMAGE_BYTES, 2)
    values = struct.unpack(f"<{2 * 784}f", raw[HEADER_SIZE : HEADER_SIZE + 2 * IMAGE_BYTES])
    assert values == tuple(float(v) for v in images.ravel())
    assert raw[HEADER_SIZE + 2 * IMAGE_BYTES :] == b"\x07\x02"
    # N x 1 x 28 x 28 is the same batch.
    assert encode_batch(5, images.reshape(2, 1, 28, 28), labels) == raw


def test_encode_batch_refuses_bad_input() -> None:
    labels = np.zeros(2, dtype=np.uint8)
    with pytest.raises(ProtocolError, match="float64"):
        encode_batch(0, np.zeros((2, 784)), labels)
    with pytest.raises(ProtocolError, match=r"\(3, 784\)"):
        encode_batch(0, np.zeros((3, 784), dtype=np.float32), labels)
    with pytest.raises(ProtocolError, match="int64"):
        encode_batch(0, np.zeros((2, 784), dtype=np.float32), labels.astype(np.int64))
    with pytest.raises(ProtocolError, match="empty"):
        encode_batch(0, np.zeros((0, 784), dtype=np.float32), labels[:0])
    n = MAX_DATA_BYTES // IMAGE_BYTES + 1
    with pytest.raises(FrameTooLarge, match=str(n)):
        encode_batch(0, np.zeros((n, 784), dtype=np.float32), np.zeros(n, dtype=np.uint8))


# --- decoder ----------------------------------------------------------------


def test_decoder_whole_stream() -> None:
    decoder = Bts0Decoder()
    batches = decoder.feed(STREAM)
    assert [as_tuple(b) for b in batches] == EXPECTED
    for batch, (_, images, labels) in zip(batches, STREAM_PARTS, strict=True):
        assert batch.images.shape == (2, 1, 28, 28)
        assert batch.images.dtype == np.dtype("<f4")
        assert not batch.images.flags.writeable
        assert batch.labels.dtype == np.uint8
        assert not batch.labels.flags.writeable
        np.testing.assert_array_equal(batch.images, images)
        np.testing.assert_array_equal(batch.labels, labels)
    assert decoder.buffered == 0
    decoder.flush()


def test_decoder_split_at_every_byte() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = Bts0Decoder()
        first = decoder.feed(STREAM[:cut])
        # The header is counted as held as soon as it is parsed.
        assert decoder.buffered == cut - sum(len(p[0]) for p in STREAM_PARTS[: len(first)])
        rest = decoder.feed(STREAM[cut:])
        assert [as_tuple(b) for b in first + rest] == EXPECTED, f"split at {cut}"
        decoder.flush()


def test_decoder_one_byte_at_a_time() -> None:
    decoder = Bts0Decoder()
    got: list[Bts0Batch] = []
    for i in range(len(STREAM)):
        got += decoder.feed(STREAM[i : i + 1])
    assert [as_tuple(b) for b in got] == EXPECTED


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=20))
def test_decoder_random_chunks(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = Bts0Decoder()
    got: list[Bts0Batch] = []
    for start, end in itertools.pairwise(bounds):
        got += decoder.feed(memoryview(STREAM)[start:end])
    assert [as_tuple(b) for b in got] == EXPECTED
    decoder.flush()


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
    chunk=st.integers(1, 5000),
)
def test_decoder_round_trips_random_batches(sizes: list[int], seed: int, chunk: int) -> None:
    parts = [make_batch(i * 7, n, seed + i) for i, n in enumerate(sizes)]
    stream = bytearray(b"".join(p[0] for p in parts))
    decoder = Bts0Decoder()
    got: list[Bts0Batch] = []
    for start in range(0, len(stream), chunk):
        got += decoder.feed(stream[start : start + chunk])
    assert len(got) == len(parts)
    for batch, (i, (_, images, labels)) in zip(got, enumerate(parts), strict=True):
        assert batch.header.batch_index == i * 7
        assert batch.images.tobytes() == images.tobytes()
        assert batch.labels.tobytes() == labels.tobytes()


def test_garbage_after_a_valid_batch() -> None:
    first = STREAM_PARTS[0][0]
    garbage = b"HTTP/1.1 200 OK\r\n" + bytes(HEADER_SIZE)
    decoder = Bts0Decoder()
    assert len(decoder.feed(first)) == 1
    with pytest.raises(ProtocolError, match="b'HTTP'"):
        decoder.feed(garbage)
    # In one chunk the error wins as well.
    with pytest.raises(ProtocolError, match="b'HTTP'"):
        Bts0Decoder().feed(first + garbage)


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = Bts0Decoder()
    with pytest.raises(ProtocolError, match="dtype 9"):
        decoder.feed(seed_header(0, IMAGE_BYTES, 1, dtype=9))
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError, match="dtype 9"):
        decoder.feed(STREAM)
    with pytest.raises(ProtocolError, match="dtype 9"):
        decoder.flush()


def test_truncated_stream_fails_on_flush() -> None:
    for cut in (1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 5, len(STREAM) - 1):
        decoder = Bts0Decoder()
        decoder.feed(STREAM[:cut])
        assert decoder.buffered > 0
        with pytest.raises(ProtocolError, match="middle of a batch"):
            decoder.flush()
    empty = Bts0Decoder()
    empty.feed(b"")
    empty.flush()


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (
            seed_header(0, MAX_DATA_BYTES + IMAGE_BYTES, MAX_DATA_BYTES // IMAGE_BYTES + 1),
            "20974656",
        ),
        (seed_header(0, IMAGE_BYTES, MAX_LABEL_BYTES + 1), "131073"),
        (seed_header(0, 2**63, 2**60), str(2**63)),
    ],
)
def test_oversize_header_is_refused_before_its_payload(header: bytes, shown: str) -> None:
    # The header alone is enough to refuse: nothing waits for the payload.
    decoder = Bts0Decoder()
    with pytest.raises(FrameTooLarge, match=shown):
        decoder.feed(header)
    assert decoder.buffered == 0
    # With payload bytes in the same chunk, none of them is kept.
    decoder = Bts0Decoder()
    with pytest.raises(FrameTooLarge, match=shown):
        decoder.feed(header + bytes(1 << 20))
    assert decoder.buffered == 0


# --- reply ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((3, 0.41234, 0.875), b"batch    3 | loss=0.4123 | acc= 87.5%\nOK\n"),
        ((0, 2.302585, 0.0), b"batch    0 | loss=2.3026 | acc=  0.0%\nOK\n"),
        ((12345, 0.0, 1.0), b"batch 12345 | loss=0.0000 | acc=100.0%\nOK\n"),
    ],
)
def test_format_reply(args: tuple[int, float, float], expected: bytes) -> None:
    reply = format_reply(*args)
    assert reply == expected
    assert reply.endswith(OK_REPLY_SUFFIX)
