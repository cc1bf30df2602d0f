"""The ESP8266 "MnistProt" legacy protocol of seed 002, as a sans-IO codec.

The firmware sends one FlatBuffers ``Commands`` table holding 784 floats
(3180 bytes) and reads exactly 96 bytes back. There is no flatc here, so the
tables are built with :class:`flatbuffers.Builder` and read by the small
bounds-checked reader below, which accepts any valid buffer of this schema
(any field order, shared vtables, padding, omitted defaults) and turns every
malformed one into :class:`~edgewire.errors.ProtocolError`. The schema::

    namespace MnistProt;
    enum Command : byte { CMD_GET_STATS = 0, CMD_INFERENCE_INPUT = 1, CMD_INFERENCE_OUTPUT = 2 }
    enum Mode : byte { ACCELERATION_NONE = 0, ACCELERATION_CMSIS_NN = 1 }
    table Stats { version: ubyte; freq: uint; mode: Mode; }
    table InferenceInput { digit: [float]; }
    table InferenceOutput { output_f: [float]; output_n: ubyte; timer_ms: float; }
    table Commands { cmd: Command; stats: Stats; input: InferenceInput; ouput: InferenceOutput; }
    root_type Commands;

No file identifier, no size prefix; ``ouput`` really is spelt that way.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import flatbuffers
import numpy as np
import numpy.typing as npt

from edgewire.errors import FrameTooLarge, ProtocolError

REQUEST_SIZE = 3180
RESPONSE_SIZE = 96
DIGIT_LEN = 784
OUTPUT_LEN = 10
CMD_GET_STATS = 0
CMD_INFERENCE_INPUT = 1
CMD_INFERENCE_OUTPUT = 2
#: The largest buffer the decoders look at (a request is 3180 bytes).
MAX_REQUEST_BYTES = 64 * 1024
#: The most floats a vector may claim; a buffer of MAX_REQUEST_BYTES cannot hold more.
MAX_VECTOR_LEN = MAX_REQUEST_BYTES // 4

_FLOAT32_MAX = float(np.finfo(np.float32).max)

# Field slots (vtable index) of each table, in schema order.
_COMMANDS_CMD, _COMMANDS_STATS, _COMMANDS_INPUT, _COMMANDS_OUPUT = range(4)
_STATS_VERSION, _STATS_FREQ, _STATS_MODE = range(3)
_INPUT_DIGIT = 0
_OUTPUT_F, _OUTPUT_N, _OUTPUT_TIMER = range(3)

_U8 = struct.Struct("<B")
_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_F32 = struct.Struct("<f")

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, eq=False)
class MnistRequest:
    """A decoded request; ``digit`` is None for ``CMD_GET_STATS``."""

    cmd: int
    digit: Float32Array | None


@dataclass(frozen=True, slots=True, eq=False)
class MnistResponse:
    """A decoded inference response."""

    cmd: int
    output: Float32Array
    output_n: int
    timer_ms: float


# --- encoding -----------------------------------------------------------------


def encode_request(digit: npt.ArrayLike) -> bytes:
    """The request exactly as the firmware builds it: 3180 bytes for 784 floats.

    Values and length are encoded as given (the firmware checks nothing), so
    tests can build requests that :func:`decode_request` refuses.
    """
    values = _as_float32_vector(digit, what="digit")
    builder = flatbuffers.Builder(REQUEST_SIZE)
    vector = builder.CreateNumpyVector(values)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(_INPUT_DIGIT, vector, 0)
    inference_input = builder.EndObject()
    builder.StartObject(4)
    builder.PrependInt8Slot(_COMMANDS_CMD, CMD_INFERENCE_INPUT, CMD_GET_STATS)
    builder.PrependUOffsetTRelativeSlot(_COMMANDS_INPUT, inference_input, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def encode_response(output: npt.ArrayLike, timer_ms: float) -> bytes:
    """The 96-byte response, built in the seed server's order.

    The firmware reads exactly 96 bytes, so ``output`` must hold 10 values.
    The layout is the same for any values: they are written into the bytes the
    FlatBuffers builder gave once (``_RESPONSE_LAYOUT``).
    """
    if type(output) is np.ndarray and output.dtype == _FLOAT32 and output.size == OUTPUT_LEN:
        values = output.reshape(-1)
    else:
        values = _as_float32_vector(output, what="output")
    if values.size != OUTPUT_LEN:
        raise ProtocolError(
            f"a MnistProt response carries exactly {OUTPUT_LEN} outputs (the firmware reads "
            f"exactly {RESPONSE_SIZE} bytes); the model gave {values.size}"
        )
    if not (math.isfinite(timer_ms) and abs(timer_ms) <= _FLOAT32_MAX):
        raise ProtocolError(f"timer_ms {timer_ms!r} is not a finite float32")
    template, at_values, at_timer = _RESPONSE_LAYOUT
    buf = bytearray(template)
    buf[at_values : at_values + 4 * OUTPUT_LEN] = values.tobytes()
    _F32.pack_into(buf, at_timer, timer_ms)
    return bytes(buf)


def _build_response(values: Float32Array, timer_ms: float) -> bytes:
    """The response as the FlatBuffers builder writes it (``encode_response``'s layout)."""
    builder = flatbuffers.Builder(128)
    # The seed server built this without force_defaults: a timer_ms of exactly
    # 0.0 (the field's default) was then left out and the buffer shrank to 92
    # bytes, so a firmware waiting for 96 hung. Forcing defaults writes the
    # timer always; every other scalar here differs from its default, so the
    # bytes are the seed's own for any non-zero timer.
    builder.ForceDefaults(True)
    vector = builder.CreateNumpyVector(values)
    builder.StartObject(3)
    builder.PrependFloat32Slot(_OUTPUT_TIMER, timer_ms, 0.0)
    builder.PrependUint8Slot(_OUTPUT_N, OUTPUT_LEN, 0)
    builder.PrependUOffsetTRelativeSlot(_OUTPUT_F, vector, 0)
    inference_output = builder.EndObject()
    builder.StartObject(4)
    builder.PrependInt8Slot(_COMMANDS_CMD, CMD_INFERENCE_OUTPUT, CMD_GET_STATS)
    builder.PrependUOffsetTRelativeSlot(_COMMANDS_OUPUT, inference_output, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def _response_layout() -> tuple[bytes, int, int]:
    """A built response and where its 10 outputs and its timer sit in it."""
    marks = np.arange(1, OUTPUT_LEN + 1, dtype="<f4") * np.float32(1.25)
    timer = 4321.5
    raw = _build_response(marks, timer)
    at_values, at_timer = raw.find(marks.tobytes()), raw.find(_F32.pack(timer))
    if len(raw) != RESPONSE_SIZE or min(at_values, at_timer) < 0:
        raise AssertionError("the MnistProt response layout is not the one expected")
    return raw, at_values, at_timer


_FLOAT32 = np.dtype("<f4")
_RESPONSE_LAYOUT = _response_layout()


def _as_float32_vector(values: npt.ArrayLike, *, what: str) -> Float32Array:
    array = np.asarray(values)
    if array.size > MAX_VECTOR_LEN:
        raise FrameTooLarge(f"{what} of {array.size} values is over the maximum {MAX_VECTOR_LEN}")
    # Out-of-range float64 values become inf, as a C cast would; no warning.
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(array.reshape(-1), dtype="<f4")


# --- decoding -----------------------------------------------------------------


def decode_request(buf: bytes | bytearray | memoryview) -> MnistRequest:
    """Verify and decode a request; only a well-formed inference or stats request passes."""
    if len(buf) == REQUEST_SIZE and buf[: len(_FIRMWARE_HEAD)] == _FIRMWARE_HEAD:
        # The firmware's own layout: its first bytes fix every offset, and the digit
        # is the rest. Nothing else needs walking (``_walk`` reads the same).
        values = np.frombuffer(buf, dtype=_FLOAT32, offset=len(_FIRMWARE_HEAD)).copy()
        if not np.isfinite(values).all():
            raise ProtocolError("digit holds NaN or Inf values")
        return MnistRequest(cmd=CMD_INFERENCE_INPUT, digit=values)
    commands = _parse(buf)
    if commands.cmd == CMD_GET_STATS:
        return MnistRequest(cmd=CMD_GET_STATS, digit=None)
    if commands.cmd != CMD_INFERENCE_INPUT:
        raise ProtocolError(
            f"request cmd is {commands.cmd}; expected CMD_INFERENCE_INPUT ({CMD_INFERENCE_INPUT})"
            f" or CMD_GET_STATS ({CMD_GET_STATS})"
        )
    digit = commands.digit
    if digit is None:
        raise ProtocolError("inference request carries no `input.digit` vector")
    if digit.size != DIGIT_LEN:
        raise ProtocolError(f"digit has {digit.size} values; expected {DIGIT_LEN} (28x28)")
    if not np.isfinite(digit).all():
        raise ProtocolError("digit holds NaN or Inf values")
    return MnistRequest(cmd=CMD_INFERENCE_INPUT, digit=digit)


def decode_response(buf: bytes | bytearray | memoryview) -> MnistResponse:
    """Verify and decode an inference response (``cmd`` = CMD_INFERENCE_OUTPUT)."""
    commands = _parse(buf)
    if commands.cmd != CMD_INFERENCE_OUTPUT:
        raise ProtocolError(
            f"response cmd is {commands.cmd}; expected CMD_INFERENCE_OUTPUT ({CMD_INFERENCE_OUTPUT})"
        )
    if commands.output is None:
        raise ProtocolError("inference response carries no `ouput` table")
    return commands.output


@dataclass(frozen=True, slots=True, eq=False)
class _Commands:
    cmd: int
    digit: Float32Array | None
    output: MnistResponse | None


def _parse(buf: bytes | bytearray | memoryview) -> _Commands:
    """Verify the whole buffer, every table and field, and read what we use."""
    view = memoryview(buf)
    if view.nbytes > MAX_REQUEST_BYTES:
        raise FrameTooLarge(
            f"MnistProt buffer of {view.nbytes} bytes is over the maximum {MAX_REQUEST_BYTES}"
        )
    return _walk(_Reader(view.tobytes()), decode=True)


def _walk(reader: _Reader, *, decode: bool) -> _Commands:
    """Visit every table, field and vector the buffer holds; with ``decode``, read them.

    Without ``decode`` only the bounds are checked: that is how far the buffer
    reaches (``reader.reach``), which is how :class:`RequestFramer` cuts a stream.
    """
    root = reader.table(reader.uoffset(0, "root offset"), "Commands")
    cmd = root.i8(_COMMANDS_CMD, CMD_GET_STATS)
    stats = root.table(_COMMANDS_STATS, "Stats")
    if stats is not None:
        # Read only to verify: the official verifier checks every present field.
        stats.u8(_STATS_VERSION, 0)
        stats.u32(_STATS_FREQ, 0)
        stats.i8(_STATS_MODE, 0)
    digit = None
    inference_input = root.table(_COMMANDS_INPUT, "InferenceInput")
    if inference_input is not None:
        digit = inference_input.floats(_INPUT_DIGIT, "digit", decode=decode)
    output = None
    inference_output = root.table(_COMMANDS_OUPUT, "InferenceOutput")
    if inference_output is not None:
        values = inference_output.floats(_OUTPUT_F, "output_f", decode=decode)
        output = MnistResponse(
            cmd=cmd,
            output=values if values is not None else np.zeros(0, np.float32),
            output_n=inference_output.u8(_OUTPUT_N, 0),
            timer_ms=inference_output.f32(_OUTPUT_TIMER, 0.0),
        )
    return _Commands(cmd=cmd, digit=digit, output=output)


class _Incomplete(Exception):
    """The bytes so far are a valid start; the buffer goes on to byte ``needed`` at least."""

    def __init__(self, needed: int) -> None:
        super().__init__(needed)
        self.needed = needed


class _Reader:
    """Bounds-checked little-endian reads; alignment is not required.

    ``reach`` is the end of the furthest byte checked so far. A ``partial``
    reader holds the start of a stream: a read past its end that stays under
    MAX_REQUEST_BYTES raises :class:`_Incomplete` (wait for more bytes) instead
    of ProtocolError, and one past MAX_REQUEST_BYTES raises FrameTooLarge.
    """

    __slots__ = ("buf", "partial", "reach", "size")

    def __init__(self, buf: bytes, *, partial: bool = False) -> None:
        self.buf = buf
        self.size = len(buf)
        self.partial = partial
        self.reach = 0

    def need(self, pos: int, length: int, what: str) -> None:
        end = pos + length
        if self.partial and pos >= 0 and length >= 0 and end > self.size:
            if end > MAX_REQUEST_BYTES:
                raise FrameTooLarge(
                    f"{what} (bytes {pos}..{end}) lies past the maximum MnistProt buffer"
                    f" of {MAX_REQUEST_BYTES} bytes"
                )
            raise _Incomplete(end)
        if pos < 0 or length < 0 or end > self.size:
            raise ProtocolError(
                f"{what} (bytes {pos}..{end}) lies outside the {self.size}-byte buffer"
            )
        self.reach = max(self.reach, end)

    def unpack(self, fmt: struct.Struct, pos: int, what: str) -> int | float:
        self.need(pos, fmt.size, what)
        value: int | float = fmt.unpack_from(self.buf, pos)[0]
        return value

    def uoffset(self, pos: int, what: str) -> int:
        """The absolute position a uoffset at ``pos`` points to."""
        return pos + int(self.unpack(_U32, pos, what))

    def table(self, pos: int, name: str) -> _Table:
        self.need(pos, 4, f"{name} table")
        vtable = pos - int(self.unpack(_I32, pos, f"{name} vtable offset"))
        self.need(vtable, 4, f"{name} vtable header")
        vtable_size = int(self.unpack(_U16, vtable, f"{name} vtable size"))
        object_size = int(self.unpack(_U16, vtable + 2, f"{name} object size"))
        if vtable_size < 4 or vtable_size % 2:
            raise ProtocolError(f"{name} vtable size {vtable_size} is not an even number >= 4")
        if object_size < 4:
            raise ProtocolError(f"{name} object size {object_size} is under 4")
        self.need(vtable, vtable_size, f"{name} vtable")
        self.need(pos, object_size, f"{name} table body")
        return _Table(self, name, pos, vtable, vtable_size)


class _Table:
    """One verified table: field lookups through its vtable."""

    __slots__ = ("name", "pos", "reader", "vtable", "vtable_size")

    def __init__(self, reader: _Reader, name: str, pos: int, vtable: int, vtable_size: int) -> None:
        self.reader = reader
        self.name = name
        self.pos = pos
        self.vtable = vtable
        self.vtable_size = vtable_size

    def _field(self, slot: int, width: int) -> int | None:
        entry = 4 + 2 * slot
        if entry + 2 > self.vtable_size:
            return None  # older/shorter vtable: the field is absent
        offset = int(self.reader.unpack(_U16, self.vtable + entry, f"{self.name} vtable entry"))
        if offset == 0:
            return None
        self.reader.need(self.pos + offset, width, f"{self.name} field {slot}")
        return self.pos + offset

    def _scalar(self, fmt: struct.Struct, slot: int, default: int | float) -> int | float:
        pos = self._field(slot, fmt.size)
        if pos is None:
            return default
        return self.reader.unpack(fmt, pos, f"{self.name} field {slot}")

    def u8(self, slot: int, default: int) -> int:
        return int(self._scalar(_U8, slot, default))

    def i8(self, slot: int, default: int) -> int:
        return int(self._scalar(_I8, slot, default))

    def u32(self, slot: int, default: int) -> int:
        return int(self._scalar(_U32, slot, default))

    def f32(self, slot: int, default: float) -> float:
        return float(self._scalar(_F32, slot, default))

    def table(self, slot: int, name: str) -> _Table | None:
        pos = self._field(slot, 4)
        if pos is None:
            return None
        return self.reader.table(self.reader.uoffset(pos, f"{name} offset"), name)

    def floats(self, slot: int, name: str, *, decode: bool = True) -> Float32Array | None:
        """The float vector in ``slot``; without ``decode``, checked but not read (empty)."""
        pos = self._field(slot, 4)
        if pos is None:
            return None
        start = self.reader.uoffset(pos, f"{name} offset")
        count = int(self.reader.unpack(_U32, start, f"{name} length"))
        if count > MAX_VECTOR_LEN:
            raise FrameTooLarge(f"{name} claims {count} floats; the maximum is {MAX_VECTOR_LEN}")
        self.reader.need(start + 4, 4 * count, f"{name} data")
        if not decode:
            return np.zeros(0, np.float32)
        data = np.frombuffer(self.reader.buf, dtype="<f4", count=count, offset=start + 4)
        return data.astype(np.float32)  # a native-order, writable copy


# --- stream framing -----------------------------------------------------------

#: The first bytes of every request the firmware builds (offsets, vtables, tables and
#: the vector's length: nothing there depends on the digit's values).
_FIRMWARE_HEAD = encode_request(np.zeros(DIGIT_LEN, np.float32))[: REQUEST_SIZE - 4 * DIGIT_LEN]


def request_extent(buf: bytes | bytearray | memoryview) -> int | None:
    """How many bytes the request at the start of ``buf`` spans; None: not all here yet.

    A FlatBuffer has no length field: it ends at the furthest byte its root
    offset, tables, vtables and vectors reach, so that is where the next request
    starts. Every position is bounds-checked as :func:`decode_request` checks it;
    one past MAX_REQUEST_BYTES raises FrameTooLarge at once, bytes that cannot
    start a buffer of this schema raise ProtocolError.
    """
    return _measure(memoryview(buf).cast("B"))[0]


def _measure(buf: bytearray | memoryview) -> tuple[int | None, int]:
    """(the request's length, 0), or (None, the fewest bytes that could tell more)."""
    if bytes(buf[: len(_FIRMWARE_HEAD)]) == _FIRMWARE_HEAD:
        # The firmware's own layout, as every ESP8266 sends it: these bytes alone say
        # that it ends at REQUEST_SIZE, so nothing needs walking.
        return (REQUEST_SIZE, 0) if len(buf) >= REQUEST_SIZE else (None, REQUEST_SIZE)
    reader = _Reader(bytes(buf[:MAX_REQUEST_BYTES]), partial=True)
    try:
        _walk(reader, decode=False)
    except _Incomplete as more:
        return None, more.needed
    return reader.reach, 0


class RequestFramer:
    """Cuts a byte stream into whole requests, each as long as its own content says.

    Sans-IO: :meth:`feed` takes bytes and returns the requests they complete. The
    firmware's 3,180-byte layout is recognised by its first 44 bytes; any other
    valid buffer (a ``stats`` table, other field orders, a wrong digit count) is
    measured by :func:`request_extent`, so it is cut where it ends and refused or
    answered at once instead of waiting for bytes that never come. At most
    MAX_REQUEST_BYTES are held at any time.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        # Measuring again before the buffer holds this many bytes would tell nothing new.
        self._needed = 0

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a whole request."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        rest = memoryview(data).cast("B")
        requests: list[bytes] = []
        while True:
            room = MAX_REQUEST_BYTES - len(self._buf)
            self._buf += rest[:room]
            rest = rest[room:]
            self._cut(requests)
            if not rest:
                return requests

    def _cut(self, requests: list[bytes]) -> None:
        while self._buf and len(self._buf) >= self._needed:
            end, self._needed = _measure(self._buf)
            if end is None:
                return
            requests.append(bytes(self._buf[:end]))
            del self._buf[:end]

    def flush(self) -> None:
        """Call at end of stream: raises if a request was cut off."""
        if not self._buf:
            return
        held = len(self._buf)
        if _FIRMWARE_HEAD.startswith(bytes(self._buf[: len(_FIRMWARE_HEAD)])):
            raise ProtocolError(f"connection closed after {held} of {REQUEST_SIZE} request bytes")
        raise ProtocolError(f"connection closed after {held} bytes of an unfinished request")
