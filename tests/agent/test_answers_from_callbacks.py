"""Answers written from the batcher's callbacks (native and MnistProt) on a real agent:
every request answered once, in its order where the protocol needs it, none lost at a
half-close, a refusal in a pipeline answering what came before it."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np

from edgewire.serve.store import ModelStore
from edgewire.wire.frames import FrameDecoder, MsgType, encode_frame
from edgewire.wire.messages import decode_message, encode_message
from edgewire.wire.mnistprot import DIGIT_LEN, RESPONSE_SIZE, decode_response, encode_request
from tests.helpers import agent_in_thread, serving_agent
from tests.serve.models import expected, linear_model


def _model(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    w, b = linear_model(tmp_path / "m.onnx", in_features=784, out_features=10, seed=5)
    ModelStore(tmp_path / "models").add("mnist", tmp_path / "m.onnx")
    return w, b


def _send_all_then_read(port: int, data: bytes, *, until: int | None = None) -> bytes:
    """Send ``data``, half-close, read everything (or ``until`` bytes) the agent sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while (until is None or len(got) < until) and (chunk := sock.recv(1 << 16)):
            got += chunk
    return got


def _infer(request_id: int, x: np.ndarray, **meta: object) -> bytes:
    payload = encode_message({"model": "mnist", **meta}, [x])
    return encode_frame(MsgType.INFER_REQUEST, payload, request_id=request_id)


def test_native_pipelined_requests_are_each_answered_once_even_after_a_half_close(
    tmp_path: Path,
) -> None:
    w, b = _model(tmp_path)
    rng = np.random.default_rng(0)
    xs = [rng.random((1, 784), dtype=np.float32) for _ in range(40)]
    bad = xs[7].copy()
    bad[0, 3] = np.inf
    requests = [_infer(100 + i, bad if i == 7 else x) for i, x in enumerate(xs)]
    requests.insert(20, _infer(999, xs[0], deadline_ms="soon"))  # refused at once, politely
    with serving_agent(tmp_path) as agent:
        answer = _send_all_then_read(agent.native, b"".join(requests))
    frames = FrameDecoder().feed(answer)
    by_id = {f.request_id: f for f in frames}
    assert len(frames) == len(by_id) == 41  # each answered exactly once
    for i, x in enumerate(xs):
        frame = by_id[100 + i]
        message = decode_message(frame.payload)
        if i == 7:
            assert frame.type is MsgType.ERROR and message.meta["code"] == "data"
            assert "NaN or Inf" in message.meta["message"]
            continue
        assert frame.type is MsgType.INFER_RESPONSE
        assert message.meta["model"] == "mnist" and message.meta["outputs"] == ["output_0"]
        assert {"queue_ms", "compute_ms", "batch_size", "version"} <= set(message.meta)
        np.testing.assert_allclose(message.tensors[0], expected(x, w, b), atol=1e-5)
    refused = decode_message(by_id[999].payload).meta
    assert by_id[999].type is MsgType.ERROR and refused["code"] == "protocol"


def test_mnistprot_pipelined_answers_come_in_request_order(tmp_path: Path) -> None:
    w, b = _model(tmp_path)
    rng = np.random.default_rng(1)
    digits = [rng.random(DIGIT_LEN, dtype=np.float32) for _ in range(30)]
    with serving_agent(tmp_path) as agent:
        answer = _send_all_then_read(
            agent.port("mnistprot"), b"".join(encode_request(d) for d in digits)
        )
    assert len(answer) == RESPONSE_SIZE * len(digits)
    for i, digit in enumerate(digits):
        scores = decode_response(answer[i * RESPONSE_SIZE : (i + 1) * RESPONSE_SIZE]).output
        np.testing.assert_allclose(scores, expected(digit[None], w, b)[0], atol=1e-5)


def test_mnistprot_a_refused_request_mid_pipeline_answers_those_before_it_then_closes(
    tmp_path: Path,
) -> None:
    _model(tmp_path)
    good = encode_request(np.full(DIGIT_LEN, 0.5, np.float32))
    bad = bytearray(good)
    bad[-4:] = np.array([np.nan], np.float32).tobytes()
    with serving_agent(tmp_path) as agent:
        answer = _send_all_then_read(agent.port("mnistprot"), good * 3 + bytes(bad) + good * 3)
        errors = agent.agent.metrics.registry.get_sample_value(
            "edgewire_infer_errors_total", {"protocol": "mnistprot", "code": "protocol"}
        )
    assert len(answer) == 3 * RESPONSE_SIZE  # the three before it, nothing after
    assert errors == 1


def _uint64_output_model(path: Path) -> None:
    """x (N×4 float) -> x cast to uint64: an output dtype the native wire cannot carry."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT64)],
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.UINT64, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def test_an_answer_the_wire_cannot_carry_is_answered_as_its_error_and_the_connection_stays(
    tmp_path: Path,
) -> None:
    _uint64_output_model(tmp_path / "cast.onnx")
    ModelStore(tmp_path / "models").add("cast", tmp_path / "cast.onnx")
    x = np.ones((1, 4), np.float32)
    requests = [
        encode_frame(MsgType.INFER_REQUEST, encode_message({"model": "cast"}, [x]), request_id=rid)
        for rid in (1, 2, 3)
    ]
    with serving_agent(tmp_path) as agent:
        began = time.monotonic()
        answer = _send_all_then_read(agent.native, b"".join(requests))
        took = time.monotonic() - began
    frames = FrameDecoder().feed(answer)
    assert sorted(f.request_id for f in frames) == [1, 2, 3]
    for frame in frames:
        meta = decode_message(frame.payload).meta
        assert frame.type is MsgType.ERROR and "cannot travel" in meta["message"], meta
    assert took < 5  # none left pending until the drain timeout


def test_the_row_cap_holds_when_it_is_under_the_batch_size(tmp_path: Path) -> None:
    _model(tmp_path)
    with serving_agent(tmp_path, max_batch_size=32, max_request_rows=4) as agent:
        answer = _send_all_then_read(
            agent.native,
            _infer(5, np.zeros((8, 784), np.float32)) + _infer(6, np.zeros((4, 784), np.float32)),
        )
    frames = {f.request_id: f for f in FrameDecoder().feed(answer)}
    refused = decode_message(frames[5].payload).meta
    assert frames[5].type is MsgType.ERROR and refused["code"] == "too_large"
    assert "8 rows, over max_request_rows=4" in refused["message"]
    assert frames[6].type is MsgType.INFER_RESPONSE


def _tile_model(path: Path, repeats: int) -> None:
    """x (N×4 float) -> x tiled ``repeats`` times along the row: big answers to small requests."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Tile", ["x", "repeats"], ["y"])],
        "tile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4 * repeats])],
        initializer=[numpy_helper.from_array(np.array([1, repeats], np.int64), "repeats")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def test_a_client_that_never_reads_its_answers_stops_being_read(tmp_path: Path) -> None:
    """Answers come from callbacks, not from a task that drains: the connection must stop
    reading requests once its unread answers pile up, not queue them without end."""
    _tile_model(tmp_path / "tile.onnx", repeats=4096)  # 64 KiB answers to 100-byte requests
    ModelStore(tmp_path / "models").add("tile", tmp_path / "tile.onnx")
    x = np.ones((1, 4), np.float32)
    one = encode_frame(MsgType.INFER_REQUEST, encode_message({"model": "tile"}, [x]), request_id=1)
    with agent_in_thread(tmp_path, idle_timeout=5.0) as running:
        with socket.create_connection(("127.0.0.1", running.native), timeout=30) as sock:
            # 1,000 requests (64 MB of answers) in rounds slow enough to stay under the
            # 64 a connection may have in flight, and never a read.
            for _ in range(50):
                sock.sendall(one * 20)
                time.sleep(0.03)
            time.sleep(1.0)
            held = running.agent.metrics.registry.get_sample_value(
                "edgewire_infer_requests_total", {"protocol": "native"}
            )
            # Another client is served meanwhile.
            (other,) = FrameDecoder().feed(_send_all_then_read(running.native, one))
            assert other.type is MsgType.INFER_RESPONSE
        # Bounded by the socket buffers and the agent's 256 KiB of unread answers.
        assert held < 600, held  # 1,000 without the back-pressure
