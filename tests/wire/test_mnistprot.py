"""MnistProt codec: the seed's exact sizes, round trips, other valid layouts, hostile bytes."""

from __future__ import annotations

import contextlib
import itertools
import struct

import flatbuffers
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgewire.errors import FrameTooLarge, ProtocolError
from edgewire.wire.mnistprot import (
    CMD_GET_STATS,
    CMD_INFERENCE_INPUT,
    CMD_INFERENCE_OUTPUT,
    DIGIT_LEN,
    MAX_REQUEST_BYTES,
    MAX_VECTOR_LEN,
    OUTPUT_LEN,
    REQUEST_SIZE,
    RESPONSE_SIZE,
    MnistRequest,
    MnistResponse,
    RequestFramer,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)

DIGIT = (np.arange(DIGIT_LEN, dtype=np.float32) % 255) / 255
OUTPUT = np.linspace(-1.0, 1.0, OUTPUT_LEN, dtype=np.float32)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def bits(a: np.ndarray | float) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


# --- hand-built buffers (what flatc-generated code would do, field by field) ---


def seed_response(output: np.ndarray, timer_ms: float) -> bytes:
    """The seed server's build: one PrependFloat32 per value, no force_defaults."""
    b = flatbuffers.Builder(128)
    b.StartVector(4, OUTPUT_LEN, 4)
    for value in reversed(output.tolist()):
        b.PrependFloat32(value)
    vector = b.EndVector()
    b.StartObject(3)
    b.PrependFloat32Slot(2, timer_ms, 0.0)  # timer_ms
    b.PrependUint8Slot(1, OUTPUT_LEN, 0)  # output_n
    b.PrependUOffsetTRelativeSlot(0, vector, 0)  # output_f
    inference_output = b.EndObject()
    b.StartObject(4)
    b.PrependInt8Slot(0, CMD_INFERENCE_OUTPUT, 0)
    b.PrependUOffsetTRelativeSlot(3, inference_output, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def request_with(
    *, cmd: int | None, digit: np.ndarray | None, force: bool = False, stats: bool = False
) -> bytes:
    """A request built in the reverse field order of the firmware, optionally with Stats."""
    b = flatbuffers.Builder(0)
    b.ForceDefaults(force)
    stats_table = None
    if stats:
        b.StartObject(3)
        b.PrependInt8Slot(2, 0, 0)  # mode (default, kept only when forced)
        b.PrependUint32Slot(1, 160_000_000, 0)  # freq
        b.PrependUint8Slot(0, 1, 0)  # version
        stats_table = b.EndObject()
    input_table = None
    if digit is not None:
        vector = b.CreateNumpyVector(np.asarray(digit, dtype="<f4"))
        b.StartObject(1)
        b.PrependUOffsetTRelativeSlot(0, vector, 0)
        input_table = b.EndObject()
    b.StartObject(4)
    if input_table is not None:
        b.PrependUOffsetTRelativeSlot(2, input_table, 0)
    if stats_table is not None:
        b.PrependUOffsetTRelativeSlot(1, stats_table, 0)
    if cmd is not None:
        b.PrependInt8Slot(0, cmd, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


def table_vtable_delta(buf: bytes, table: int) -> int:
    """Vtable position minus table position (positive: the vtable lies after the table)."""
    (soffset,) = struct.unpack_from("<i", buf, table)
    return -int(soffset)


# --- sizes and the seed's bytes ---


def test_request_is_exactly_3180_bytes() -> None:
    assert len(encode_request(DIGIT)) == REQUEST_SIZE == 3180


@pytest.mark.parametrize("timer_ms", [8.42, 0.0, -0.0, 1e-30, 3.0e38])
def test_response_is_exactly_96_bytes(timer_ms: float) -> None:
    assert len(encode_response(OUTPUT, timer_ms)) == RESPONSE_SIZE == 96


def test_response_matches_the_seed_servers_bytes() -> None:
    assert encode_response(OUTPUT, 8.42) == seed_response(OUTPUT, 8.42)


def test_seed_build_loses_a_zero_timer_and_ours_does_not() -> None:
    # Why encode_response forces defaults: the seed's build drops timer_ms == 0.0.
    shrunk = seed_response(OUTPUT, 0.0)
    assert len(shrunk) == 92
    assert decode_response(shrunk).timer_ms == 0.0  # still a valid buffer, just short
    assert decode_response(encode_response(OUTPUT, 0.0)).timer_ms == 0.0


def test_request_layout_has_the_digit_vector_at_the_end() -> None:
    buf = encode_request(DIGIT)
    (count,) = struct.unpack_from("<I", buf, REQUEST_SIZE - 4 * DIGIT_LEN - 4)
    assert count == DIGIT_LEN
    assert buf[-4 * DIGIT_LEN :] == DIGIT.astype("<f4").tobytes()


# --- round trips ---


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, DIGIT_LEN, elements=finite32))
def test_request_round_trip(digit: np.ndarray) -> None:
    decoded = decode_request(encode_request(digit))
    assert isinstance(decoded, MnistRequest)
    assert decoded.cmd == CMD_INFERENCE_INPUT
    assert decoded.digit is not None
    assert decoded.digit.dtype == np.float32
    assert np.array_equal(bits(decoded.digit), bits(digit))


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, OUTPUT_LEN, elements=finite32), finite32)
def test_response_round_trip(output: np.ndarray, timer_ms: float) -> None:
    decoded = decode_response(encode_response(output, timer_ms))
    assert isinstance(decoded, MnistResponse)
    assert decoded.cmd == CMD_INFERENCE_OUTPUT
    assert decoded.output_n == OUTPUT_LEN
    assert np.array_equal(bits(decoded.output), bits(output))
    assert bits(decoded.timer_ms) == bits(timer_ms)


def test_decoders_take_bytearray_and_memoryview() -> None:
    buf = encode_request(DIGIT)
    for variant in (bytearray(buf), memoryview(buf)):
        digit = decode_request(variant).digit
        assert digit is not None
        assert np.array_equal(digit, DIGIT)


def test_decoded_digit_is_a_private_copy() -> None:
    buf = bytearray(encode_request(DIGIT))
    digit = decode_request(buf).digit
    assert digit is not None
    buf[-4:] = b"\xff\xff\xff\xff"
    digit[0] = 42.0  # writable, and owns its memory
    assert digit[-1] == DIGIT[-1]


# --- other valid layouts ---


@pytest.mark.parametrize("force", [False, True])
def test_request_in_another_field_order_with_stats(force: bool) -> None:
    buf = request_with(cmd=CMD_INFERENCE_INPUT, digit=DIGIT, force=force, stats=True)
    assert buf != encode_request(DIGIT)
    decoded = decode_request(buf)
    assert decoded.cmd == CMD_INFERENCE_INPUT
    assert decoded.digit is not None
    assert np.array_equal(decoded.digit, DIGIT)


def test_request_with_a_shared_vtable_placed_after_the_table() -> None:
    b = flatbuffers.Builder(0)
    decoy = b.CreateNumpyVector(np.full(5, 7.0, dtype="<f4"))
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, decoy, 0)
    b.EndObject()  # an unreferenced table whose vtable the next one reuses
    vector = b.CreateNumpyVector(DIGIT)
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, vector, 0)
    input_table = b.EndObject()
    b.StartObject(4)
    b.PrependInt8Slot(0, CMD_INFERENCE_INPUT, 0)
    b.PrependUOffsetTRelativeSlot(2, input_table, 0)
    b.Finish(b.EndObject())
    buf = bytes(b.Output())
    input_pos = len(buf) - input_table
    assert table_vtable_delta(buf, input_pos) > 0  # the vtable really is shared, after the table
    digit = decode_request(buf).digit
    assert digit is not None
    assert np.array_equal(digit, DIGIT)


def test_response_in_another_order_with_forced_defaults_and_extra_tables() -> None:
    b = flatbuffers.Builder(0)
    b.ForceDefaults(True)
    b.StartObject(3)
    b.PrependUint8Slot(0, 2, 0)
    stats_table = b.EndObject()
    vector = b.CreateNumpyVector(OUTPUT)
    b.StartObject(3)
    b.PrependUOffsetTRelativeSlot(0, vector, 0)
    b.PrependUint8Slot(1, OUTPUT_LEN, 0)
    b.PrependFloat32Slot(2, 0.0, 0.0)
    output_table = b.EndObject()
    b.StartObject(4)
    b.PrependUOffsetTRelativeSlot(3, output_table, 0)
    b.PrependUOffsetTRelativeSlot(1, stats_table, 0)
    b.PrependInt8Slot(0, CMD_INFERENCE_OUTPUT, 0)
    b.Finish(b.EndObject())
    decoded = decode_response(bytes(b.Output()))
    assert decoded.cmd == CMD_INFERENCE_OUTPUT
    assert np.array_equal(decoded.output, OUTPUT)
    assert (decoded.output_n, decoded.timer_ms) == (OUTPUT_LEN, 0.0)


def test_response_with_defaults_omitted() -> None:
    b = flatbuffers.Builder(0)
    b.StartObject(3)
    output_table = b.EndObject()  # no output_f, output_n or timer_ms at all
    b.StartObject(4)
    b.PrependInt8Slot(0, CMD_INFERENCE_OUTPUT, 0)
    b.PrependUOffsetTRelativeSlot(3, output_table, 0)
    b.Finish(b.EndObject())
    decoded = decode_response(bytes(b.Output()))
    assert decoded.output.size == 0
    assert (decoded.output_n, decoded.timer_ms) == (0, 0.0)


def test_get_stats_request_has_no_digit() -> None:
    for buf in (request_with(cmd=None, digit=None), request_with(cmd=0, digit=None, force=True)):
        decoded = decode_request(buf)
        assert (decoded.cmd, decoded.digit) == (CMD_GET_STATS, None)


def test_trailing_bytes_after_a_valid_buffer_are_ignored() -> None:
    digit = decode_request(encode_request(DIGIT) + b"\x00" * 37).digit
    assert digit is not None
    assert np.array_equal(digit, DIGIT)


# --- refused requests ---


@pytest.mark.parametrize("length", [0, 1, DIGIT_LEN - 1, DIGIT_LEN + 1, 4 * DIGIT_LEN])
def test_wrong_digit_length_is_refused(length: int) -> None:
    with pytest.raises(ProtocolError, match="expected 784"):
        decode_request(encode_request(np.zeros(length, np.float32)))


@pytest.mark.parametrize("cmd", [CMD_INFERENCE_OUTPUT, 3, 127, -1, -128])
def test_wrong_cmd_is_refused(cmd: int) -> None:
    with pytest.raises(ProtocolError, match="cmd"):
        decode_request(request_with(cmd=cmd, digit=DIGIT))


def test_inference_request_without_input_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"no `input\.digit`"):
        decode_request(request_with(cmd=CMD_INFERENCE_INPUT, digit=None, stats=True))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_digit_is_refused(bad: float) -> None:
    digit = DIGIT.copy()
    digit[400] = bad
    with pytest.raises(ProtocolError, match="NaN or Inf"):
        decode_request(encode_request(digit))


def test_a_request_is_not_a_response_and_back() -> None:
    with pytest.raises(ProtocolError, match="CMD_INFERENCE_OUTPUT"):
        decode_response(encode_request(DIGIT))
    with pytest.raises(ProtocolError, match="cmd is 2"):
        decode_request(encode_response(OUTPUT, 1.0))


def test_encode_response_refuses_what_the_firmware_cannot_read() -> None:
    with pytest.raises(ProtocolError, match="exactly 10 outputs"):
        encode_response(np.zeros(9, np.float32), 1.0)
    for timer in (float("nan"), float("inf"), 1e39):
        with pytest.raises(ProtocolError, match="timer_ms"):
            encode_response(OUTPUT, timer)


# --- hostile bytes ---

VALID_REQUEST = encode_request(DIGIT)
VALID_RESPONSE = encode_response(OUTPUT, 8.42)


def test_every_truncated_request_is_refused() -> None:
    for size in range(REQUEST_SIZE):
        with pytest.raises(ProtocolError):
            decode_request(VALID_REQUEST[:size])


def test_every_truncated_response_is_refused() -> None:
    for size in range(RESPONSE_SIZE):
        with pytest.raises(ProtocolError):
            decode_response(VALID_RESPONSE[:size])


def flipped(buf: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(buf)
    for pos, mask in flips:
        out[pos % len(out)] ^= mask
    return bytes(out)


flips = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(flips)
def test_flipped_request_decodes_or_is_refused(changes: list[tuple[int, int]]) -> None:
    # Flips in the header region are where the verifier earns its keep.
    header_first = [
        (pos % 64, mask) if i % 2 == 0 else (pos, mask) for i, (pos, mask) in enumerate(changes)
    ]
    try:
        decoded = decode_request(flipped(VALID_REQUEST, header_first))
    except ProtocolError:
        return
    if decoded.digit is not None:
        assert decoded.digit.shape == (DIGIT_LEN,)
        assert np.isfinite(decoded.digit).all()


@settings(max_examples=300, deadline=None)
@given(flips)
def test_flipped_response_decodes_or_is_refused(changes: list[tuple[int, int]]) -> None:
    try:
        decoded = decode_response(flipped(VALID_RESPONSE, changes))
    except ProtocolError:
        return
    assert decoded.cmd == CMD_INFERENCE_OUTPUT


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_are_refused(data: bytes) -> None:
    for decode in (decode_request, decode_response):
        with contextlib.suppress(ProtocolError):
            decode(data)


def patched(buf: bytes, pos: int, fmt: str, value: int) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, pos, value)
    return bytes(out)


def test_root_offset_past_the_end() -> None:
    with pytest.raises(ProtocolError, match="outside"):
        decode_request(patched(VALID_REQUEST, 0, "<I", 0xFFFFFFFF))


def test_vtable_offset_out_of_the_buffer() -> None:
    (root,) = struct.unpack_from("<I", VALID_REQUEST, 0)
    for soffset in (2**31 - 1, -(2**31)):
        with pytest.raises(ProtocolError, match="vtable"):
            decode_request(patched(VALID_REQUEST, root, "<i", soffset))


def test_odd_or_tiny_vtable_size() -> None:
    (root,) = struct.unpack_from("<I", VALID_REQUEST, 0)
    vtable = root - struct.unpack_from("<i", VALID_REQUEST, root)[0]
    for size in (0, 2, 7):
        with pytest.raises(ProtocolError, match="vtable size"):
            decode_request(patched(VALID_REQUEST, vtable, "<H", size))


def test_huge_vector_length_is_refused_before_reading() -> None:
    count_at = REQUEST_SIZE - 4 * DIGIT_LEN - 4
    with pytest.raises(FrameTooLarge, match="claims"):
        decode_request(patched(VALID_REQUEST, count_at, "<I", 0xFFFFFFFF))
    with pytest.raises(ProtocolError, match="digit data"):
        decode_request(patched(VALID_REQUEST, count_at, "<I", DIGIT_LEN + 1))


def test_oversized_buffer_is_refused() -> None:
    with pytest.raises(FrameTooLarge):
        decode_request(VALID_REQUEST + bytes(MAX_REQUEST_BYTES))


# --- framing ---

SPLITS = sorted({*range(0, 2 * REQUEST_SIZE + 1, 97), 1, 2, 3179, 3180, 3181, 6359, 6360})


@pytest.mark.parametrize("split", SPLITS)
def test_framer_two_requests_split_anywhere(split: int) -> None:
    second = encode_request(DIGIT[::-1].copy())
    stream = VALID_REQUEST + second
    framer = RequestFramer()
    got = framer.feed(stream[:split])
    assert framer.buffered == split % REQUEST_SIZE
    got += framer.feed(stream[split:])
    assert got == [VALID_REQUEST, second]
    assert framer.buffered == 0
    framer.flush()


def test_framer_byte_by_byte_and_truncated_end() -> None:
    framer = RequestFramer()
    got: list[bytes] = []
    for i in range(REQUEST_SIZE + 10):
        got += framer.feed(VALID_REQUEST[i % REQUEST_SIZE : i % REQUEST_SIZE + 1])
    assert got == [VALID_REQUEST]
    assert framer.buffered == 10
    with pytest.raises(ProtocolError, match="10 of 3180"):
        framer.flush()


# --- framing by content: other layouts, wrong lengths, garbage ---


def firmware_with_stats(digit: np.ndarray) -> bytes:
    """The firmware's build plus a Stats table (version, freq; mode left at its default)."""
    b = flatbuffers.Builder(0)
    b.StartObject(3)
    b.PrependUint8Slot(0, 1, 0)
    b.PrependUint32Slot(1, 160_000_000, 0)
    b.PrependInt8Slot(2, 0, 0)
    stats_table = b.EndObject()
    vector = b.CreateNumpyVector(np.asarray(digit, dtype="<f4"))
    b.StartObject(1)
    b.PrependUOffsetTRelativeSlot(0, vector, 0)
    input_table = b.EndObject()
    b.StartObject(4)
    b.PrependInt8Slot(0, CMD_INFERENCE_INPUT, 0)
    b.PrependUOffsetTRelativeSlot(1, stats_table, 0)
    b.PrependUOffsetTRelativeSlot(2, input_table, 0)
    b.Finish(b.EndObject())
    return bytes(b.Output())


STATS_REQUEST = firmware_with_stats(DIGIT)
SHORT_REQUEST = encode_request(np.zeros(DIGIT_LEN - 1, np.float32))  # 783 floats
VARIANTS = [
    VALID_REQUEST,
    STATS_REQUEST,
    request_with(cmd=CMD_INFERENCE_INPUT, digit=DIGIT, force=True, stats=True),
    request_with(cmd=None, digit=None),  # CMD_GET_STATS, nothing else: a few bytes
    SHORT_REQUEST,
    encode_request(DIGIT[::-1].copy()),
]


def test_the_stats_variant_is_3204_bytes_and_valid() -> None:
    assert len(STATS_REQUEST) == 3204
    digit = decode_request(STATS_REQUEST).digit
    assert digit is not None
    assert np.array_equal(digit, DIGIT)


def test_framer_cuts_the_stats_variant_where_it_ends() -> None:
    framer = RequestFramer()
    assert framer.feed(STATS_REQUEST[:-1]) == []
    assert framer.feed(STATS_REQUEST[-1:] + VALID_REQUEST[:10]) == [STATS_REQUEST]
    assert framer.buffered == 10
    assert framer.feed(VALID_REQUEST[10:]) == [VALID_REQUEST]
    assert framer.buffered == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(VARIANTS))), min_size=1, max_size=5),
    st.lists(st.integers(0, 6 * 3300), max_size=8),
)
def test_framer_any_valid_layouts_split_anywhere(picks: list[int], cuts: list[int]) -> None:
    requests = [VARIANTS[i] for i in picks]
    stream = b"".join(requests)
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = RequestFramer()
    got: list[bytes] = []
    for start, end in itertools.pairwise(points):
        got += framer.feed(stream[start:end])
        assert framer.buffered <= MAX_REQUEST_BYTES
    assert got == requests
    assert framer.buffered == 0
    framer.flush()


def test_framer_every_split_point_of_the_stats_variant() -> None:
    stream = STATS_REQUEST + VALID_REQUEST
    for split in range(len(stream) + 1):
        framer = RequestFramer()
        got = framer.feed(stream[:split]) + framer.feed(stream[split:])
        assert got == [STATS_REQUEST, VALID_REQUEST], split


def test_a_783_float_request_is_cut_at_once_then_refused() -> None:
    # Refused, not answered: the model takes 784 values, and padding would invent a
    # pixel. The point is that it is refused at once (its own offsets say it is
    # complete at 3176 bytes) instead of waiting for 4 bytes that never come.
    framer = RequestFramer()
    assert len(SHORT_REQUEST) == REQUEST_SIZE - 4
    assert framer.feed(SHORT_REQUEST) == [SHORT_REQUEST]
    assert framer.buffered == 0
    with pytest.raises(ProtocolError, match="783 values; expected 784"):
        decode_request(SHORT_REQUEST)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * REQUEST_SIZE,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff" * 8,
        VALID_RESPONSE[:4] + b"\x00" * 200,  # a root table whose vtable is zeros
    ],
    ids=["zeros", "http", "ff", "zero vtable"],
)
def test_framer_refuses_garbage_at_once(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        RequestFramer().feed(garbage)


def test_framer_refuses_a_vector_past_the_cap_before_its_data_comes() -> None:
    count_at = REQUEST_SIZE - 4 * DIGIT_LEN - 4
    huge = patched(VALID_REQUEST, count_at, "<I", MAX_VECTOR_LEN)  # its data ends past the cap
    with pytest.raises(FrameTooLarge):
        RequestFramer().feed(huge[: count_at + 4])
    # A vector that fits under the cap is waited for, and only its own length.
    big = patched(VALID_REQUEST, count_at, "<I", 15_000)
    framer = RequestFramer()
    assert framer.feed(big[: count_at + 4]) == []
    assert framer.buffered == count_at + 4


def test_framer_never_holds_more_than_the_cap() -> None:
    framer = RequestFramer()
    with pytest.raises(ProtocolError):
        framer.feed(VALID_REQUEST[:40] + bytes(4 * MAX_REQUEST_BYTES))
    assert framer.buffered <= MAX_REQUEST_BYTES


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(1, 64))
def test_framer_random_bytes_give_requests_or_refusal(data: bytes, step: int) -> None:
    framer = RequestFramer()
    try:
        for i in range(0, len(data), step):
            for request in framer.feed(data[i : i + step]):
                assert 0 < len(request) <= MAX_REQUEST_BYTES
                with contextlib.suppress(ProtocolError):
                    decode_request(request)
    except ProtocolError:
        return
    assert framer.buffered <= len(data)


def test_framer_flush_names_what_was_missing() -> None:
    framer = RequestFramer()
    framer.feed(STATS_REQUEST[:100])
    with pytest.raises(ProtocolError, match="after 100 bytes of an unfinished request"):
        framer.flush()


# --- the fast paths give the bytes and values of the general ones ---


@pytest.mark.parametrize("seed", range(20))
def test_response_template_matches_the_flatbuffers_builder(seed: int) -> None:
    from edgewire.wire.mnistprot import _build_response

    rng = np.random.default_rng(seed)
    scale = 10.0 ** float(rng.integers(-30, 30))
    values = (rng.standard_normal(10) * scale).astype(np.float32)
    timer = float(rng.uniform(1e-6, 1e6))
    assert encode_response(values, timer) == _build_response(values, timer)
    assert encode_response(values.reshape(1, 10), timer) == _build_response(values, timer)


@pytest.mark.parametrize("seed", range(20))
def test_firmware_layout_decodes_as_the_walk_does(seed: int) -> None:
    from edgewire.wire.mnistprot import _Reader, _walk

    digit = np.random.default_rng(seed).random(784, dtype=np.float32)
    raw = encode_request(digit)
    fast = decode_request(raw).digit
    slow = _walk(_Reader(raw), decode=True).digit
    assert fast is not None and slow is not None
    assert fast.dtype == slow.dtype and np.array_equal(fast, slow)
    assert np.array_equal(decode_request(memoryview(raw)).digit, digit)
