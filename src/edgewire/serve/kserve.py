"""Open Inference Protocol (KServe v2) over HTTP, with binary tensor data, as a sans-IO codec.

A request body is one JSON object, optionally followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header says where the JSON ends. Each input
carries its values either in ``data`` (a flat row-major list, or the tensor's
natural nesting) or as ``parameters.binary_data_size`` bytes of the binary part,
which inputs consume in request order. Responses mirror this: outputs asked for
as binary (``outputs[].parameters.binary_data``, else the request's
``parameters.binary_data_output``) follow the JSON raw and little-endian; BYTES
tensors there are 4-byte little-endian length-prefixed strings.

Anything a peer can get wrong raises :class:`~edgewire.errors.DataError` (an
HTTP 400); a body over its cap raises :class:`~edgewire.errors.FrameTooLarge`
(an HTTP 413). Messages name the tensor and show what was expected and got.
"""

from __future__ import annotations

import json
import math
import reprlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import DataError, EdgewireError, FrameTooLarge, ProtocolError
from edgewire.jsonsafe import loads_strict

_fast_loads: Callable[[bytes], Any] | None
try:  # optional: the standard parser reads the same, ten times slower
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = None

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
BYTES = "BYTES"

#: Every fixed-size datatype of the protocol and its numpy dtype ("BYTES" is separate).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}

# Keyed by (kind, itemsize) so that either byte order maps to the same name.
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items()}
# The binary extension is little-endian whatever the host is.
_WIRE = {name: dt.newbyteorder("<") for name, dt in DATATYPES.items()}
# The Python types json.loads may give for each dtype kind; bool is not an int here.
_JSON_TYPES: dict[str, frozenset[type]] = {
    "b": frozenset({bool}),
    "u": frozenset({int}),
    "i": frozenset({int}),
    "f": frozenset({int, float}),
}
_KIND_WORDS = {"b": "booleans", "u": "integers", "i": "integers", "f": "numbers"}
_JSON_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}
_U32 = struct.Struct("<I")
_COMPACT = (",", ":")

# Peer-sent values go into messages through this, so each stays one short line.
_brief = reprlib.Repr()
_brief.maxlist = 8
_brief.maxstring = 40
_brief.maxother = 40


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The protocol datatype of a numpy dtype ("BYTES" for bytes, str and object)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DataError(f"{dtype!r} is not a numpy dtype") from None
    if dt.kind in "OSU":
        return BYTES
    name = _BY_KIND.get((dt.kind, dt.itemsize))
    if name is None:
        raise DataError(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return name


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """One model input or output as the model store describes it."""

    name: str
    dtype: str  # a numpy name, e.g. "float32"
    shape: tuple[int | None, ...]  # None marks a dynamic dimension (the batch)


@dataclass(frozen=True, kw_only=True)
class RequestedOutput:
    """An output the request asked for, and whether it goes back as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True, kw_only=True)
class InferRequest:
    """A parsed ``/v2/models/{name}/infer`` request; every array is owned and writable."""

    id: str | None
    inputs: dict[str, np.ndarray[Any, Any]]
    outputs: tuple[RequestedOutput, ...] | None  # None: all outputs
    binary_default: bool  # the request's parameters.binary_data_output


# ---------------------------------------------------------------------------- requests


def parse_infer_request(
    body: bytes,
    *,
    header_length: int | None,
    inputs: Sequence[TensorSpec],
    max_body: int,
    max_elements: int = 1 << 24,
) -> InferRequest:
    """Decode and check one inference request against the model's inputs.

    The JSON is read by orjson where it is installed (a tenth of the time for a
    body of numbers); a request it refuses, or that fails a check, is read again
    by the standard library, so what is accepted and every error message are the
    standard parser's (orjson reads integers past 64 bits as floats, say).
    """
    if _fast_loads is not None:
        try:
            return _parse_request(body, header_length, inputs, max_body, max_elements, fast=True)
        except EdgewireError:
            pass
    return _parse_request(body, header_length, inputs, max_body, max_elements, fast=False)


def _parse_request(
    body: bytes,
    header_length: int | None,
    inputs: Sequence[TensorSpec],
    max_body: int,
    max_elements: int,
    *,
    fast: bool,
) -> InferRequest:
    if len(body) > max_body:
        raise FrameTooLarge(f"request body is {len(body)} bytes, over the limit of {max_body}")
    if header_length is None:
        json_end = len(body)
    elif 0 < header_length <= len(body):
        json_end = header_length
    else:
        raise DataError(
            f"{HEADER_LENGTH} is {header_length}, expected 1..{len(body)} (the body length)"
        )
    doc = _load_json(body[:json_end], fast=fast)
    if not isinstance(doc, dict):
        raise DataError(f"request must be a JSON object, got {_json_name(doc)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise DataError(f"request 'id' must be a string, got {_json_name(request_id)}")
    params = _parameters(doc, "request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise DataError(
            f"parameters.binary_data_output must be a boolean, got {_json_name(binary_default)}"
        )
    items = doc.get("inputs")
    if not isinstance(items, list):
        raise DataError(f"request 'inputs' must be an array, got {_json_name(items)}")
    outputs = _requested_outputs(doc.get("outputs"), binary_default)

    specs = {spec.name: spec for spec in inputs}
    binary = _BinaryPart(memoryview(body)[json_end:])
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for index, item in enumerate(items):
        name, array = _parse_input(item, index, specs, arrays, binary, max_elements)
        arrays[name] = array
    if binary.left:
        raise DataError(
            f"{binary.left} bytes of binary data follow the JSON but no input claims them"
        )
    missing = [name for name in specs if name not in arrays]
    if missing:
        raise DataError(f"missing input {missing[0]!r}; the model expects {_names(specs)}")
    return InferRequest(
        id=request_id, inputs=arrays, outputs=outputs, binary_default=binary_default
    )


class _BinaryPart:
    """The bytes after the JSON, handed out front to back."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.offset = 0

    @property
    def left(self) -> int:
        return len(self.view) - self.offset

    def take(self, size: int) -> memoryview:
        chunk = self.view[self.offset : self.offset + size]
        self.offset += size
        return chunk


def _load_json(raw: bytes, *, fast: bool = False) -> Any:
    if fast and _fast_loads is not None:
        try:
            return _fast_loads(raw)
        except ValueError:  # orjson.JSONDecodeError
            raise DataError("request is not JSON orjson reads") from None
    try:
        return loads_strict(raw, what="request")
    except ProtocolError as exc:  # a body the peer got wrong is a DataError here, as the rest
        raise DataError(exc.message) from None


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise DataError(f"{where}: 'parameters' must be an object, got {_json_name(params)}")
    return params


def _requested_outputs(raw: Any, binary_default: bool) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise DataError(f"request 'outputs' must be an array, got {_json_name(raw)}")
    if not raw:  # an empty list asks for nothing in particular: all outputs
        return None
    requested: dict[str, RequestedOutput] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise DataError(f"outputs[{index}] must be an object, got {_json_name(item)}")
        name = item.get("name")
        if not isinstance(name, str):
            raise DataError(f"outputs[{index}] needs a 'name' string, got {_json_name(name)}")
        if name in requested:
            raise DataError(f"output {name!r} is requested twice")
        params = _parameters(item, f"output {name!r}")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in params:
                raise DataError(f"output {name!r}: parameter {unsupported!r} is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise DataError(
                f"output {name!r}: binary_data must be a boolean, got {_json_name(binary)}"
            )
        requested[name] = RequestedOutput(name=name, binary=binary)
    return tuple(requested.values())


def _parse_input(
    item: Any,
    index: int,
    specs: Mapping[str, TensorSpec],
    seen: Mapping[str, object],
    binary: _BinaryPart,
    max_elements: int,
) -> tuple[str, np.ndarray[Any, Any]]:
    if not isinstance(item, dict):
        raise DataError(f"inputs[{index}] must be an object, got {_json_name(item)}")
    name = item.get("name")
    if not isinstance(name, str):
        raise DataError(f"inputs[{index}] needs a 'name' string, got {_json_name(name)}")
    spec = specs.get(name)
    if spec is None:
        raise DataError(f"unknown input {_brief.repr(name)}; the model expects {_names(specs)}")
    if name in seen:
        raise DataError(f"input {name!r} appears twice")
    datatype = _check_datatype(name, item.get("datatype"), spec)
    shape = _check_shape(name, item.get("shape"), spec)
    count = math.prod(shape)  # Python ints: no overflow before the cap
    if count > max_elements:
        raise DataError(
            f"input {name!r}: shape {shape} holds {count} elements, over the limit of {max_elements}"
        )
    params = _parameters(item, f"input {name!r}")
    if "shared_memory_region" in params:
        raise DataError(f"input {name!r}: shared memory is not supported; send data inline")
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise DataError(f"input {name!r} has both 'data' and parameters.binary_data_size")
        return name, _from_binary(name, size, binary, datatype, shape, count)
    if "data" in item:
        return name, _from_json(name, item["data"], datatype, shape, count)
    raise DataError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")


def _check_datatype(name: str, datatype: Any, spec: TensorSpec) -> str:
    if datatype == BYTES:
        raise DataError(f"input {name!r}: BYTES inputs are not supported by this model")
    expected = _spec_datatype(spec)
    if datatype != expected:
        got = _brief.repr(datatype) if isinstance(datatype, str) else _json_name(datatype)
        raise DataError(f"input {name!r}: datatype {got} does not match the model's {expected!r}")
    return expected


def _check_shape(name: str, shape: Any, spec: TensorSpec) -> list[int]:
    if not isinstance(shape, list) or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise DataError(
            f"input {name!r}: shape must be an array of non-negative integers, "
            f"got {_brief.repr(shape)}"
        )
    expected = _dims(spec)
    if len(shape) != len(spec.shape) or any(
        want is not None and dim != want for dim, want in zip(shape, spec.shape, strict=True)
    ):
        raise DataError(
            f"input {name!r}: shape {_brief.repr(shape)} does not match the model's {expected}"
            " (-1: any size)"
        )
    return shape


def _from_binary(
    name: str, size: Any, binary: _BinaryPart, datatype: str, shape: list[int], count: int
) -> np.ndarray[Any, Any]:
    wire = _WIRE[datatype]
    expected = count * wire.itemsize
    if type(size) is not int or size != expected:
        raise DataError(
            f"input {name!r}: binary_data_size is {_brief.repr(size)}, expected {expected}"
            f" ({count} {datatype} elements)"
        )
    if size > binary.left:
        raise DataError(
            f"input {name!r}: binary_data_size {size} runs past the body"
            f" ({binary.left} binary bytes left; is {HEADER_LENGTH} set?)"
        )
    chunk = binary.take(size)
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise DataError(f"input {name!r}: BOOL bytes must be 0 or 1, got {int(raw.max())}")
        return raw.astype(np.bool_).reshape(shape)
    # astype copies: the result is aligned, native-endian, writable and outlives the body.
    array = np.frombuffer(chunk, dtype=wire).astype(DATATYPES[datatype]).reshape(shape)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise DataError(f"input {name!r}: holds NaN or Inf; inputs must be finite")
    return array


def _from_json(
    name: str, data: Any, datatype: str, shape: list[int], count: int
) -> np.ndarray[Any, Any]:
    if not isinstance(data, list):
        raise DataError(f"input {name!r}: 'data' must be an array, got {_json_name(data)}")
    flat = _flatten(name, data, shape, count)
    dtype = DATATYPES[datatype]
    # One C-speed pass over the element types instead of a Python loop over values.
    stray = set(map(type, flat)) - _JSON_TYPES[dtype.kind]
    if stray:
        got = ", ".join(sorted(_JSON_NAMES.get(t, t.__name__) for t in stray))
        raise DataError(
            f"input {name!r}: data holds {got} values, expected {_KIND_WORDS[dtype.kind]}"
            f" for {datatype}"
        )
    if dtype.kind in "iu" and flat:
        info = np.iinfo(dtype)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise DataError(
                f"input {name!r}: value {_brief.repr(bad)} is out of range for {datatype}"
                f" ({info.min}..{info.max})"
            )
    try:
        with np.errstate(over="ignore"):  # overflow shows up as Inf, refused just below
            array = np.array(flat, dtype=dtype)
        finite = dtype.kind != "f" or bool(np.isfinite(array).all())
    except OverflowError:  # an integer too large for any float
        finite = False
    if not finite:
        limit = float(np.finfo(dtype).max)
        raise DataError(f"input {name!r}: a value is out of range for {datatype} (±{limit:g})")
    return array.reshape(shape)


def _flatten(name: str, data: list[Any], shape: list[int], count: int) -> list[Any]:
    """Row-major scalars of ``data``: flat already, or nested exactly as ``shape``."""
    if not data or not isinstance(data[0], list):
        if len(data) != count:
            raise DataError(
                f"input {name!r}: data has {len(data)} elements, expected {count} for shape {shape}"
            )
        return data
    level: list[Any] = [data]
    for depth, dim in enumerate(shape):
        below: list[Any] = []
        for row in level:
            if not isinstance(row, list) or len(row) != dim:
                got = f"{len(row)} items" if isinstance(row, list) else _json_name(row)
                raise DataError(
                    f"input {name!r}: nested data does not match shape {shape}"
                    f" at depth {depth} (expected {dim} items, got {got})"
                )
            below.extend(row)
        level = below
    return level


# --------------------------------------------------------------------------- responses


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    requested: tuple[RequestedOutput, ...] | None,
    binary_default: bool,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (Content-Type, and the JSON length if binary)."""
    plan = (
        [(name, binary_default) for name in outputs]
        if requested is None
        else [(out.name, out.binary) for out in requested]
    )
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in plan:
        array = outputs.get(name)
        if array is None:
            raise DataError(f"unknown output {name!r}; the model has {_names(outputs)}")
        array = np.asarray(array)
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _binary_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _json_data(name, array, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    try:
        header = json.dumps(doc, separators=_COMPACT, allow_nan=False).encode()
    except ValueError:
        bad = next(e["name"] for e in entries if "data" in e and not _finite(e["data"]))
        raise DataError(
            f"output {bad!r} holds NaN or Inf, which JSON cannot carry;"
            " request it with binary_data=true"
        ) from None
    if not chunks:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def _binary_bytes(array: np.ndarray[Any, Any], datatype: str) -> bytes:
    if datatype != BYTES:
        return np.ascontiguousarray(array, dtype=_WIRE[datatype]).tobytes()
    items = [_as_bytes(value) for value in array.ravel().tolist()]
    return b"".join(_U32.pack(len(item)) + item for item in items)


def _json_data(name: str, array: np.ndarray[Any, Any], datatype: str) -> list[Any]:
    values: list[Any] = array.ravel().tolist()
    if datatype != BYTES:
        return values
    try:
        return [_as_bytes(value).decode("utf-8") for value in values]
    except UnicodeDecodeError:
        raise DataError(
            f"output {name!r} holds bytes that are not UTF-8; request it with binary_data=true"
        ) from None


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise DataError(f"a BYTES output holds a {type(value).__name__}, expected bytes or str")


def _finite(values: list[Any]) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in values)


# ---------------------------------------------------------------------- other bodies


def model_metadata(
    *,
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The ``GET /v2/models/{name}`` body; dynamic dimensions are -1."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {"name": spec.name, "datatype": _spec_datatype(spec), "shape": _dims(spec)}

    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [tensor(spec) for spec in inputs],
        "outputs": [tensor(spec) for spec in outputs],
    }


def error_body(
    message: str, code: str | None = None, details: dict[str, Any] | None = None
) -> bytes:
    """The protocol's error body, ``{"error": message}``, plus edgewire's error ``code``
    and, where the error has them, its ``details``."""
    body: dict[str, Any] = {"error": message} if code is None else {"error": message, "code": code}
    if details:
        body["details"] = details
    return json.dumps(body, separators=_COMPACT).encode()


# ------------------------------------------------------------------------------ helpers


def _spec_datatype(spec: TensorSpec) -> str:
    try:
        return datatype_of(spec.dtype)
    except DataError as exc:
        raise DataError(f"tensor {spec.name!r}: {exc}") from None


def _dims(spec: TensorSpec) -> list[int]:
    return [-1 if dim is None else dim for dim in spec.shape]


def _names(names: Mapping[str, object]) -> str:
    return ", ".join(repr(name) for name in names) or "none"


def _json_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def model_config(
    *,
    name: str,
    platform: str,
    max_batch_size: int,
    max_queue_delay_ms: float,
    max_queue: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The ``GET /v2/models/{name}/config`` body, as Triton's model-configuration
    extension writes it: with batching, ``dims`` leave out the batch dimension."""
    batched = max_batch_size > 1

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        dims = _dims(spec)[1:] if batched else _dims(spec)
        return {"name": spec.name, "data_type": "TYPE_" + _spec_datatype(spec), "dims": dims}

    body: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size if batched else 0,
        "input": [tensor(spec) for spec in inputs],
        "output": [tensor(spec) for spec in outputs],
    }
    if batched:
        body["dynamic_batching"] = {
            "preferred_batch_size": [max_batch_size],
            "max_queue_delay_microseconds": round(max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": max_queue},
        }
    return body
