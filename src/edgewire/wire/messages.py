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
from typing import Any, NoReturn

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
        parts.append(_SHAPES[arr.ndim].pack(*arr.shape))
        parts.append(_U64.pack(arr.nbytes))
        parts.append(arr.data.cast("B") if arr.size else b"")
    return b"".join(parts)


def decode_message(payload: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """Parse a payload; tensors are read-only views of ``payload``."""
    size = len(payload)
    if size < 4:
        _truncated("meta length")
    (meta_len,) = _U32.unpack_from(payload, 0)
    if meta_len > limits.max_meta:
        raise FrameTooLarge(f"meta of {meta_len} bytes is over the maximum {limits.max_meta}")
    pos = 4 + meta_len
    if pos > size:
        _truncated("meta")
    # Strict, so that every meta accepted can be sent back (a PING echoes it).
    meta = loads_strict(bytes(payload[4:pos]), what="meta") if meta_len else {}
    if not isinstance(meta, dict):
        raise ProtocolError(f"meta must be a JSON object, got {type(meta).__name__}")
    if pos + 2 > size:
        _truncated("tensor count")
    (count,) = _U16.unpack_from(payload, pos)
    pos += 2
    if count > limits.max_tensors:
        raise FrameTooLarge(f"{count} tensors is over the maximum {limits.max_tensors}")
    tensors = []
    if count:
        view = memoryview(payload)
        for i in range(count):
            tensor, pos = _decode_tensor(view, pos, i, limits)
            tensors.append(tensor)
    if pos != size:
        raise ProtocolError(f"{size - pos} unexpected bytes after the last tensor")
    return Message(meta=meta, tensors=tensors)


def _truncated(what: str) -> NoReturn:
    raise ProtocolError(f"message truncated while reading {what}")


#: ``<{n}I`` for the shapes of up to 255 dimensions, compiled once each.
_SHAPES = [struct.Struct(f"<{n}I") for n in range(256)]


def _decode_tensor(
    view: memoryview, pos: int, index: int, limits: Limits
) -> tuple[npt.NDArray[Any], int]:
    """The tensor at ``pos`` of a payload, and where the next one starts."""
    size = len(view)
    if pos + 4 > size:
        _truncated(f"tensor {index} header")
    code, ndim, reserved = _TENSOR_HEAD.unpack_from(view, pos)
    pos += 4
    dtype = DTYPES.get(code)
    if dtype is None:
        raise ProtocolError(f"tensor {index} has unknown dtype code {code}")
    if reserved != 0:
        raise ProtocolError(f"tensor {index} reserved field is {reserved}, must be 0")
    if ndim > limits.max_ndim:
        raise FrameTooLarge(f"tensor {index} has {ndim} dimensions, maximum {limits.max_ndim}")
    if pos + 4 * ndim > size:
        _truncated(f"tensor {index} shape")
    shape = _SHAPES[ndim].unpack_from(view, pos)
    pos += 4 * ndim
    # Python ints cannot overflow; the product is checked before any allocation.
    expected = math.prod(shape) * dtype.itemsize
    if pos + 8 > size:
        _truncated(f"tensor {index} length")
    (nbytes,) = _U64.unpack_from(view, pos)
    pos += 8
    if expected > limits.max_tensor_bytes or nbytes > limits.max_tensor_bytes:
        raise FrameTooLarge(
            f"tensor {index} of {max(expected, nbytes)} bytes is over the maximum "
            f"{limits.max_tensor_bytes}"
        )
    if nbytes != expected:
        raise ProtocolError(
            f"tensor {index} carries {nbytes} bytes but {dtype.name}{list(shape)} needs {expected}"
        )
    end = pos + nbytes
    if end > size:
        _truncated(f"tensor {index} data")
    return np.frombuffer(view[pos:end], dtype=dtype).reshape(shape), end


def require_finite(
    array: npt.NDArray[Any], what: str, *, error: type[EdgewireError] = ProtocolError
) -> None:
    """Refuse NaN or Inf in a floating tensor, with ``error`` (a frame's tensors: ProtocolError;
    inference inputs: DataError, which answers the one request and keeps the connection)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise error(f"{what} contains NaN or Inf values")


def error_payload(code: str, message: str) -> bytes:
    return encode_message({"code": code, "message": message})
