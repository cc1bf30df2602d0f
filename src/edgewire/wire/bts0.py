"""The JettyLink "BTS0" batch stream (seed 000), as a sans-IO codec.

Each batch is a 32-byte little-endian header, then N float32 images of
1x28x28 (pixel/255), then N uint8 labels::

    0..4   b"BTS0"
    4..8   batch index      u32
    8..12  dtype            u32 (1 = float32)
    12..16 padding          zero
    16..24 data length      u64 (bytes)
    24..32 label length     u64 (bytes)

The receiver answers each batch with a text line and ``OK`` (see
:func:`format_reply`), or ``ERR`` when it refuses the stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgewire.errors import FrameTooLarge, ProtocolError

HEADER_SIZE = 32
MAGIC = b"BTS0"
DTYPE_FLOAT32 = 1
#: The seed server's caps: larger batches are answered with ``ERR``.
MAX_DATA_BYTES = 20 * 1024 * 1024
MAX_LABEL_BYTES = 128 * 1024
IMAGE_SHAPE = (1, 28, 28)
OK_REPLY_SUFFIX = b"OK\n"
ERR_REPLY = b"ERR\n"

_HEADER = struct.Struct("<4sII4xQQ")
_IMAGE_VALUES = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2]
_IMAGE_BYTES = 4 * _IMAGE_VALUES
_F32 = np.dtype("<f4")
_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

assert _HEADER.size == HEADER_SIZE


@dataclass(frozen=True, slots=True)
class Bts0Header:
    batch_index: int
    dtype: int
    data_len: int
    label_len: int

    def pack(self) -> bytes:
        """The 32 header bytes (padding written as zero)."""
        for name, value, top in (
            ("batch index", self.batch_index, _U32_MAX),
            ("dtype", self.dtype, _U32_MAX),
            ("data length", self.data_len, _U64_MAX),
            ("label length", self.label_len, _U64_MAX),
        ):
            if not 0 <= value <= top:
                raise ProtocolError(f"BTS0 {name} {value!r} does not fit its header field")
        return _HEADER.pack(MAGIC, self.batch_index, self.dtype, self.data_len, self.label_len)


@dataclass(frozen=True, slots=True)
class Bts0Batch:
    header: Bts0Header
    #: float32 N x 1 x 28 x 28, a read-only view of the received bytes.
    images: np.ndarray[Any, np.dtype[np.float32]]
    #: uint8 N, a read-only view of the received bytes.
    labels: np.ndarray[Any, np.dtype[np.uint8]]


def parse_header(raw: bytes) -> Bts0Header:
    """Check one 32-byte header against the seed's caps and the payload layout."""
    if len(raw) != HEADER_SIZE:
        raise ProtocolError(f"BTS0 header must be {HEADER_SIZE} bytes, got {len(raw)}")
    # The padding is not checked: the seed server ignored it.
    magic, index, dtype, data_len, label_len = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad BTS0 magic {magic!r}; expected {MAGIC!r}")
    if dtype != DTYPE_FLOAT32:
        raise ProtocolError(f"unsupported BTS0 dtype {dtype}; only {DTYPE_FLOAT32} (float32)")
    if data_len == 0:
        raise ProtocolError("BTS0 data length is 0")
    if data_len > MAX_DATA_BYTES:
        raise FrameTooLarge(f"BTS0 data length {data_len} is over the {MAX_DATA_BYTES}-byte cap")
    if label_len > MAX_LABEL_BYTES:
        raise FrameTooLarge(f"BTS0 label length {label_len} is over the {MAX_LABEL_BYTES}-byte cap")
    # The seed checked only the caps; a pair that disagrees cannot be trained on.
    if data_len != label_len * _IMAGE_BYTES:
        raise ProtocolError(
            f"BTS0 data length {data_len} does not match label length {label_len}"
            f" (expected {label_len * _IMAGE_BYTES} = {label_len} x 1x28x28 float32)"
        )
    return Bts0Header(batch_index=index, dtype=dtype, data_len=data_len, label_len=label_len)


def _batch(header: Bts0Header, payload: bytes) -> Bts0Batch:
    n = header.label_len
    images = np.frombuffer(payload, dtype=_F32, count=n * _IMAGE_VALUES).reshape(n, *IMAGE_SHAPE)
    labels = np.frombuffer(payload, dtype=np.uint8, offset=header.data_len)
    return Bts0Batch(header=header, images=images, labels=labels)


class Bts0Decoder:
    """Incremental BTS0 decoder: ``feed(chunk)`` returns the batches completed so far.

    A header is checked as soon as its 32 bytes are in, before any payload is
    held. After a :class:`ProtocolError` the decoder stays broken and raises
    again: the stream cannot be resynchronised.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header: Bts0Header | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole batch (header included)."""
        return len(self._buf) + (HEADER_SIZE if self._header is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Bts0Batch]:
        if self._error is not None:
            raise self._error
        batches: list[Bts0Batch] = []
        view = memoryview(data).cast("B")
        try:
            while view:
                if self._header is None:
                    # Take only the header's bytes, so that a refused header
                    # never gets its payload buffered.
                    take = HEADER_SIZE - len(self._buf)
                    self._buf += view[:take]
                    view = view[take:]
                    if len(self._buf) < HEADER_SIZE:
                        break
                    self._header = parse_header(bytes(self._buf))
                    self._buf.clear()
                header = self._header
                total = header.data_len + header.label_len
                take = total - len(self._buf)
                self._buf += view[:take]
                view = view[take:]
                if len(self._buf) < total:
                    break
                batches.append(_batch(header, bytes(self._buf)))
                self._buf.clear()
                self._header = None
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            self._header = None
            raise
        finally:
            view.release()
        return batches

    def flush(self) -> None:
        """Call at end of stream: raises if a batch was cut off."""
        if self._error is not None:
            raise self._error
        if self.buffered:
            raise ProtocolError(
                f"BTS0 stream ended in the middle of a batch ({self.buffered} bytes held)"
            )


def encode_batch(
    batch_index: int, images: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]
) -> bytes:
    """Header + payload of one batch, as the seed sender writes it.

    ``images`` are float32 N x 784 or N x 1 x 28 x 28, already divided by 255;
    ``labels`` are uint8 N.
    """
    if images.dtype != np.float32:
        raise ProtocolError(
            f"BTS0 images must be float32 (pixel/255), got {images.dtype}; normalise them first"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ProtocolError(f"BTS0 labels must be uint8 N, got {labels.dtype} {labels.shape}")
    n = labels.shape[0]
    if images.shape not in ((n, _IMAGE_VALUES), (n, *IMAGE_SHAPE)):
        raise ProtocolError(
            f"BTS0 images of shape {images.shape} do not match {n} labels"
            f" (expected ({n}, 784) or ({n}, 1, 28, 28))"
        )
    if n == 0:
        raise ProtocolError("BTS0 batch is empty")
    header = Bts0Header(
        batch_index=batch_index,
        dtype=DTYPE_FLOAT32,
        data_len=n * _IMAGE_BYTES,
        label_len=n,
    )
    # Refuse here what every receiver would refuse (the seed sender did not check).
    if header.data_len > MAX_DATA_BYTES:
        raise FrameTooLarge(
            f"BTS0 batch of {n} images is {header.data_len} bytes,"
            f" over the {MAX_DATA_BYTES}-byte cap; use a smaller batch"
        )
    data = np.ascontiguousarray(images, dtype=_F32).tobytes()
    return header.pack() + data + labels.tobytes()


def format_reply(batch_index: int, loss: float, accuracy: float) -> bytes:
    """The seed's per-batch reply: its text line, then ``OK``."""
    return f"batch {batch_index:4d} | loss={loss:.4f} | acc={100 * accuracy:5.1f}%\nOK\n".encode()
