"""Message payloads: a small JSON object plus zero or more tensors.

    payload = u32 meta_len | meta (UTF-8 JSON object) | u16 n_tensors | tensor*
    tensor  = u8 dtype | u8 ndim | u16 reserved | u32 dim * ndim | u64 nbytes | data

Tensors are raw little-endian bytes read with ``numpy.frombuffer``; nothing is
ever unpickled. Every count and length is checked against :class:`Limits`
before anything is allocated.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import EdgewireError, FrameTooLarge, ProtocolError
from edgewire.jsonsafe import loads_strict

_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_TENSOR_HEAD = struct.Struct("<BBH")
_U64 = struct.Struct("<Q")

#: dtype code on the wire -> numpy dtype (always little-endian)
DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<i1"),
    3: np.dtype("<i4"),
    4: np.dtype("<i8"),
    5: np.dtype("<f2"),
    6: np.dtype("<f4"),
    7: np.dtype("<f8"),
    8: np.dtype("?"),
    9: np.dtype("<u2"),
    10: np.dtype("<i2"),
}
_CODES: dict[np.dtype[Any], int] = {dt: code for code, dt in DTYPES.items()}


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Maxima checked before allocation. Defaults suit MNIST-to-ImageNet batches."""

    max_meta: int = 64 * 1024
    max_tensors: int = 64
    max_ndim: int = 8
    max_tensor_bytes: int = 64 * 1024 * 1024


DEFAULT_LIMITS = Limits()


@dataclass(slots=True)
class Message:
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: list[npt.NDArray[Any]] = field(default_factory=list)


def dtype_code(dtype: np.dtype[Any]) -> int:
    code = _CODES.get(dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype)
    if code is None:
        raise ProtocolError(f"dtype {dtype} cannot travel on the wire")
    return code


def encode_message(
    meta: dict[str, Any] | None = None, tensors: list[npt.NDArray[Any]] | None = None
) -> bytes:
    """The payload bytes for ``meta`` and ``tensors`` (copied once, into the result)."""
    meta_bytes = json.dumps(meta or {}, separators=(",", ":"), allow_nan=False).encode()
    return encode_message_json(meta_bytes, tensors or [])


def encode_message_json(meta_bytes: bytes, tensors: list[npt.NDArray[Any]]) -> bytes:
    """:func:`encode_message` for a meta already encoded (a JSON object, strict: no NaN),
    as a hot path that sends the same few fields each time builds it."""
    parts: list[bytes | memoryview] = [
        _U32.pack(len(meta_bytes)),
        meta_bytes,
        _U16.pack(len(tensors)),
    ]
    for array in tensors:
        arr = np.asarray(array)
        code = dtype_code(arr.dtype)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # ascontiguousarray would turn 0-d into 1-d
        if arr.ndim > 255:
            raise ProtocolError(f"tensor of {arr.ndim} dimensions cannot travel")
        parts.append(_TENSOR_HEAD.pack(code, arr.ndim, 0))
        parts.append(struct.pack(f"<{arr.ndim}I", *arr.shape))
        parts.append(_U64.pack(arr.nbytes))
        parts.append(arr.data.cast("B") if arr.size else b"")
    return b"".join(parts)


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def take(self, n: int, what: str) -> memoryview:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise ProtocolError(f"message truncated while reading {what}")
        view = self._data[self._pos : end]
        self._pos = end
        return view

    def unpack(self, fmt: struct.Struct, what: str) -> tuple[int, ...]:
        return fmt.unpack(self.take(fmt.size, what))

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos


def decode_message(payload: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse a payload; tensors are read-only views of ``payload``."""
    reader = _Reader(payload)
    (meta_len,) = reader.unpack(_U32, "meta length")
    if meta_len > limits.max_meta:
        raise FrameTooLarge(f"meta of {meta_len} bytes is over the maximum {limits.max_meta}")
    raw_meta = reader.take(meta_len, "meta")
    # Strict, so that every meta accepted can be sent back (a PING echoes it).
    meta = loads_strict(bytes(raw_meta), what="meta") if meta_len else {}
    if not isinstance(meta, dict):
        raise ProtocolError(f"meta must be a JSON object, got {type(meta).__name__}")
    (count,) = reader.unpack(_U16, "tensor count")
    if count > limits.max_tensors:
        raise FrameTooLarge(f"{count} tensors is over the maximum {limits.max_tensors}")
    tensors = [_decode_tensor(reader, i, limits) for i in range(count)]
    if reader.remaining:
        raise ProtocolError(f"{reader.remaining} unexpected bytes after the last tensor")
    return Message(meta=meta, tensors=tensors)


def _decode_tensor(reader: _Reader, index: int, limits: Limits) -> npt.NDArray[Any]:
    code, ndim, reserved = reader.unpack(_TENSOR_HEAD, f"tensor {index} header")
    dtype = DTYPES.get(code)
    if dtype is None:
        raise ProtocolError(f"tensor {index} has unknown dtype code {code}")
    if reserved != 0:
        raise ProtocolError(f"tensor {index} reserved field is {reserved}, must be 0")
    if ndim > limits.max_ndim:
        raise FrameTooLarge(f"tensor {index} has {ndim} dimensions, maximum {limits.max_ndim}")
    shape = struct.unpack(f"<{ndim}I", reader.take(4 * ndim, f"tensor {index} shape"))
    # Python ints cannot overflow; the product is checked before any allocation.
    expected = math.prod(shape) * dtype.itemsize
    (nbytes,) = reader.unpack(_U64, f"tensor {index} length")
    if expected > limits.max_tensor_bytes or nbytes > limits.max_tensor_bytes:
        raise FrameTooLarge(
            f"tensor {index} of {max(expected, nbytes)} bytes is over the maximum "
            f"{limits.max_tensor_bytes}"
        )
    if nbytes != expected:
        raise ProtocolError(
            f"tensor {index} carries {nbytes} bytes but {dtype.name}{list(shape)} needs {expected}"
        )
    data = reader.take(nbytes, f"tensor {index} data")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def require_finite(
    array: npt.NDArray[Any], what: str, *, error: type[EdgewireError] = ProtocolError
) -> None:
    """Refuse NaN or Inf in a floating tensor, with ``error`` (a frame's tensors: ProtocolError;
    inference inputs: DataError, which answers the one request and keeps the connection)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise error(f"{what} contains NaN or Inf values")


def error_payload(code: str, message: str) -> bytes:
    return encode_message({"code": code, "message": message})
