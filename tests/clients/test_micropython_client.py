"""The MicroPython client module (clients/micropython), run under CPython against real servers."""

from __future__ import annotations

import ast
import importlib.util
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from edgewire.serve.store import ModelStore
from edgewire.wire.frames import Frame, FrameDecoder, MsgType, encode_frame
from edgewire.wire.messages import decode_message, encode_message, error_payload
from tests.clients.fixture_server import LinearServer, linear_server
from tests.helpers import agent_in_thread
from tests.serve.models import expected, linear_model

MODULE = Path(__file__).resolve().parents[2] / "clients" / "micropython" / "edgewire_client.py"
#: What the module may import at all: MicroPython has these (or their u-names).
ALLOWED_IMPORTS = {"socket", "usocket", "struct", "ustruct", "binascii"}


@pytest.fixture(scope="module")
def ew() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("edgewire_client", MODULE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["edgewire_client"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["edgewire_client"]


def test_imports_only_what_micropython_has() -> None:
    tree = ast.parse(MODULE.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module is not None
            names.add(node.module)
    assert names <= ALLOWED_IMPORTS, names - ALLOWED_IMPORTS
    # Some MicroPython builds have no f-strings.
    assert not any(isinstance(node, ast.JoinedStr) for node in ast.walk(tree))


# -- codec ---------------------------------------------------------------------------


def test_crc32_matches_zlib(ew: ModuleType) -> None:
    assert ew.crc32_small(b"123456789") == 0xCBF43926
    rng = np.random.default_rng(0)
    for size in (0, 1, 3, 64, 3200):
        data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        assert ew.crc32_small(data) == zlib.crc32(data)
        assert ew.crc32(data) == zlib.crc32(data)
        half = size // 2
        assert ew.crc32_small(data[half:], ew.crc32_small(data[:half])) == zlib.crc32(data)


def test_request_is_byte_for_byte_the_reference_codec(ew: ModuleType) -> None:
    x = np.random.default_rng(1).random((1, 784), dtype=np.float32)
    want = encode_frame(
        MsgType.INFER_REQUEST, encode_message({"model": "mnist"}, [x]), request_id=9
    )
    assert ew.encode_request(9, "mnist", x[0].tolist()) == want
    assert ew.encode_request(9, "mnist", tuple(x[0].tolist())) == want
    (frame,) = FrameDecoder().feed(ew.encode_request(9, "mnist", x[0].tolist()))
    np.testing.assert_array_equal(decode_message(frame.payload).tensors[0], x)


@pytest.mark.parametrize("model", ["", 'a"b', "a\\b", "caf\u00e9", "x" * 65, "new\nline"])
def test_request_refuses_names_that_need_escaping(ew: ModuleType, model: str) -> None:
    with pytest.raises(ValueError, match="model name"):
        ew.encode_request(1, model, [1.0])


@pytest.mark.parametrize("compute_ms", [0.125, 7, 1e-05, 2.5e20])
def test_response_from_the_reference_codec(ew: ModuleType, compute_ms: float) -> None:
    y = np.random.default_rng(2).random((1, 10), dtype=np.float32)
    meta = {"model": "mnist", "queue_ms": 3.0, "compute_ms": compute_ms, "batch_size": 2}
    outputs, ms = ew.decode_response(17, encode_message(meta, [y, np.arange(4)]), 10)
    assert outputs == y[0].tolist() and ms == compute_ms
    assert ew.decode_response(17, encode_message({}, [y]), 10)[1] == -1.0


def test_error_payload_raises_with_the_message(ew: ModuleType) -> None:
    text = 'model "x" is not served \u2014 caf\u00e9 \\ \U0001f600 done'
    with pytest.raises(ew.RemoteError) as info:
        ew.decode_response(5, error_payload("model", text), 10)
    assert info.value.remote_code == "model"
    # One astral character arrives as a surrogate pair; each half becomes "?".
    assert info.value.message == 'model "x" is not served \u2014 caf\u00e9 \\ ?? done [model]'
    assert isinstance(info.value, ew.EdgewireError)


def tensor(dtype: int, dims: list[int], nbytes: int, data: bytes) -> bytes:
    return struct.pack(f"<BBH{len(dims)}IQ", dtype, len(dims), 0, *dims, nbytes) + data


def payload(*tensors: bytes, count: int | None = None, meta: bytes = b"{}") -> bytes:
    n = len(tensors) if count is None else count
    return struct.pack("<I", len(meta)) + meta + struct.pack("<H", n) + b"".join(tensors)


TEN = tensor(6, [1, 10], 40, bytes(40))
BAD_PAYLOADS = {
    "empty": b"",
    "meta past the end": struct.pack("<I", 99) + b"{}",
    "no count": struct.pack("<I", 2) + b"{}",
    "no tensors": payload(),
    "65 tensors": payload(TEN, count=65),
    "more outputs than allowed": payload(tensor(6, [1, 11], 44, bytes(44))),
    "dims over any limit": payload(tensor(6, [2**32 - 1] * 8, 40, bytes(40))),
    "9 dims": payload(tensor(6, [1] * 9, 4, bytes(4))),
    "nbytes wrong": payload(tensor(6, [1, 10], 44, bytes(44))),
    "nbytes 2**64-1": payload(tensor(6, [1, 10], 2**64 - 1, bytes(40))),
    "data cut short": payload(tensor(6, [1, 10], 40, bytes(8))),
    "float64": payload(tensor(7, [1, 5], 40, bytes(40))),
    "unknown dtype": payload(tensor(42, [1], 4, bytes(4))),
    "byte after": payload(TEN) + b"\x00",
    "second tensor cut": payload(TEN, tensor(1, [100], 100, bytes(2))),
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payloads_raise_protocol_error(ew: ModuleType, case: str) -> None:
    with pytest.raises(ew.ProtocolError):
        ew.decode_response(17, BAD_PAYLOADS[case], 10)


def test_header_is_checked_before_reading(ew: ModuleType) -> None:
    header = encode_frame(MsgType.INFER_RESPONSE, b"x" * 100, request_id=3)[:20]
    assert ew.decode_header(header, 100)[:3] == (17, 3, 100)
    with pytest.raises(ew.ProtocolError, match="over the limit"):
        ew.decode_header(header, 99)
    for bad in (
        b"XW" + header[2:],
        header[:2] + b"\x02" + header[3:],
        header[:6] + b"\x01\x00" + header[8:],
    ):
        with pytest.raises(ew.ProtocolError):
            ew.decode_header(bad, 1000)
    with pytest.raises(ew.ProtocolError):
        ew.decode_response(4, payload(TEN), 10)  # a PONG is not an answer


# -- against real servers -------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("model") / "linear.onnx"
    w, b = linear_model(path, in_features=784, out_features=10, seed=6)
    return path, w, b


@pytest.fixture(scope="module")
def agent_port(
    tmp_path_factory: pytest.TempPathFactory, model: tuple[Path, np.ndarray, np.ndarray]
) -> Iterator[int]:
    data_dir = tmp_path_factory.mktemp("agent")
    store = ModelStore(data_dir / "models")
    store.add("mnist", model[0])
    store.set_alias("mnist", "production", 1)
    with agent_in_thread(data_dir, max_queue_delay_ms=1.0) as agent:
        yield agent.native


@pytest.fixture
def fixture_server(model: tuple[Path, np.ndarray, np.ndarray]) -> Iterator[LinearServer]:
    with linear_server(model[1], model[2]) as server:
        yield server


@pytest.fixture(params=["fixture", "agent"])
def port(request: pytest.FixtureRequest) -> int:
    if request.param == "agent":
        return int(request.getfixturevalue("agent_port"))
    server: LinearServer = request.getfixturevalue("fixture_server")
    return server.port


def test_infer_one_digit(
    ew: ModuleType, port: int, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    x = np.random.default_rng(3).random((1, 784), dtype=np.float32)
    outputs, compute_ms = ew.infer("127.0.0.1", port, "mnist", x[0].tolist(), timeout=10)
    assert len(outputs) == 10 and compute_ms >= 0
    np.testing.assert_allclose(outputs, expected(x, model[1], model[2])[0], atol=1e-5)


def test_client_keeps_one_connection(
    ew: ModuleType,
    port: int,
    model: tuple[Path, np.ndarray, np.ndarray],
    request: pytest.FixtureRequest,
) -> None:
    xs = np.random.default_rng(4).random((20, 784), dtype=np.float32)
    with ew.Client("localhost", port, timeout=10) as client:
        answers = [client.infer("mnist", x.tolist()) for x in xs]
        # An error answer leaves the connection usable.
        with pytest.raises(ew.RemoteError) as info:
            client.infer("nosuch", xs[0].tolist())
        again, _ = client.infer("mnist", xs[0].tolist())
    assert info.value.remote_code == "model_not_found" and "'nosuch'" in info.value.message
    np.testing.assert_allclose([a[0] for a in answers], expected(xs, model[1], model[2]), atol=1e-5)
    np.testing.assert_allclose(again, answers[0][0], atol=1e-6)
    if request.node.callspec.params["port"] == "fixture":
        server: LinearServer = request.getfixturevalue("fixture_server")
        assert server.connections == 1 and server.request_ids == list(range(1, 23))
        assert all(ms == 0.125 for _, ms in answers)


def test_unknown_model_raises_the_agents_message(ew: ModuleType, port: int) -> None:
    with pytest.raises(ew.RemoteError, match=r"model 'nosuch' is not served.*\[model_not_found\]$"):
        ew.infer("127.0.0.1", port, "nosuch", [0.0] * 784)


def raw_header(length: int, crc: int = 0, request_id: int = 1) -> bytes:
    return struct.pack("<2sBBHHIII", b"EW", 1, 17, 0, 0, request_id, length, crc)


BODY = payload(TEN)
HOSTILE = {
    "length 2**32-1": (raw_header(2**32 - 1), "over the limit"),
    "bad crc": (raw_header(len(BODY), zlib.crc32(BODY) ^ 1) + BODY, "CRC"),
    "other id": (raw_header(len(BODY), zlib.crc32(BODY), request_id=77) + BODY, "request 77"),
    "not edgewire": (b"HTTP/1.1 400 Bad Request\r\n\r\n", "magic"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_answers_raise_protocol_error(
    ew: ModuleType, model: tuple[Path, np.ndarray, np.ndarray], case: str
) -> None:
    raw, text = HOSTILE[case]

    def reply(frame: Frame) -> bytes:
        return raw

    with (
        linear_server(model[1], model[2], reply=reply) as server,
        pytest.raises(ew.ProtocolError, match=text),
    ):
        ew.infer("127.0.0.1", server.port, "mnist", [0.0] * 784)


def test_a_server_that_goes_away_or_falls_silent(
    ew: ModuleType, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    w, b = model[1], model[2]
    with (
        linear_server(w, b, reply=lambda frame: raw_header(100), close_after=True) as server,
        pytest.raises(ew.ConnectError, match="closed"),
    ):
        ew.infer("127.0.0.1", server.port, "mnist", [0.0] * 784)
    with linear_server(w, b, reply=lambda frame: b"") as server:
        start = time.monotonic()
        with pytest.raises(ew.ConnectError, match="failed"):
            ew.infer("127.0.0.1", server.port, "mnist", [0.0] * 784, timeout=0.3)
        assert time.monotonic() - start >= 0.25
    port = server.port  # closed now
    with pytest.raises(ew.ConnectError, match="cannot connect"):
        ew.infer("127.0.0.1", port, "mnist", [0.0] * 784)


# -- the token ------------------------------------------------------------------------

TOKEN = "correct-horse-battery"


def test_hello_frame_is_byte_for_byte_the_reference_codec(ew: ModuleType) -> None:
    want = encode_frame(
        MsgType.HELLO, encode_message({"client": "micropython", "token": TOKEN}), request_id=4
    )
    assert ew.encode_hello(4, TOKEN) == want
    for bad in ('with"quote', "", "x" * 1025):
        with pytest.raises(ValueError):
            ew.encode_hello(4, bad)


def test_the_token_opens_an_agent_that_has_one(
    ew: ModuleType, tmp_path: Path, model: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    store = ModelStore(tmp_path / "models")
    store.add("mnist", model[0])
    store.set_alias("mnist", "production", 1)
    x = np.random.default_rng(5).random((1, 784), dtype=np.float32)
    with agent_in_thread(tmp_path, max_queue_delay_ms=1.0, token=TOKEN) as agent:
        outputs, _ = ew.infer("127.0.0.1", agent.native, "mnist", x[0].tolist(), 10, TOKEN)
        np.testing.assert_allclose(outputs, expected(x, model[1], model[2])[0], atol=1e-5)
        with pytest.raises(ew.RemoteError) as info:
            ew.infer("127.0.0.1", agent.native, "mnist", x[0].tolist(), timeout=10)
        assert info.value.remote_code == "auth"
        with pytest.raises(ew.RemoteError, match="wrong token") as info:
            ew.Client("127.0.0.1", agent.native, timeout=10, token="wrong-token")
        assert info.value.remote_code == "auth"
