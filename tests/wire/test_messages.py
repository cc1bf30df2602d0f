"""Message payloads: tensors of every dtype, and hostile shape/count/length fields."""

from __future__ import annotations

import contextlib
import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgewire.errors import FrameTooLarge, ProtocolError
from edgewire.wire.messages import (
    DTYPES,
    Limits,
    decode_message,
    encode_message,
    require_finite,
)

dtypes = st.sampled_from(list(DTYPES.values()))
metas = st.dictionaries(
    st.text(max_size=8),
    st.integers(-(2**53), 2**53) | st.text(max_size=16) | st.booleans(),
    max_size=5,
)


@given(
    meta=metas,
    arrays=st.lists(
        dtypes.flatmap(
            lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))
        ),
        max_size=4,
    ),
)
def test_round_trip_every_dtype(meta: dict[str, object], arrays: list[np.ndarray]) -> None:
    message = decode_message(encode_message(meta, arrays))
    assert message.meta == meta
    assert len(message.tensors) == len(arrays)
    for got, want in zip(message.tensors, arrays, strict=True):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert got.tobytes() == want.tobytes()  # bit-exact, NaNs included


def test_big_endian_and_non_contiguous_inputs_are_normalised() -> None:
    a = np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2]
    (got,) = decode_message(encode_message({}, [a])).tensors
    assert got.dtype == np.dtype("<i4")
    np.testing.assert_array_equal(got, a)


def test_unsupported_dtype_refused() -> None:
    with pytest.raises(ProtocolError, match="cannot travel"):
        encode_message({}, [np.zeros(2, dtype=np.complex64)])


def tensor_record(code: int, shape: list[int], nbytes: int, data: bytes = b"") -> bytes:
    return (
        struct.pack("<BBH", code, len(shape), 0)
        + struct.pack(f"<{len(shape)}I", *shape)
        + struct.pack("<Q", nbytes)
        + data
    )


def payload(records: list[bytes], meta: bytes = b"{}", count: int | None = None) -> bytes:
    n = len(records) if count is None else count
    return struct.pack("<I", len(meta)) + meta + struct.pack("<H", n) + b"".join(records)


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", ProtocolError, "truncated"),
        (struct.pack("<I", 2**32 - 1), FrameTooLarge, "meta"),
        (payload([], meta=b"[1,2]"), ProtocolError, "JSON object"),
        (payload([], meta=b"\xff\xfe"), ProtocolError, r"not valid UTF-8 \(bad byte at 0\)"),
        (payload([], meta=b"{nope"), ProtocolError, "meta is not valid JSON"),
        # meta that would not survive being sent back (a PING echoes it)
        (payload([], meta=b'{"a": NaN}'), ProtocolError, "NaN is not a JSON number"),
        (payload([], meta=b'{"a": -Infinity}'), ProtocolError, "-Infinity is not a JSON number"),
        (payload([], meta=b"[" * 30_000 + b"]" * 30_000), ProtocolError, "nested too deeply"),
        (payload([], meta=b'{"a": ' + b"9" * 5000 + b"}"), ProtocolError, "too many digits"),
        (payload([], count=65535), FrameTooLarge, "65535 tensors"),
        (payload([], count=1), ProtocolError, "truncated"),
        (payload([tensor_record(42, [1], 1, b"x")]), ProtocolError, "unknown dtype code 42"),
        # shape fields whose product overflows any fixed-width integer
        (payload([tensor_record(6, [2**32 - 1] * 8, 0)]), FrameTooLarge, "over the maximum"),
        # a shape read as signed would be negative: still refused, never allocated
        (payload([tensor_record(6, [0xFFFFFFFF], 4)]), FrameTooLarge, "over the maximum"),
        (payload([tensor_record(6, [1] * 9, 4)]), FrameTooLarge, "9 dimensions"),
        (
            payload([tensor_record(6, [2, 2], 15, b"x" * 15)]),
            ProtocolError,
            "carries 15 bytes but float32",
        ),
        (payload([tensor_record(6, [2], 2**63, b"")]), FrameTooLarge, "over the maximum"),
        (payload([tensor_record(6, [4], 16, b"x" * 8)]), ProtocolError, "truncated"),
        (payload([tensor_record(1, [2], 2, b"ab")]) + b"junk", ProtocolError, "unexpected bytes"),
    ],
)
def test_hostile_payloads(data: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_message(data, Limits(max_tensor_bytes=1 << 20))


def test_reserved_tensor_field_must_be_zero() -> None:
    rec = struct.pack("<BBH", 1, 1, 9) + struct.pack("<I", 1) + struct.pack("<Q", 1) + b"x"
    with pytest.raises(ProtocolError, match="reserved"):
        decode_message(payload([rec]))


@given(data=st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(data)


def test_tensors_are_read_only_views() -> None:
    (t,) = decode_message(encode_message({}, [np.arange(4, dtype=np.float32)])).tensors
    assert not t.flags.writeable


def test_nan_and_inf_are_refused_where_values_matter() -> None:
    require_finite(np.zeros(3, np.float32), "x")
    require_finite(np.arange(3, dtype=np.uint8), "x")
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ProtocolError, match="NaN or Inf"):
            require_finite(np.array([0.0, bad], np.float32), "images")


def test_meta_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode_message({"x": float("nan")})
    assert json.loads(b'{"a": 1}') == decode_message(payload([], meta=b'{"a": 1}')).meta
