"""Serving on a real agent: deploy over HTTP, then native, MnistProt and KServe v2 at once."""

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
from edgewire.wire.mnistprot import (
    REQUEST_SIZE,
    RESPONSE_SIZE,
    decode_response,
    encode_request,
    encode_response,
)
from tests.helpers import RunningAgent, agent_in_thread, serving_agent, upload
from tests.serve.models import broken_model, huge_input_model, image_model, linear_model


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Any]:
    good = tmp_path / "good.onnx"
    w, b = linear_model(good, in_features=784, out_features=10, seed=1)
    other = tmp_path / "other.onnx"
    w2, b2 = linear_model(other, in_features=784, out_features=10, seed=2)
    bad = tmp_path / "bad.onnx"
    broken_model(bad)
    return {"good": good, "w": w, "b": b, "other": other, "w2": w2, "b2": b2, "bad": bad}


@pytest.fixture
def agent(tmp_path: Path):
    with serving_agent(tmp_path / "agent") as running:
        yield running


def ask_native(port: int, x: np.ndarray, model: str = "mnist") -> np.ndarray:
    """One native inference on a fresh connection: the model's ``output_0``."""

    async def go() -> np.ndarray:
        async with await Client.connect("127.0.0.1", port) as client:
            return (await client.infer(model, [x])).outputs["output_0"]

    return asyncio.run(go())


def mnistprot_once(port: int, digit: np.ndarray) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_request(digit))
        data = b""
        while len(data) < RESPONSE_SIZE:
            chunk = sock.recv(RESPONSE_SIZE - len(data))
            if not chunk:
                break
            data += chunk
    return data


def test_deployed_model_answers_native_mnistprot_and_kserve_at_once(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    assert upload(agent, models["good"]).status_code == 201
    rng = np.random.default_rng(0)
    digits = rng.random((40, 784), dtype=np.float32)
    expected = softmax(digits @ models["w"].T + models["b"])

    async def native_all() -> list[np.ndarray]:
        async with await Client.connect("127.0.0.1", agent.native) as client:
            answers = await asyncio.gather(*(client.infer("mnist", [d[None]]) for d in digits))
        return [a.outputs["output_0"][0] for a in answers]

    def mnistprot_all() -> list[np.ndarray]:
        out = []
        for d in digits[:10]:
            raw = mnistprot_once(agent.port("mnistprot"), d)
            assert len(raw) == RESPONSE_SIZE
            response = decode_response(raw)
            assert response.output_n == 10 and response.timer_ms >= 0
            out.append(response.output)
        return out

    def kserve_all() -> list[np.ndarray]:
        out = []
        with httpx.Client(base_url=f"http://127.0.0.1:{agent.http}") as http:
            for d in digits[:10]:
                body = {
                    "inputs": [
                        {
                            "name": "input_0",
                            "shape": [1, 784],
                            "datatype": "FP32",
                            "data": d.tolist(),
                        }
                    ]
                }
                reply = http.post("/v2/models/mnist/infer", json=body)
                assert reply.status_code == 200, reply.text
                out.append(np.array(reply.json()["outputs"][0]["data"], np.float32))
        return out

    async def together() -> tuple[Any, Any, Any]:
        return await asyncio.gather(
            native_all(), asyncio.to_thread(mnistprot_all), asyncio.to_thread(kserve_all)
        )

    native, legacy, kserve = asyncio.run(together())
    np.testing.assert_allclose(np.stack(native), expected, atol=1e-5)
    np.testing.assert_allclose(np.stack(legacy), expected[:10], atol=1e-5)
    np.testing.assert_allclose(np.stack(kserve), expected[:10], atol=1e-5)


def test_tritonclient_works_unmodified(agent: RunningAgent, models: dict[str, Any]) -> None:
    tritonhttp = pytest.importorskip("tritonclient.http")
    assert upload(agent, models["good"]).status_code == 201
    client = tritonhttp.InferenceServerClient(url=f"127.0.0.1:{agent.http}")
    assert client.is_server_live() and client.is_model_ready("mnist")
    meta = client.get_model_metadata("mnist")
    assert meta["inputs"][0]["name"] == "input_0"
    x = np.random.default_rng(3).random((3, 784), dtype=np.float32)
    for binary in (False, True):
        inp = tritonhttp.InferInput("input_0", [3, 784], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = tritonhttp.InferRequestedOutput("output_0", binary_data=binary)
        result = client.infer("mnist", [inp], outputs=[out])
        np.testing.assert_allclose(
            result.as_numpy("output_0"), softmax(x @ models["w"].T + models["b"]), atol=1e-5
        )
    client.close()


def test_bad_upload_leaves_old_model_serving(agent: RunningAgent, models: dict[str, Any]) -> None:
    assert upload(agent, models["good"]).status_code == 201
    bad = upload(agent, models["bad"])
    assert bad.status_code in (400, 422), bad.text
    wrong_sha = upload(agent, models["other"], sha256="0" * 64)
    assert wrong_sha.status_code in (400, 422) and "sha256" in wrong_sha.text
    garbage = httpx.put(
        f"http://127.0.0.1:{agent.http}/api/models/mnist",
        content=b"\x80\x04not a model",
        timeout=30,
    )
    assert garbage.status_code in (400, 422)
    x = np.ones((1, 784), np.float32)
    np.testing.assert_allclose(
        ask_native(agent.native, x), softmax(x @ models["w"].T + models["b"]), atol=1e-5
    )
    listing = httpx.get(f"http://127.0.0.1:{agent.http}/api/models").json()["models"][0]
    assert listing["aliases"]["production"] == 1 and listing["serving"]["version"] == 1


def test_activate_rollback_and_delete(agent: RunningAgent, models: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{agent.http}/api/models/mnist"
    assert upload(agent, models["good"]).json()["version"] == 1
    assert upload(agent, models["other"]).json()["version"] == 2
    x = np.ones((1, 784), np.float32)
    np.testing.assert_allclose(
        ask_native(agent.native, x), softmax(x @ models["w2"].T + models["b2"]), atol=1e-5
    )
    assert httpx.post(f"{base}/rollback", json={}).json()["version"] == 1
    np.testing.assert_allclose(
        ask_native(agent.native, x), softmax(x @ models["w"].T + models["b"]), atol=1e-5
    )
    assert httpx.delete(f"{base}/versions/1").status_code >= 400  # production points at it
    assert httpx.delete(f"{base}/versions/2").status_code == 200
    assert httpx.post(f"{base}/activate", json={"version": 1}).status_code == 200


def test_an_upload_under_another_alias_is_checked_but_not_served(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    """alias=canary: stored, loaded and warmed up (a broken one is refused), the alias
    moves, and production keeps serving until the canary is activated as production."""
    base = f"http://127.0.0.1:{agent.http}/api/models/mnist"
    x = np.ones((1, 784), np.float32)
    first, second = (
        softmax(x @ models["w"].T + models["b"]),
        softmax(x @ models["w2"].T + models["b2"]),
    )
    assert upload(agent, models["good"]).json()["active"] is True
    answer = upload(agent, models["other"], alias="canary").json()
    assert answer["version"] == 2 and answer["active"] is False
    np.testing.assert_allclose(ask_native(agent.native, x), first, atol=1e-5)
    aliases = httpx.get(f"http://127.0.0.1:{agent.http}/api/models").json()["models"][0]["aliases"]
    assert aliases == {"production": 1, "canary": 2}
    assert upload(agent, models["bad"], alias="canary").status_code == 422
    assert [
        v["version"]
        for v in httpx.get(f"http://127.0.0.1:{agent.http}/api/models").json()["models"][0][
            "versions"
        ]
    ] == [1, 2]
    assert httpx.post(f"{base}/activate", json={"version": "canary"}).status_code == 200
    np.testing.assert_allclose(ask_native(agent.native, x), second, atol=1e-5)


def test_management_needs_the_token(tmp_path: Path, models: dict[str, Any]) -> None:
    with agent_in_thread(tmp_path, token="correct-horse-battery") as agent:
        url = f"http://127.0.0.1:{agent.http}/api/models"
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token"},
            {"Authorization": "Basic Zm9vOmJhcg=="},
            {"Authorization": "Bearer"},
            {"Authorization": b"Bearer \xc3\xa9\xc3\xa9"},
        ):
            assert httpx.get(url, headers=headers).status_code == 401, headers
        data = models["good"].read_bytes()
        assert httpx.put(f"{url}/m", content=data).status_code == 401
        ok = httpx.put(
            f"{url}/m", content=data, headers={"Authorization": "Bearer correct-horse-battery"}
        )
        assert ok.status_code == 201


def test_mnistprot_bad_requests_are_closed_and_others_served(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    assert upload(agent, models["good"]).status_code == 201
    port = agent.port("mnistprot")
    good = encode_request(np.zeros(784, np.float32))
    bad_inputs = [
        good[:100],  # short read, then close
        b"\x00" * REQUEST_SIZE,  # garbage of the right size
        encode_request(np.zeros(783, np.float32)).ljust(REQUEST_SIZE, b"\x00"),  # wrong digit count
        encode_response(np.zeros(10, np.float32), 1.0).ljust(
            REQUEST_SIZE, b"\x00"
        ),  # wrong cmd (2)
        good[:-1] + b"",  # one byte short of a request
    ]
    for data in bad_inputs:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""  # closed without an answer
    # several requests in a row on one connection, as well as one per connection
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(good * 3)
        data = b""
        while len(data) < 3 * RESPONSE_SIZE:
            chunk = sock.recv(4096)
            assert chunk
            data += chunk
    assert len(data) == 3 * RESPONSE_SIZE
    assert len(mnistprot_once(port, np.zeros(784, np.float32))) == RESPONSE_SIZE


def test_full_queue_gives_fast_busy_and_recovers(tmp_path: Path, models: dict[str, Any]) -> None:
    with agent_in_thread(tmp_path, max_queue=2, max_batch_size=1, max_queue_delay_ms=0.0) as agent:
        assert upload(agent, models["good"]).status_code == 201
        x = np.ones((1, 784), np.float32)

        async def flood() -> tuple[int, int]:
            async with await Client.connect("127.0.0.1", agent.native) as client:
                results = await asyncio.gather(
                    *(client.infer("mnist", [x]) for _ in range(60)), return_exceptions=True
                )
            busy = sum(isinstance(r, RemoteError) and r.remote_code == "busy" for r in results)
            ok = sum(not isinstance(r, BaseException) for r in results)
            return ok, busy

        ok, busy = asyncio.run(flood())
        assert busy > 0 and ok > 0 and ok + busy == 60
        reply = None
        with httpx.Client() as http:
            body = {
                "inputs": [
                    {"name": "input_0", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}
                ]
            }
            reply = http.post(f"http://127.0.0.1:{agent.http}/v2/models/mnist/infer", json=body)
        assert reply.status_code == 200  # recovered once the flood is over


def test_kserve_errors_are_clear(agent: RunningAgent, models: dict[str, Any]) -> None:
    assert upload(agent, models["good"]).status_code == 201
    url = f"http://127.0.0.1:{agent.http}/v2/models/mnist/infer"
    cases = [
        (b"{not json", 400),
        (
            b'{"inputs": [{"name": "input_0", "shape": [1, 783], "datatype": "FP32", "data": []}]}',
            400,
        ),
        (
            b'{"inputs": [{"name": "input_0", "shape": [1, 784], "datatype": "INT64", "data": []}]}',
            400,
        ),
        (b'{"inputs": [{"name": "nope", "shape": [1, 784], "datatype": "FP32", "data": []}]}', 400),
    ]
    for body, status in cases:
        reply = httpx.post(url, content=body)
        assert reply.status_code == status, (body, reply.text)
        assert "error" in reply.json()
    assert (
        httpx.post(f"http://127.0.0.1:{agent.http}/v2/models/nope/infer", content=b"{}").status_code
        == 404
    )
    big = httpx.post(url, content=b" " * (16 * 1024 * 1024 + 1))
    assert big.status_code == 413
    gz = httpx.post(url, content=b"\x1f\x8b" + b"\x00" * 100, headers={"Content-Encoding": "gzip"})
    assert gz.status_code == 400 and "Content-Encoding" in gz.text


def test_swap_under_load_drops_nothing_and_stays_live(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    assert upload(agent, models["good"]).status_code == 201
    x = np.ones((1, 784), np.float32)
    valid = [softmax(x @ models["w"].T + models["b"]), softmax(x @ models["w2"].T + models["b2"])]

    async def load() -> list[np.ndarray]:
        async with await Client.connect("127.0.0.1", agent.native) as client:
            out = []
            for _ in range(150):
                out.append((await client.infer("mnist", [x])).outputs["output_0"])
            return out

    def deploys() -> list[bool]:
        live = []
        for i in range(4):
            upload(agent, models["other"] if i % 2 == 0 else models["good"])
            live.append(httpx.get(f"http://127.0.0.1:{agent.http}/v2/health/live").json()["live"])
        return live

    async def together() -> tuple[Any, Any]:
        return await asyncio.gather(load(), asyncio.to_thread(deploys))

    answers, live = asyncio.run(together())
    assert all(live)
    assert len(answers) == 150
    for a in answers:
        assert any(np.allclose(a, v, atol=1e-5) for v in valid)


def test_slow_body_is_cut_off_and_agent_keeps_serving(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    with agent_in_thread(tmp_path / "agent", body_timeout=0.5) as running:
        assert upload(running, models["good"]).status_code == 201
        body = b'{"inputs": [{"name": "input_0", "shape": [1, 784], "datatype": "FP32", "data": ['
        with socket.create_connection(("127.0.0.1", running.http), timeout=10) as sock:
            sock.sendall(
                b"POST /v2/models/mnist/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + body
            )
            reply = b""  # nothing more is sent: the body stalls
            while b"stalled" not in reply and (chunk := sock.recv(4096)):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 504"), reply
        assert b"stalled" in reply
        ok = httpx.post(
            f"http://127.0.0.1:{running.http}/v2/models/mnist/infer",
            json={
                "inputs": [
                    {"name": "input_0", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}
                ]
            },
        )
        assert ok.status_code == 200, ok.text


def test_flat_rows_fit_an_image_model_and_requests_past_the_row_cap_are_refused_early(
    tmp_path: Path,
) -> None:
    image = tmp_path / "image.onnx"
    w, b = image_model(image)
    with agent_in_thread(tmp_path / "agent", max_batch_size=4, max_request_rows=8) as running:
        assert upload(running, image).status_code == 201

        def ask(x: np.ndarray) -> np.ndarray:
            return ask_native(running.native, x)

        flat = np.random.default_rng(0).random((3, 784), dtype=np.float32)
        # What the C and MicroPython clients send: flat rows of 784 values.
        np.testing.assert_allclose(ask(flat), softmax(flat @ w.T + b), atol=1e-5)
        shaped = ask(flat.reshape(3, 1, 28, 28))
        np.testing.assert_allclose(shaped, softmax(flat @ w.T + b), atol=1e-5)
        with pytest.raises(RemoteError, match=r"must have shape \[N, 1, 28, 28\], got \[1, 783\]"):
            ask(flat[:1, :783])
        # More rows than a batch: split into batches of 4 and joined in order.
        many = np.random.default_rng(1).random((8, 784), dtype=np.float32)
        np.testing.assert_allclose(ask(many), softmax(many @ w.T + b), atol=1e-5)
        with pytest.raises(RemoteError, match="9 rows, over max_request_rows=8") as info:
            ask(np.zeros((9, 784), np.float32))
        assert info.value.remote_code == "too_large"


def test_an_unservable_model_is_not_kept_and_never_stops_the_agent(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    huge = tmp_path / "huge.onnx"
    huge_input_model(huge)
    with agent_in_thread(tmp_path / "agent") as running:
        assert upload(running, models["good"]).status_code == 201
        refused = upload(running, huge)
        assert refused.status_code == 422 and "over the limit" in refused.text, refused.text
        # A bad alias is refused before anything is stored or served.
        assert upload(running, models["other"], alias="123").status_code == 400
        # Stored without activation under another name: served by nobody yet.
        assert upload(running, huge, "huge", activate="0").status_code == 201
        listing = {
            m["name"]: m
            for m in httpx.get(f"http://127.0.0.1:{running.http}/api/models").json()["models"]
        }
        assert [v["version"] for v in listing["mnist"]["versions"]] == [1]
        assert listing["mnist"]["serving"]["version"] == 1
    # On restart the agent meets the unservable model, logs it and serves the rest.
    with agent_in_thread(tmp_path / "agent") as running:
        x = np.ones((1, 784), np.float32)
        np.testing.assert_allclose(
            ask_native(running.native, x), softmax(x @ models["w"].T + models["b"]), atol=1e-5
        )
        served = {m["name"] for m in running.agent.serving.model_status()}
        assert served == {"mnist"}


def test_python_client_queues_requests_past_the_agents_in_flight_limit(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    assert upload(agent, models["good"]).status_code == 201
    x = np.random.default_rng(3).random((200, 784), dtype=np.float32)

    async def burst() -> list[np.ndarray]:
        async with await Client.connect("127.0.0.1", agent.native) as client:
            answers = await asyncio.gather(
                *(client.infer("mnist", [x[i : i + 1]]) for i in range(len(x)))
            )
        return [a.outputs["output_0"][0] for a in answers]

    # 200 at once on one connection: the agent takes 64 in flight, the client waits for room.
    got = np.stack(asyncio.run(burst()))
    np.testing.assert_allclose(got, softmax(x @ models["w"].T + models["b"]), atol=1e-5)


def test_a_big_json_inference_body_is_parsed_and_answered(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    from edgewire.agent.http import PARSE_INLINE_BYTES

    assert upload(agent, models["good"]).status_code == 201
    x = np.random.default_rng(5).random((32, 784), dtype=np.float32)
    body = {
        "inputs": [
            {"name": "input_0", "shape": [32, 784], "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }
    content = httpx.Request("POST", "http://x", json=body).read()
    assert len(content) > PARSE_INLINE_BYTES  # the path that parses in a thread
    response = httpx.post(
        f"http://127.0.0.1:{agent.http}/v2/models/mnist/infer",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    got = np.array(response.json()["outputs"][0]["data"], np.float32).reshape(32, 10)
    np.testing.assert_allclose(got, softmax(x @ models["w"].T + models["b"]), atol=1e-5)
