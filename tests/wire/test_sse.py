"""The server-sent events codec: what the agent sends is what a follower reads back,
split at any line, with keep-alives between, and capped."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgewire.errors import FrameTooLarge, ProtocolError
from edgewire.wire.sse import KEEPALIVE, Decoder, Event, encode

_DATA = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(), st.text(max_size=20), st.floats(allow_nan=False, allow_infinity=False),
              st.lists(st.integers(), max_size=3)),
    max_size=5,
)  # fmt: skip


def _decode(stream: bytes, decoder: Decoder | None = None, *, step: int = 7) -> list[Event]:
    decoder = decoder or Decoder()
    return [e for i in range(0, len(stream), step) for e in decoder.feed(stream[i : i + step])]


@given(st.lists(st.tuples(st.integers(0, 10**9), st.sampled_from(["frame", "epoch"]), _DATA),
                max_size=6))  # fmt: skip
def test_round_trip_with_keepalives_between(
    events: list[tuple[int, str, dict[str, object]]],
) -> None:
    stream = KEEPALIVE + b"".join(
        encode(kind, data, seq=seq) + KEEPALIVE for seq, kind, data in events
    )
    assert _decode(stream) == [Event(seq, kind, data) for seq, kind, data in events]


def test_non_finite_numbers_go_out_as_null() -> None:
    [event] = _decode(encode("frame", {"score": math.nan, "p": [math.inf, 1.5]}, seq=3))
    assert event == Event(3, "frame", {"score": None, "p": [None, 1.5]})


def test_an_oversized_event_is_refused_not_buffered() -> None:
    decoder = Decoder(max_bytes=64)
    with pytest.raises(FrameTooLarge, match="over 64 bytes"):
        _decode(encode("x", {"a": "y" * 100}), decoder)
    # Keep-alives alone never add up to one; a line without end is refused too.
    assert _decode(KEEPALIVE * 100, Decoder(max_bytes=64)) == []
    with pytest.raises(FrameTooLarge, match="a line"):
        Decoder(max_bytes=64).feed(b"data: " + b"x" * 100)


@pytest.mark.parametrize("data", ["[1, 2]", "{not json", "NaN"])
def test_bad_data_is_one_protocol_error(data: str) -> None:
    with pytest.raises(ProtocolError):
        _decode(f"event: x\ndata: {data}\n\n".encode())
