"""The seed's own TFLite model served on every protocol with LiteRT-exact scores;
requests larger than a batch; Triton's model configuration; HTTP status by error class."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgewire.client.native import Client
from edgewire.errors import RemoteError
from edgewire.wire.mnistprot import RESPONSE_SIZE, decode_response, encode_request
from tests.helpers import RunningAgent, agent_in_thread, serving_agent, upload
from tests.serve.models import broken_model, linear_model, value_dependent_model
from tests.serve.tflite_models import SEED_TFLITE, litert_scores

SEED_IN, SEED_OUT = "conv2d_input", "dense_1/Softmax"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from edgewire.data.datasets import load_dataset

    data = load_dataset("mnist5k", limit=300)
    return (data.x[:256].astype(np.float32) / 255.0).reshape(-1, 28, 28, 1)


@pytest.fixture
def agent(tmp_path: Path):
    with serving_agent(tmp_path / "agent") as running:
        yield running


def native_infer(port: int, model: str, x: np.ndarray) -> dict[str, np.ndarray]:
    async def go() -> dict[str, np.ndarray]:
        async with await Client.connect("127.0.0.1", port) as client:
            return dict((await client.infer(model, [x])).outputs)

    return asyncio.run(go())


def mnistprot_scores(port: int, digit: np.ndarray) -> np.ndarray:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_request(digit.reshape(-1)))
        data = b""
        while len(data) < RESPONSE_SIZE:
            chunk = sock.recv(RESPONSE_SIZE - len(data))
            if not chunk:
                break
            data += chunk
    assert len(data) == RESPONSE_SIZE
    return np.asarray(decode_response(data).output, dtype=np.float32)


def test_seed_tflite_model_serves_native_mnistprot_and_kserve_like_litert(
    agent: RunningAgent, digits: np.ndarray
) -> None:
    reply = upload(agent, SEED_TFLITE, "seed")
    assert reply.status_code == 201, reply.text
    assert reply.json()["format"] == "tflite"
    want = litert_scores(SEED_TFLITE, digits[:20])

    native = native_infer(agent.native, "seed", digits[:20])[SEED_OUT]
    assert np.abs(native - want).max() <= 1e-5
    # Flat rows, as the C and MicroPython clients send them, take the model's NHWC shape.
    flat = native_infer(agent.native, "seed", digits[:20].reshape(20, 784))[SEED_OUT]
    assert np.abs(flat - want).max() <= 1e-5

    # The firmware's own 3,180-byte request: 784 floats become [1, 28, 28, 1].
    legacy = np.stack([mnistprot_scores(agent.port("mnistprot"), d) for d in digits[:20]])
    assert np.abs(legacy - want).max() <= 1e-5

    meta = httpx.get(f"http://127.0.0.1:{agent.http}/v2/models/seed").json()
    assert meta["platform"] == "tensorflow_lite"
    assert meta["inputs"] == [{"name": SEED_IN, "datatype": "FP32", "shape": [-1, 28, 28, 1]}]


def test_tritonclient_gets_256_rows_back_from_one_request(
    tmp_path: Path, digits: np.ndarray
) -> None:
    tritonhttp = pytest.importorskip("tritonclient.http")
    with agent_in_thread(tmp_path / "agent", max_batch_size=32) as running:
        assert upload(running, SEED_TFLITE, "seed").status_code == 201
        client = tritonhttp.InferenceServerClient(url=f"127.0.0.1:{running.http}")
        try:
            config = client.get_model_config("seed")
            assert config["max_batch_size"] == 32
            assert config["input"] == [
                {"name": SEED_IN, "data_type": "TYPE_FP32", "dims": [28, 28, 1]}
            ]
            assert config["output"][0]["dims"] == [10]
            assert config["dynamic_batching"]["preferred_batch_size"] == [32]
            for binary in (True, False):
                inp = tritonhttp.InferInput(SEED_IN, [256, 28, 28, 1], "FP32")
                inp.set_data_from_numpy(digits, binary_data=binary)
                out = tritonhttp.InferRequestedOutput(SEED_OUT, binary_data=binary)
                got = client.infer("seed", [inp], outputs=[out]).as_numpy(SEED_OUT)
                assert got.shape == (256, 10)
                assert np.abs(got - litert_scores(SEED_TFLITE, digits)).max() <= 1e-5
        finally:
            client.close()


def _status(reply: httpx.Response) -> tuple[int, str]:
    return reply.status_code, reply.json()["code"]


def test_http_status_follows_the_error_class(agent: RunningAgent, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{agent.http}"
    lookup = tmp_path / "lookup.onnx"
    value_dependent_model(lookup)
    assert upload(agent, lookup, "lookup").status_code == 201

    def infer(model: str, value: float, version: str | None = None) -> httpx.Response:
        body = {
            "inputs": [{"name": "input_0", "shape": [1, 1], "datatype": "FP32", "data": [value]}]
        }
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return httpx.post(base + path, json=body)

    ok = infer("lookup", 3.0)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [3.0]
    # A model that fails while running is the server's fault: 500, with its code.
    assert _status(infer("lookup", 99.0)) == (500, "model")
    # Not found, whatever is missing: 404.
    assert _status(infer("nope", 1.0)) == (404, "model_not_found")
    assert _status(infer("lookup", 1.0, version="7")) == (404, "model_not_found")
    assert _status(httpx.get(base + "/v2/models/nope")) == (404, "model_not_found")
    assert _status(httpx.get(base + "/v2/models/nope/config")) == (404, "model_not_found")
    assert _status(httpx.post(base + "/api/models/nope/rollback", json={})) == (
        404,
        "model_not_found",
    )
    # A refused upload or change: 422.
    broken = tmp_path / "broken.onnx"
    broken_model(broken)
    assert _status(upload(agent, broken, "lookup")) == (422, "model")
    assert _status(httpx.post(base + "/api/models/lookup/rollback", json={})) == (422, "model")
    assert _status(upload(agent, SEED_TFLITE, "lookup", filename="seed.onnx")) == (422, "model")
    # And the agent still serves the model it had.
    assert infer("lookup", 2.0).json()["outputs"][0]["data"] == [2.0]


def test_native_errors_carry_the_class_code(agent: RunningAgent, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    linear_model(model)
    assert upload(agent, model, "m").status_code == 201
    with pytest.raises(RemoteError) as info:
        native_infer(agent.native, "absent", np.zeros((1, 784), np.float32))
    assert info.value.remote_code == "model_not_found"


def test_kserve_row_cap_is_a_413_that_names_it(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    linear_model(model)
    with agent_in_thread(tmp_path / "agent", max_batch_size=4, max_request_rows=10) as running:
        assert upload(running, model, "m").status_code == 201
        url = f"http://127.0.0.1:{running.http}/v2/models/m/infer"

        def rows(n: int) -> Any:
            data = [0.0] * (n * 784)
            body = {
                "inputs": [{"name": "input_0", "shape": [n, 784], "datatype": "FP32", "data": data}]
            }
            return httpx.post(url, json=body, timeout=30)

        assert rows(10).status_code == 200
        assert len(rows(10).json()["outputs"][0]["data"]) == 100
        too_many = rows(11)
        assert too_many.status_code == 413
        assert "max_request_rows=10" in too_many.json()["error"]


def test_an_uploads_external_data_never_finds_files_beside_other_uploads(
    agent: RunningAgent, tmp_path: Path
) -> None:
    from tests.serve.models import model_with_external_data, weights_for

    hostile = tmp_path / "hostile.onnx"
    model_with_external_data(hostile, "secret.bin", write_data=False)
    # Another client's bytes (here: exactly the weights the model would need) lie in
    # the uploads folder; the upload must not be able to read them as its weights.
    uploads = agent.config.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    w, _ = weights_for()
    (uploads / "secret.bin").write_bytes(w.astype("<f4").tobytes())
    refused = upload(agent, hostile, "m")
    assert refused.status_code == 422, refused.text
    assert "does not exist next to the model" in refused.json()["error"]
    assert [p.name for p in uploads.iterdir()] == ["secret.bin"]  # its private folder is gone
