"""MNIST IDX files: read and write, plain or gzip-compressed.

Layout: two zero bytes, a dtype byte, a dimension count byte, then one
big-endian u32 per dimension, then the values, big-endian, row-major. MNIST's
"magic numbers" are this header read as one u32: 2051 (0x0803) is u8 images
Nxrowsxcols and 2049 (0x0801) is u8 labels N.

The header is validated, and the declared size checked against the file and a
cap, before the data is allocated: a hostile header claiming 2^32 items fails
with DataError at once.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgewire.errors import DataError
from edgewire.fsutil import atomic_write

#: IDX dtype byte → big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("=").str: code for code, dt in IDX_DTYPES.items()}

#: Largest data section read_idx accepts by default (full MNIST is 47 MB).
DEFAULT_MAX_BYTES = 2 << 30
_CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def _read_header(f: _Readable, path: Path) -> tuple[np.dtype[Any], tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(f"{path}: not an IDX file (shorter than its 4-byte magic)")
    zero0, zero1, code, ndim = magic
    if zero0 or zero1 or code not in IDX_DTYPES:
        raise DataError(
            f"{path}: not an IDX file (magic {magic.hex()}; expected 0000 + dtype byte"
            f" in {sorted(IDX_DTYPES)} + dimension count, e.g. 00000803 for images)"
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares zero dimensions")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (expected {ndim} dimension sizes)")
    return IDX_DTYPES[code], struct.unpack(f">{ndim}I", raw)


def read_idx(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray[Any, Any]:
    """The array in an IDX file (``.gz`` decompressed), in native byte order."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as f:
            return _read(f, path, max_bytes=max_bytes)
    except (OSError, EOFError, zlib.error) as exc:  # missing file, broken gzip stream
        raise DataError(f"{path}: cannot read IDX file ({exc})") from exc


def _read(f: _Readable, path: Path, *, max_bytes: int) -> np.ndarray[Any, Any]:
    dtype, dims = _read_header(f, path)
    count = 1
    for d in dims:
        count *= d
    nbytes = count * dtype.itemsize
    header_len = 4 + 4 * len(dims)
    expected = f"{'x'.join(map(str, dims))} {dtype.name} = {nbytes} data bytes"
    if nbytes > max_bytes:
        raise DataError(f"{path}: IDX header declares {expected}, over the {max_bytes}-byte cap")
    if not _is_gzip(path):
        # Plain files: compare sizes before reading anything.
        actual = path.stat().st_size - header_len
        if actual != nbytes:
            raise DataError(f"{path}: IDX header declares {expected} but the file has {actual}")
    # gzip hides its length, so read in chunks: memory follows the real data,
    # never the declared size.
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - len(buf)))
        if not chunk:
            raise DataError(f"{path}: truncated IDX data: declares {expected}, has {len(buf)}")
        buf += chunk
    if f.read(1):
        raise DataError(f"{path}: extra bytes after the IDX data ({expected})")
    array = np.frombuffer(buf, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def encode_idx(array: np.ndarray[Any, Any]) -> bytes:
    """The IDX bytes of ``array`` (u8, i8, i16, i32, f32 or f64; 1 to 255 dims)."""
    code = _CODES.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise DataError(f"IDX cannot store dtype {array.dtype}; use one of u8 i8 i16 i32 f32 f64")
    if not 1 <= array.ndim <= 255 or any(d >= 2**32 for d in array.shape):
        raise DataError(f"IDX cannot store an array of shape {array.shape}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: Path, array: np.ndarray[Any, Any]) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    data = encode_idx(array)
    if _is_gzip(path):
        # mtime=0 keeps the output byte-identical across runs.
        data = gzip.compress(data, mtime=0)

    def _write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    atomic_write(path, _write)
