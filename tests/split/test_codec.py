"""Bottleneck and input coders: round trips, sizes checked before allocation, bad data refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edgewire.errors import DataError
from edgewire.split import codec
from edgewire.split.codec import Prior


def _codes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Codes shaped like a trained bottleneck's: each channel peaked around its own value."""
    centres = np.random.default_rng(99).integers(40, 210, size=shape[1])
    q = rng.normal(centres[None, :, None, None], 12.0, size=shape)
    return np.clip(np.round(q), 0, 255).astype(np.uint8)


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.uint8,
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    ),
    st.sampled_from(codec.TENSOR_CODERS),
)
def test_every_tensor_coder_round_trips(q: np.ndarray, coder: str) -> None:
    # A prior measured on other data: values it never saw must still code.
    prior = Prior.measure(np.zeros((1, q.shape[1], 2, 2), np.uint8))
    data = codec.encode(q, coder, prior)
    back = codec.decode(data, q.shape, coder, prior)
    assert back.dtype == np.uint8 and np.array_equal(back, q)


def test_rans_beats_zstd_on_peaked_codes_and_nears_the_prior_entropy() -> None:
    rng = np.random.default_rng(0)
    prior = Prior.measure(_codes(rng, (500, 4, 8, 8)))
    q = _codes(rng, (1, 4, 8, 8))
    rans = len(codec.encode(q, "rans", prior))
    zstd = len(codec.encode(q, "zstd"))
    assert rans < 0.85 * zstd and rans < 0.85 * q.size
    assert rans <= q.size * prior.bits_per_value() / 8 * 1.3 + 8


def test_the_prior_survives_json_and_refuses_junk() -> None:
    prior = Prior.measure(_codes(np.random.default_rng(1), (10, 3, 4, 4)))
    again = Prior.from_json(prior.to_json())
    assert np.array_equal(again.counts, prior.counts)
    for junk in ("", "[]", '{"format": 1, "counts": []}', '{"format": 2, "levels": 4}',
                 '{"format": 2, "levels": 2, "counts": [[1, 2]]}', '{"format": 2, "levels": 300, "counts": []}',
                 '{"format": 2, "levels": 256, "counts": [[-1]]}', '{"format": 2, "levels": true, "counts": []}'):  # fmt: skip
        with pytest.raises(DataError):
            Prior.from_json(junk)


@pytest.mark.parametrize("coder", codec.IMAGE_CODERS)
def test_image_coders_round_trip_one_input(coder: str) -> None:
    rng = np.random.default_rng(2)
    q = rng.integers(0, 256, size=(1, 3, 16, 16), dtype=np.uint8)
    data = codec.encode(q, coder, quality=90)
    back = codec.decode(data, q.shape, coder)
    assert back.shape == q.shape
    if coder == "png":
        assert np.array_equal(back, q)
    with pytest.raises(DataError, match="16×16, the model needs 32×32"):
        codec.decode(data, (1, 3, 32, 32), coder)


@pytest.mark.parametrize(
    ("data", "shape", "coder", "match"),
    [
        (b"\x00" * 10, (1, 1, 3, 3), "raw", "10 raw bytes"),
        (b"\x00" * 9, (1, 1, 3, 3, 1), "raw", "four positive"),
        (b"", (1, 1, 0, 3), "raw", "four positive"),
        (b"", (64, 64, 512, 512), "raw", "holds over"),
        (b"garbage", (1, 1, 3, 3), "zstd", "bad zstd"),
        (b"abc", (1, 1, 3, 3), "rans", "whole 32-bit"),
        (b"not an image", (1, 3, 4, 4), "png", "unreadable image"),
        (b"", (1, 1, 3, 3), "gzip", "unknown coder"),
    ],
)
def test_bad_data_is_a_data_error(
    data: bytes, shape: tuple[int, ...], coder: str, match: str
) -> None:
    prior = Prior.measure(np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(DataError, match=match):
        codec.decode(data, shape, coder, prior)


def test_zstd_bomb_is_cut_at_the_shape() -> None:
    bomb = codec.encode(np.zeros((1, 1, 256, 256), np.uint8), "zstd")
    with pytest.raises(DataError):
        codec.decode(bomb, (1, 1, 4, 4), "zstd")


def test_rans_needs_a_prior_of_the_same_width() -> None:
    q = np.zeros((1, 2, 2, 2), np.uint8)
    with pytest.raises(DataError, match="needs the model's bottleneck prior"):
        codec.encode(q, "rans", None)
    with pytest.raises(DataError, match="1 channels, the codes 2"):
        codec.encode(q, "rans", Prior.measure(np.zeros((1, 1, 2, 2), np.uint8)))


def _smooth_codes(rng: np.random.Generator, shape: tuple[int, ...], levels: int) -> np.ndarray:
    """Codes like a feature map's: neighbours alike, channels alike (a blurred field)."""
    n, c, h, w = shape
    field = rng.normal(size=(n, 1, h + 4, w + 4))
    kernel = np.ones(5) / 5
    for axis in (2, 3):
        field = np.apply_along_axis(lambda v: np.convolve(v, kernel, "valid"), axis, field)
    field = field + 0.15 * rng.normal(size=(n, c, h, w))
    q = np.clip(np.round((field / 1.2 + 0.5) * (levels - 1)), 0, levels - 1)
    return q.astype(np.uint8)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 32),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(0, 2**16),
)
def test_conditional_priors_round_trip(levels: int, n: int, c: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prior = Prior.measure(
        rng.integers(0, levels, size=(4, c, side, side), dtype=np.uint8), levels=levels
    )
    assert prior.conditional
    q = rng.integers(0, levels, size=(n, c, side, side), dtype=np.uint8)
    back = codec.decode(codec.encode(q, "rans", prior), q.shape, "rans", prior)
    assert np.array_equal(back, q)
    assert np.array_equal(Prior.from_json(prior.to_json()).counts, prior.counts)


def test_the_conditional_prior_sees_what_zstd_sees_and_more() -> None:
    rng = np.random.default_rng(4)
    prior = Prior.measure(_smooth_codes(rng, (400, 2, 16, 16), 16), levels=16)
    q = _smooth_codes(rng, (50, 2, 16, 16), 16)
    rans = np.mean([len(codec.encode(q[i : i + 1], "rans", prior)) for i in range(50)])
    zstd = np.mean([len(codec.encode(q[i : i + 1], "zstd")) for i in range(50)])
    assert rans < 0.85 * zstd


def test_a_code_over_the_levels_is_refused() -> None:
    prior = Prior.measure(np.zeros((1, 1, 2, 2), np.uint8), levels=4)
    with pytest.raises(DataError, match="over the prior's 4 levels"):
        codec.encode(np.full((1, 1, 2, 2), 4, np.uint8), "rans", prior)
