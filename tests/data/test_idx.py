"""IDX files: round trips and hostile headers."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from edgewire.data.idx import read_idx, write_idx
from edgewire.errors import DataError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_images_round_trip(tmp_path: Path, name: str) -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, images)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)
    back[0, 0, 0] ^= 1  # callers may train on it in place


def test_mnist_magic_numbers(tmp_path: Path) -> None:
    write_idx(tmp_path / "i", np.zeros((2, 3, 4), dtype=np.uint8))
    write_idx(tmp_path / "l", np.arange(5, dtype=np.uint8))
    raw = (tmp_path / "i").read_bytes()
    assert struct.unpack(">IIII", raw[:16]) == (2051, 2, 3, 4)
    assert len(raw) == 16 + 24
    assert struct.unpack(">II", (tmp_path / "l").read_bytes()[:8]) == (2049, 5)


def test_gz_is_real_gzip(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "l.gz", labels)
    raw = gzip.decompress((tmp_path / "l.gz").read_bytes())
    assert raw == struct.pack(">II", 2049, 10) + labels.tobytes()


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_other_dtypes_round_trip_big_endian(tmp_path: Path, dtype: str) -> None:
    a = (np.arange(24).reshape(2, 3, 4) - 12).astype(dtype)
    write_idx(tmp_path / "a", a)
    back = read_idx(tmp_path / "a")
    assert back.dtype == np.dtype(dtype)  # native order
    np.testing.assert_array_equal(back, a)
    body = (tmp_path / "a").read_bytes()[16:]
    assert body == a.astype(np.dtype(dtype).newbyteorder(">")).tobytes()


def _hostile(path: Path, header: bytes, body: bytes = b"") -> Path:
    path.write_bytes(header + body)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_header_claiming_billions_fails_fast(tmp_path: Path, gz: bool) -> None:
    raw = struct.pack(">IIII", 2051, 2**31, 1, 1) + bytes(84)  # 100 bytes in all
    path = tmp_path / ("big.gz" if gz else "big")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    start = time.perf_counter()
    with pytest.raises(DataError, match="2147483648"):
        read_idx(path)
    assert time.perf_counter() - start < 1.0


def test_dims_product_over_cap_fails_before_reading(tmp_path: Path) -> None:
    path = _hostile(tmp_path / "x", struct.pack(">IIII", 2051, 2**32 - 1, 2**32 - 1, 2**32 - 1))
    with pytest.raises(DataError, match="cap"):
        read_idx(path)


@pytest.mark.parametrize(
    "header",
    [
        b"\x01\x00\x08\x01",  # first byte not zero
        b"\x00\x00\x07\x01",  # unknown dtype
        b"\x00\x00\x08\x00",  # zero dimensions
        b"PK\x03\x04",  # some other format
        b"\x00\x00",  # shorter than the magic
    ],
)
def test_bad_magic(tmp_path: Path, header: bytes) -> None:
    path = _hostile(tmp_path / "bad", header, struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_and_extra_bytes(tmp_path: Path, gz: bool) -> None:
    good = struct.pack(">IIII", 2051, 2, 2, 2) + bytes(8)
    for raw, what in [(good[:-1], "has 7"), (good + b"\x00", "has 9|extra"), (good[:12], "header")]:
        path = tmp_path / ("f.gz" if gz else "f")
        path.write_bytes(gzip.compress(raw) if gz else raw)
        with pytest.raises(DataError, match=what) as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_missing_file_and_broken_gzip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")
    broken = tmp_path / "b.gz"
    broken.write_bytes(gzip.compress(struct.pack(">II", 2049, 100) + bytes(100))[:30])
    with pytest.raises(DataError):
        read_idx(broken)
    (tmp_path / "c.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError):
        read_idx(tmp_path / "c.gz")


def test_write_refuses_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dtype"):
        write_idx(tmp_path / "u", np.zeros(3, dtype=np.uint16))
    with pytest.raises(DataError, match="shape"):
        write_idx(tmp_path / "s", np.zeros((), dtype=np.uint8))
    assert not list(tmp_path.iterdir())
