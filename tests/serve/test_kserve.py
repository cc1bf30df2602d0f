"""KServe v2 / Open Inference Protocol codec: round trips, the peer client's bytes, bad input."""

from __future__ import annotations

import hashlib
import json
import struct
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgewire.errors import DataError, FrameTooLarge
from edgewire.serve.kserve import (
    DATATYPES,
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    TensorSpec,
    datatype_of,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
)

Arrays = dict[str, np.ndarray[Any, Any]]
MNIST = [TensorSpec(name="input_0", dtype="float32", shape=(None, 784))]
MAX_BODY = 1 << 20

# What tritonclient 2.73.0 (HTTP) sends for one (1, 784) FP32 input set with
# binary_data=True, output_0 requested with binary_data=True and request_id "7":
# this JSON, then the raw little-endian tensor. Generated once with
# InferenceServerClient.generate_request_body; the digest covers the whole body.
TRITON_JSON = (
    b'{"id":"7","inputs":[{"name":"input_0","shape":[1,784],"datatype":"FP32",'
    b'"parameters":{"binary_data_size":3136}}],'
    b'"outputs":[{"name":"output_0","parameters":{"binary_data":true}}]}'
)
TRITON_SHA256 = "4a47a631b1139dc36c6f7efbbb11abcef8f3f565b61d16ac391995cbeebdfe6b"
# The same input with no outputs listed: the client then asks for all of them as binary.
TRITON_JSON_ALL_OUTPUTS = (
    b'{"inputs":[{"name":"input_0","shape":[1,784],"datatype":"FP32",'
    b'"parameters":{"binary_data_size":3136}}],"parameters":{"binary_data_output":true}}'
)


def digit() -> np.ndarray[Any, Any]:
    return (np.arange(784, dtype=np.float32) / 784).reshape(1, 784)


def triton_body() -> bytes:
    return TRITON_JSON + digit().tobytes()


def make_request(
    tensors: list[tuple[str, np.ndarray[Any, Any], bool]],
    *,
    extra: dict[str, Any] | None = None,
    nested: bool = False,
) -> tuple[bytes, int | None]:
    """A request body built by hand: (name, array, binary) per input."""
    items, blobs = [], []
    for name, array, binary in tensors:
        item: dict[str, Any] = {
            "name": name,
            "shape": list(array.shape),
            "datatype": datatype_of(array.dtype),
        }
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            item["data"] = array.tolist() if nested else array.ravel().tolist()
        items.append(item)
    header = json.dumps({"inputs": items, **(extra or {})}).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def read_response(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The response JSON and each output as numpy, read the way a client does."""
    length = int(headers.get(HEADER_LENGTH, len(body)))
    doc = json.loads(body[:length])
    arrays, offset = {}, length
    for out in doc["outputs"]:
        if out["datatype"] == "BYTES":
            continue
        dtype = DATATYPES[out["datatype"]].newbyteorder("<")
        if "data" in out:
            arrays[out["name"]] = np.array(out["data"], dtype=dtype).reshape(out["shape"])
        else:
            size = out["parameters"]["binary_data_size"]
            raw = body[offset : offset + size]
            arrays[out["name"]] = np.frombuffer(raw, dtype=dtype).reshape(out["shape"])
            offset += size
    assert offset == len(body)
    return doc, arrays


def extremes(datatype: str) -> np.ndarray[Any, Any]:
    """Six values of a datatype, its limits included, shaped (2, 3)."""
    dtype = DATATYPES[datatype]
    if dtype.kind == "b":
        values: list[Any] = [True, False, True, True, False, False]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [int(info.min), int(info.max), 0, 1, int(info.max) - 1, 7]
    else:
        finfo = np.finfo(dtype)
        values = [float(finfo.max), float(-finfo.max), 0.0, -0.5, float(finfo.tiny), 1.5]
    return np.array(values, dtype=dtype).reshape(2, 3)


def spec_for(array: np.ndarray[Any, Any], name: str = "x") -> TensorSpec:
    return TensorSpec(name=name, dtype=array.dtype.name, shape=(None, *array.shape[1:]))


# ------------------------------------------------------------------------ datatypes


def test_datatype_table() -> None:
    assert list(DATATYPES) == [
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
    ]
    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name
        assert datatype_of(dtype.newbyteorder(">")) == name
    for text_like in (np.dtype(object), np.dtype("S4"), np.dtype("U3")):
        assert datatype_of(text_like) == "BYTES"
    with pytest.raises(DataError, match="complex64"):
        datatype_of(np.dtype(np.complex64))


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    array = extremes(datatype)
    body, length = make_request([("x", array, binary)])
    request = parse_infer_request(
        body, header_length=length, inputs=[spec_for(array)], max_body=MAX_BODY
    )
    got = request.inputs["x"]
    assert got.dtype == array.dtype and got.shape == array.shape
    assert np.array_equal(got, array)
    assert got.flags.writeable and got.flags.aligned and got.dtype.isnative

    out, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs={"y": got},
        requested=(RequestedOutput(name="y", binary=binary),),
        binary_default=False,
    )
    doc, arrays = read_response(out, headers)
    assert doc["outputs"][0]["datatype"] == datatype
    assert doc["outputs"][0]["shape"] == [2, 3]
    assert arrays["y"].dtype == array.dtype.newbyteorder("<")
    assert np.array_equal(arrays["y"], array)
    if binary:
        assert headers["Content-Type"] == "application/octet-stream"
        assert out[int(headers[HEADER_LENGTH]) :] == array.astype(array.dtype).tobytes()
    else:
        assert headers == {"Content-Type": "application/json"}


def test_tritonclient_request_bytes() -> None:
    body = triton_body()
    assert len(TRITON_JSON) == 179 and len(body) == 3315
    assert hashlib.sha256(body).hexdigest() == TRITON_SHA256
    request = parse_infer_request(body, header_length=179, inputs=MNIST, max_body=MAX_BODY)
    assert request == InferRequest(
        id="7",
        inputs=request.inputs,
        outputs=(RequestedOutput(name="output_0", binary=True),),
        binary_default=False,
    )
    assert request.inputs["input_0"].shape == (1, 784)
    assert np.array_equal(request.inputs["input_0"], digit())

    logits = np.linspace(-1, 1, 10, dtype=np.float32).reshape(1, 10)
    out, headers = encode_infer_response(
        model_name="mnist",
        model_version="3",
        request_id=request.id,
        outputs={"output_0": logits, "hidden": np.zeros((1, 4), np.float32)},
        requested=request.outputs,
        binary_default=request.binary_default,
    )
    header = (
        b'{"model_name":"mnist","model_version":"3","id":"7","outputs":[{"name":"output_0",'
        b'"datatype":"FP32","shape":[1,10],"parameters":{"binary_data_size":40}}]}'
    )
    assert out == header + logits.tobytes()
    assert headers == {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def test_binary_data_output_default_applies_to_all_outputs() -> None:
    body = TRITON_JSON_ALL_OUTPUTS + digit().tobytes()
    request = parse_infer_request(
        body, header_length=len(TRITON_JSON_ALL_OUTPUTS), inputs=MNIST, max_body=MAX_BODY
    )
    assert request.id is None and request.outputs is None and request.binary_default
    outputs: Arrays = {"b": np.arange(3, dtype=np.int64), "a": np.ones((2, 2), np.float16)}
    out, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs=outputs,
        requested=None,
        binary_default=True,
    )
    doc, arrays = read_response(out, headers)
    assert "id" not in doc
    assert [o["name"] for o in doc["outputs"]] == ["b", "a"]  # the model's order
    assert all("data" not in o for o in doc["outputs"])
    assert np.array_equal(arrays["b"], outputs["b"]) and np.array_equal(arrays["a"], outputs["a"])


def test_output_binary_flag_defaults_to_request_parameter() -> None:
    x = np.zeros((1, 784), np.float32)
    extra = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "p"}, {"name": "q", "parameters": {"binary_data": False}}],
    }
    body, length = make_request([("input_0", x, False)], extra=extra)
    request = parse_infer_request(body, header_length=length, inputs=MNIST, max_body=MAX_BODY)
    assert request.outputs == (
        RequestedOutput(name="p", binary=True),
        RequestedOutput(name="q", binary=False),
    )


def test_requested_outputs_mix_json_and_binary_in_request_order() -> None:
    outputs = {
        "a": np.arange(4, dtype=np.float32).reshape(2, 2),
        "b": np.array([[1, -2]], dtype=np.int32),
        "c": np.array([True]),
    }
    requested = (
        RequestedOutput(name="c", binary=True),
        RequestedOutput(name="b", binary=False),
        RequestedOutput(name="a", binary=True),
    )
    out, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id="r1",
        outputs=outputs,
        requested=requested,
        binary_default=False,
    )
    doc, arrays = read_response(out, headers)
    assert doc["id"] == "r1"
    assert [o["name"] for o in doc["outputs"]] == ["c", "b", "a"]
    assert doc["outputs"][1]["data"] == [1, -2]
    assert out[int(headers[HEADER_LENGTH]) :] == b"\x01" + outputs["a"].tobytes()
    for name, array in outputs.items():
        assert np.array_equal(arrays[name], array)


def test_response_is_little_endian_and_row_major() -> None:
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = big.T  # non-contiguous, column view
    for binary in (False, True):
        out, headers = encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs={"t": strided},
            requested=None,
            binary_default=binary,
        )
        doc, arrays = read_response(out, headers)
        assert doc["outputs"][0]["shape"] == [3, 2]
        assert np.array_equal(arrays["t"], [[0, 3], [1, 4], [2, 5]])
    assert out.endswith(np.array([0, 3, 1, 4, 2, 5], "<i4").tobytes())


def test_bytes_outputs() -> None:
    labels = np.array([b"cat", "dög", b""], dtype=object)
    out, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs={"label": labels},
        requested=(RequestedOutput(name="label", binary=True),),
        binary_default=False,
    )
    length = int(headers[HEADER_LENGTH])
    expected = b"".join(struct.pack("<I", len(s)) + s for s in (b"cat", "dög".encode(), b""))
    assert out[length:] == expected
    assert json.loads(out[:length])["outputs"][0]["parameters"] == {"binary_data_size": 19}

    out, headers = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs={"label": labels},
        requested=None,
        binary_default=False,
    )
    assert json.loads(out)["outputs"][0] == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [3],
        "data": ["cat", "dög", ""],
    }
    with pytest.raises(DataError, match="'label' holds bytes that are not UTF-8"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs={"label": np.array([b"\xff"], dtype=object)},
            requested=None,
            binary_default=False,
        )


def test_non_finite_output_needs_binary() -> None:
    y = np.array([1.0, np.nan], np.float32)
    with pytest.raises(DataError, match=r"'y' holds NaN or Inf.*binary_data=true"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs={"ok": np.ones(2, np.float32), "y": y},
            requested=None,
            binary_default=False,
        )
    out, _ = encode_infer_response(
        model_name="m",
        model_version="1",
        request_id=None,
        outputs={"y": y},
        requested=None,
        binary_default=True,
    )
    assert out.endswith(y.tobytes())


def test_unknown_requested_output_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"unknown output 'z'; the model has 'y'"):
        encode_infer_response(
            model_name="m",
            model_version="1",
            request_id=None,
            outputs={"y": np.ones(1)},
            requested=(RequestedOutput(name="z", binary=False),),
            binary_default=False,
        )


def test_encode_small_output_is_fast() -> None:
    outputs = {"output_0": np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10)}
    start = time.perf_counter()
    for _ in range(2000):
        encode_infer_response(
            model_name="mnist",
            model_version="1",
            request_id="1",
            outputs=outputs,
            requested=None,
            binary_default=False,
        )
    # About 10 µs each here; the bound only catches per-element Python work gone wild.
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------- data layouts


def test_flat_and_nested_data_are_the_same_tensor() -> None:
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    spec = [spec_for(array)]
    flat, _ = make_request([("x", array, False)])
    nested, _ = make_request([("x", array, False)], nested=True)
    assert b"[[[" in nested and b"[[" not in flat
    for body in (flat, nested):
        got = parse_infer_request(body, header_length=None, inputs=spec, max_body=MAX_BODY)
        assert np.array_equal(got.inputs["x"], array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([[1, 2, 3], [4, 5]], r"at depth 1 \(expected 3 items, got 2 items\)"),
        ([[1, 2, 3]], r"at depth 0 \(expected 2 items, got 1 items\)"),
        ([[1, 2, 3], 4], r"at depth 1 \(expected 3 items, got integer\)"),
        ([[[1], [2], [3]], [[4], [5], [6]]], "data holds array values"),
        ([1, 2, 3, 4, 5], r"data has 5 elements, expected 6 for shape \[2, 3\]"),
        ([1, 2, 3, [4], 5, 6], "data holds array values"),
    ],
)
def test_nested_data_must_match_shape(data: list[Any], message: str) -> None:
    item = {"name": "x", "shape": [2, 3], "datatype": "INT64", "data": data}
    body = json.dumps({"inputs": [item]}).encode()
    spec = [TensorSpec(name="x", dtype="int64", shape=(None, 3))]
    with pytest.raises(DataError, match=message):
        parse_infer_request(body, header_length=None, inputs=spec, max_body=MAX_BODY)


def test_empty_and_scalar_tensors() -> None:
    specs = [
        TensorSpec(name="e", dtype="float32", shape=(None, 3)),
        TensorSpec(name="s", dtype="int32", shape=()),
    ]
    doc = {
        "inputs": [
            {"name": "e", "shape": [0, 3], "datatype": "FP32", "data": []},
            {"name": "s", "shape": [], "datatype": "INT32", "data": [5]},
        ]
    }
    got = parse_infer_request(
        json.dumps(doc).encode(), header_length=None, inputs=specs, max_body=MAX_BODY
    )
    assert got.inputs["e"].shape == (0, 3) and got.inputs["s"].shape == ()
    assert int(got.inputs["s"]) == 5
    body, length = make_request([("e", np.zeros((0, 3), np.float32), True)])
    got = parse_infer_request(body, header_length=length, inputs=specs[:1], max_body=MAX_BODY)
    assert got.inputs["e"].shape == (0, 3)


def test_binary_inputs_consume_the_rest_in_request_order() -> None:
    a = np.arange(6, dtype=np.uint8).reshape(1, 6)
    b = np.array([[0.5, -2.0]], dtype=np.float64)
    c = np.array([[7]], dtype=np.int64)
    specs = [spec_for(c, "c"), spec_for(a, "a"), spec_for(b, "b")]
    body, length = make_request([("a", a, True), ("c", c, False), ("b", b, True)])
    got = parse_infer_request(body, header_length=length, inputs=specs, max_body=MAX_BODY)
    assert list(got.inputs) == ["a", "c", "b"]
    expected: Arrays = {"a": a, "b": b, "c": c}
    for name, array in expected.items():
        assert np.array_equal(got.inputs[name], array)


def test_body_at_the_limit() -> None:
    body = triton_body()
    got = parse_infer_request(body, header_length=179, inputs=MNIST, max_body=len(body))
    assert "input_0" in got.inputs
    with pytest.raises(FrameTooLarge, match="3315 bytes, over the limit of 3314"):
        parse_infer_request(body, header_length=179, inputs=MNIST, max_body=len(body) - 1)


# ------------------------------------------------------------------------ bad requests


def x_input(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not DROP}


DROP = object()
X_SPEC = [TensorSpec(name="x", dtype="float32", shape=(None, 3))]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "request must be a JSON object, got array"),
        ({}, "request 'inputs' must be an array, got null"),
        ({"inputs": {}}, "request 'inputs' must be an array, got object"),
        ({"inputs": [], "id": 3}, "request 'id' must be a string, got integer"),
        ({"inputs": [], "parameters": []}, "request: 'parameters' must be an object"),
        (
            {"inputs": [], "parameters": {"binary_data_output": 1}},
            "binary_data_output must be a boolean, got integer",
        ),
        ({"inputs": []}, r"missing input 'x'; the model expects 'x'"),
        ({"inputs": [3]}, r"inputs\[0\] must be an object, got integer"),
        ({"inputs": [x_input(name=DROP)]}, r"inputs\[0\] needs a 'name' string, got null"),
        ({"inputs": [x_input(name="y")]}, r"unknown input 'y'; the model expects 'x'"),
        ({"inputs": [x_input(), x_input()]}, "input 'x' appears twice"),
        (
            {"inputs": [x_input(datatype="FP64")]},
            "input 'x': datatype 'FP64' does not match the model's 'FP32'",
        ),
        (
            {"inputs": [x_input(datatype="FLOAT")]},
            "input 'x': datatype 'FLOAT' does not match the model's 'FP32'",
        ),
        (
            {"inputs": [x_input(datatype=DROP)]},
            "input 'x': datatype null does not match the model's 'FP32'",
        ),
        (
            {"inputs": [x_input(datatype="BYTES")]},
            "input 'x': BYTES inputs are not supported by this model",
        ),
        ({"inputs": [x_input(shape=3)]}, "input 'x': shape must be an array of non-negative"),
        ({"inputs": [x_input(shape=[1, -3])]}, r"non-negative integers, got \[1, -3\]"),
        ({"inputs": [x_input(shape=[1, 3.0])]}, r"non-negative integers, got \[1, 3.0\]"),
        ({"inputs": [x_input(shape=[True, 3])]}, r"non-negative integers, got \[True, 3\]"),
        (
            {"inputs": [x_input(shape=[3])]},
            r"input 'x': shape \[3\] does not match the model's \[-1, 3\]",
        ),
        (
            {"inputs": [x_input(shape=[1, 4], data=[1, 2, 3, 4])]},
            r"input 'x': shape \[1, 4\] does not match the model's \[-1, 3\]",
        ),
        (
            {"inputs": [x_input(shape=[10**12, 3])]},
            r"holds 3000000000000 elements, over the limit of 16777216",
        ),
        ({"inputs": [x_input(data=DROP)]}, "neither 'data' nor parameters.binary_data_size"),
        ({"inputs": [x_input(data="1,2,3")]}, "input 'x': 'data' must be an array, got string"),
        ({"inputs": [x_input(data=[1, 2])]}, r"data has 2 elements, expected 3 for shape \[1, 3\]"),
        (
            {"inputs": [x_input(data=[1, "2", None])]},
            "input 'x': data holds null, string values, expected numbers for FP32",
        ),
        (
            {"inputs": [x_input(data=[1, 2, 1e39])]},
            "input 'x': a value is out of range for FP32",
        ),
        (
            {"inputs": [x_input(data=[1, 2, 10**400])]},
            "input 'x': a value is out of range for FP32",
        ),
        (
            {"inputs": [x_input(parameters=[])]},
            "input 'x': 'parameters' must be an object, got array",
        ),
        (
            {"inputs": [x_input(parameters={"binary_data_size": 12})]},
            "input 'x' has both 'data' and parameters.binary_data_size",
        ),
        (
            {"inputs": [x_input(parameters={"shared_memory_region": "r"})]},
            "input 'x': shared memory is not supported",
        ),
        ({"inputs": [x_input()], "outputs": {}}, "request 'outputs' must be an array"),
        ({"inputs": [x_input()], "outputs": ["y"]}, r"outputs\[0\] must be an object"),
        ({"inputs": [x_input()], "outputs": [{}]}, r"outputs\[0\] needs a 'name' string"),
        (
            {"inputs": [x_input()], "outputs": [{"name": "y"}, {"name": "y"}]},
            "output 'y' is requested twice",
        ),
        (
            {"inputs": [x_input()], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "output 'y': binary_data must be a boolean, got integer",
        ),
        (
            {
                "inputs": [x_input()],
                "outputs": [{"name": "y", "parameters": {"classification": 3}}],
            },
            "output 'y': parameter 'classification' is not supported",
        ),
    ],
)
def test_malformed_json_requests(doc: Any, message: str) -> None:
    body = json.dumps(doc).encode()
    with pytest.raises(DataError, match=message) as info:
        parse_infer_request(body, header_length=None, inputs=X_SPEC, max_body=MAX_BODY)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("BOOL", [True, 1, False], "data holds integer values, expected booleans for BOOL"),
        ("INT32", [1, True, 3], "data holds boolean values, expected integers for INT32"),
        ("INT32", [1, 2.5, 3], "data holds float values, expected integers for INT32"),
        ("INT32", [1, 2.0, 3], "data holds float values, expected integers for INT32"),
        ("UINT8", [0, 256, 1], r"value 256 is out of range for UINT8 \(0..255\)"),
        ("UINT8", [0, -1, 1], r"value -1 is out of range for UINT8 \(0..255\)"),
        ("INT8", [-129, 0, 1], r"value -129 is out of range for INT8 \(-128..127\)"),
        ("INT64", [0, 2**63, 1], "value 9223372036854775808 is out of range for INT64"),
        ("UINT64", [0, 2**64, 1], "value 18446744073709551616 is out of range for UINT64"),
        ("FP16", [0, 70000, 1], "a value is out of range for FP16"),
    ],
)
def test_json_values_must_fit_the_datatype(datatype: str, data: list[Any], message: str) -> None:
    dtype = DATATYPES[datatype].name
    spec = [TensorSpec(name="x", dtype=dtype, shape=(None, 3))]
    body = json.dumps({"inputs": [x_input(datatype=datatype, data=data)]}).encode()
    with pytest.raises(DataError, match=message):
        parse_infer_request(body, header_length=None, inputs=spec, max_body=MAX_BODY)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request is not valid JSON"),
        (b'{"inputs": [', "request is not valid JSON"),
        (b'{"inputs": []} []', "request is not valid JSON: Extra data"),
        (b'{"inputs": [], "id": "\xff"}', r"not valid UTF-8 \(bad byte at 22\)"),
        (b"\xef\xbb\xbf{}", "request is not valid JSON"),
        (b"[" * 100_000, "request JSON is nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", "an integer with too many digits"),
    ]
    + [
        (b'{"inputs": [{"data": [1, %s, 3]}]}' % token, f"{token.decode()} is not a JSON number")
        for token in (b"NaN", b"Infinity", b"-Infinity")
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_infer_request(body, header_length=None, inputs=X_SPEC, max_body=MAX_BODY)


@pytest.mark.parametrize("length", [0, -1, 3316, 10**9])
def test_header_length_must_lie_inside_the_body(length: int) -> None:
    with pytest.raises(DataError, match=rf"{HEADER_LENGTH} is {length}, expected 1..3315"):
        parse_infer_request(triton_body(), header_length=length, inputs=MNIST, max_body=MAX_BODY)


def binary_x(size: Any, tail: bytes, *, datatype: str = "FP32") -> tuple[bytes, int]:
    item = x_input(data=DROP, datatype=datatype, parameters={"binary_data_size": size})
    header = json.dumps({"inputs": [item]}).encode()
    return header + tail, len(header)


@pytest.mark.parametrize(
    ("size", "tail", "message"),
    [
        (11, bytes(11), r"binary_data_size is 11, expected 12 \(3 FP32 elements\)"),
        (12.0, bytes(12), r"binary_data_size is 12.0, expected 12"),
        ("12", bytes(12), r"binary_data_size is '12', expected 12"),
        (12, bytes(8), r"binary_data_size 12 runs past the body \(8 binary bytes left"),
        (12, bytes(13), "1 bytes of binary data follow the JSON but no input claims them"),
        (12, np.array([1, np.nan, 2], np.float32).tobytes(), "input 'x': holds NaN or Inf"),
        (12, np.array([1, -np.inf, 2], np.float32).tobytes(), "input 'x': holds NaN or Inf"),
    ],
)
def test_malformed_binary_inputs(size: Any, tail: bytes, message: str) -> None:
    body, length = binary_x(size, tail)
    with pytest.raises(DataError, match=message):
        parse_infer_request(body, header_length=length, inputs=X_SPEC, max_body=MAX_BODY)


def test_binary_input_without_header_length() -> None:
    body, _ = binary_x(12, b"")
    with pytest.raises(DataError, match=f"runs past the body.*is {HEADER_LENGTH} set"):
        parse_infer_request(body, header_length=None, inputs=X_SPEC, max_body=MAX_BODY)


def test_binary_bool_bytes_are_zero_or_one() -> None:
    spec = [TensorSpec(name="x", dtype="bool", shape=(None, 3))]
    body, length = binary_x(3, b"\x01\x00\x01", datatype="BOOL")
    got = parse_infer_request(body, header_length=length, inputs=spec, max_body=MAX_BODY)
    assert got.inputs["x"].tolist() == [[True, False, True]]
    body, length = binary_x(3, b"\x01\x02\x01", datatype="BOOL")
    with pytest.raises(DataError, match="input 'x': BOOL bytes must be 0 or 1, got 2"):
        parse_infer_request(body, header_length=length, inputs=spec, max_body=MAX_BODY)


def test_max_elements_is_checked_before_data() -> None:
    body = json.dumps({"inputs": [x_input(shape=[2, 3], data=[0] * 6)]}).encode()
    with pytest.raises(DataError, match="holds 6 elements, over the limit of 5"):
        parse_infer_request(
            body, header_length=None, inputs=X_SPEC, max_body=MAX_BODY, max_elements=5
        )


# ---------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)


def parse_or_refuse(body: bytes, header_length: int | None) -> None:
    try:
        got = parse_infer_request(body, header_length=header_length, inputs=MNIST, max_body=4096)
    except (DataError, FrameTooLarge):
        return
    assert got.inputs["input_0"].shape[1:] == (784,)


@FUZZ
@given(body=st.binary(max_size=5000), header_length=st.none() | st.integers(-5, 5000))
def test_fuzz_random_bodies(body: bytes, header_length: int | None) -> None:
    parse_or_refuse(body, header_length)


@FUZZ
@given(position=st.integers(0, 3314), value=st.integers(0, 255))
def test_fuzz_byte_flips_of_the_client_request(position: int, value: int) -> None:
    body = bytearray(triton_body())
    body[position] = value
    parse_or_refuse(bytes(body), 179)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@FUZZ
@given(path=st.lists(st.integers(0, 8), max_size=5), value=json_values, seed=st.integers(0, 3))
def test_fuzz_json_field_swaps(path: list[int], value: Any, seed: int) -> None:
    """Replace one field anywhere in a valid request with an arbitrary JSON value."""
    doc: Any = json.loads(TRITON_JSON)
    node = doc
    for step in path:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = keys[(step + seed) % len(keys)]
        if isinstance(node[key], dict | list) and step % 3:
            node = node[key]
            continue
        node[key] = value
        break
    header = json.dumps(doc).encode()
    parse_or_refuse(header + digit().tobytes(), len(header))


scalars = (
    st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.none()
)


@FUZZ
@given(
    datatype=st.sampled_from(list(DATATYPES)),
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=3),
    data=st.recursive(st.lists(scalars, max_size=12), lambda inner: st.lists(inner, max_size=4)),
)
def test_fuzz_json_data(datatype: str, shape: list[int], data: list[Any]) -> None:
    """Arbitrary JSON data for every datatype: a tensor of the right shape, or DataError."""
    spec = TensorSpec(name="x", dtype=DATATYPES[datatype].name, shape=(None,) * len(shape))
    item = {"name": "x", "shape": shape, "datatype": datatype, "data": data}
    body = json.dumps({"inputs": [item]}).encode()
    try:
        got = parse_infer_request(body, header_length=None, inputs=[spec], max_body=MAX_BODY)
    except DataError:
        return
    assert got.inputs["x"].shape == tuple(shape)
    assert got.inputs["x"].dtype == DATATYPES[datatype]


# --------------------------------------------------------------------- other bodies


def test_model_metadata() -> None:
    meta = model_metadata(
        name="mnist",
        versions=["1", "2"],
        platform="onnxruntime_onnx",
        inputs=MNIST,
        outputs=[TensorSpec(name="output_0", dtype="float32", shape=(None, 10))],
    )
    assert meta == {
        "name": "mnist",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input_0", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "output_0", "datatype": "FP32", "shape": [-1, 10]}],
    }
    bad = TensorSpec(name="t", dtype="not-a-dtype", shape=(1,))
    with pytest.raises(DataError, match="tensor 't': 'not-a-dtype' is not a numpy dtype"):
        model_metadata(name="m", versions=[], platform="p", inputs=[bad], outputs=[])


def test_error_body() -> None:
    assert error_body('input "x" is bad') == b'{"error":"input \\"x\\" is bad"}'
    assert json.loads(error_body("naïve \ud800")) == {"error": "naïve \ud800"}
    assert error_body("naïve").isascii()


def test_response_parses_with_tritonclient() -> None:
    """When the real peer client is installed, it reads what we write."""
    http = pytest.importorskip("tritonclient.http")
    outputs: Arrays = {
        "f": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
        "u": np.array([0, 2**64 - 1], dtype=np.uint64),
        "b": np.array([True, False]),
        "s": np.array([b"ab", b""], dtype=object),
    }
    for binary in (False, True):
        out, headers = encode_infer_response(
            model_name="m",
            model_version="1",
            request_id="9",
            outputs=outputs,
            requested=None,
            binary_default=binary,
        )
        length = headers.get(HEADER_LENGTH)
        result = http.InferResult.from_response_body(
            out, header_length=None if length is None else int(length)
        )
        assert result.get_response()["id"] == "9"
        for name in ("f", "u", "b"):
            assert np.array_equal(result.as_numpy(name), outputs[name])
        assert [bytes(s, "utf-8") if isinstance(s, str) else s for s in result.as_numpy("s")] == [
            b"ab",
            b"",
        ]
