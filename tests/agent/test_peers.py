"""Other agents, against two real agents on loopback (both with tokens): the registry,
the proxy (bodies, event streams, refused paths, an unreachable or refusing peer), a
workspace's split pushed to the other agent and trained there through the proxy, and
deploys of a local and of a remote run to both agents behind a gate."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from edgewire.agent.workspaces_api import workspace_path
from edgewire.client.remote_train import push_dataset
from edgewire.data.datasets import load_dataset
from edgewire.project.split import split_workspace
from edgewire.project.workspace import Workspace
from tests.helpers import RunningAgent, agent_in_thread
from tests.serve.models import linear_model

TOKEN_A, TOKEN_B = "peers-token-aaaa", "peers-token-bbbb"
QUICK = {"model": "mnist_cnn", "image_size": 32, "epochs": 1, "batch_size": 16,
         "augment": False, "patience": None}  # fmt: skip
CLASSES = ["0", "1", "7"]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningAgent, RunningAgent]]:
    a_dir, b_dir = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    with (
        agent_in_thread(a_dir, token=TOKEN_A) as a,
        agent_in_thread(b_dir, token=TOKEN_B) as b,
    ):
        answer = call(a, "POST", "/api/agents", json={
            "name": "b", "url": f"http://127.0.0.1:{b.http}", "token": TOKEN_B})  # fmt: skip
        assert answer.status_code == 201, answer.text
        yield a, b


def call(agent: RunningAgent, method: str, path: str, **kw: Any) -> httpx.Response:
    token = TOKEN_A if agent.config.token == TOKEN_A else TOKEN_B
    kw.setdefault("timeout", 120)
    return httpx.request(method, f"http://127.0.0.1:{agent.http}{path}",
                         headers={"Authorization": f"Bearer {token}", **kw.pop("headers", {})},
                         **kw)  # fmt: skip


def one_line_error(answer: httpx.Response, code: str) -> str:
    body = answer.json()
    assert body["code"] == code, body
    assert "\n" not in body["error"]
    return str(body["error"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_workspace(agent: RunningAgent, name: str, per_class: int = 30) -> Path:
    """A workspace of real MNIST digits on the agent's disk, split 60/20/20."""
    root = workspace_path(agent.config, name)
    ws = Workspace.init(root, CLASSES)
    mnist = load_dataset("mnist5k")
    for label in CLASSES:
        for k in np.flatnonzero(mnist.y == int(label))[:per_class]:
            out = io.BytesIO()
            Image.fromarray(mnist.x[k, 0]).save(out, format="PNG")
            ws.add_image(label, out.getvalue(), ".png")
    split_workspace(ws, ratios=(0.6, 0.2, 0.2))
    return root


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(":"))  # fmt: skip
        if "data" in fields:
            found.append((fields["event"], json.loads(fields["data"])))
    return found


def wait_done(agent: RunningAgent, run_id: str, *, via: str = "") -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = call(agent, "GET", f"{via}/api/train/{run_id}").json()
        if status["finished"] is not None:
            return dict(status)
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish")


# --- the registry -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"name": "x", "url": "ftp://127.0.0.1:1", "token": "12345678"}, "http"),
        ({"name": "x", "url": "http://u:p@127.0.0.1:1", "token": "12345678"}, "user"),
        ({"name": "x", "url": "http://127.0.0.1", "token": "12345678"}, "port"),
        ({"name": "x", "url": "http://127.0.0.1:1/api", "token": "12345678"}, "path"),
        ({"name": "x", "url": "http://127.0.0.1:1/?a=1", "token": "12345678"}, "query"),
        ({"name": "x", "url": "http://127.0.0.1:99999", "token": "12345678"}, "valid"),
        ({"name": "x", "url": "http://127.0.0.1:1", "token": "short"}, "token"),
        ({"name": "x", "url": "http://127.0.0.1:1", "token": "has a space"}, "token"),
        ({"name": "../x", "url": "http://127.0.0.1:1", "token": "12345678"}, "agent name"),
        ({"name": "x", "url": "http://127.0.0.1:1", "token": "12345678", "more": 1}, "unknown"),
        ({"name": "b", "url": "http://127.0.0.1:1", "token": "12345678"}, "known already"),
    ],
)
def test_bad_registrations_are_refused(
    two: tuple[RunningAgent, RunningAgent], body: dict[str, Any], says: str
) -> None:
    a, _ = two
    answer = call(a, "POST", "/api/agents", json=body)
    assert answer.status_code == 400, answer.text
    assert says in one_line_error(answer, "config")
    assert "12345678" not in answer.text


def test_the_registry_never_shows_a_token_and_keeps_its_file_private(
    two: tuple[RunningAgent, RunningAgent],
) -> None:
    a, b = two
    added = call(
        a,
        "POST",
        "/api/agents",
        json={"name": "extra", "url": "https://Example.org:8443/", "token": "t0ken-xyz"},
    )
    assert added.status_code == 201
    assert added.json() == {"name": "extra", "url": "https://example.org:8443"}
    listing = call(a, "GET", "/api/agents")
    assert listing.status_code == 200
    assert {"name": "b", "url": f"http://127.0.0.1:{b.http}"} in listing.json()["agents"]
    assert TOKEN_B not in listing.text and "t0ken-xyz" not in listing.text
    path = a.config.data_dir / "agents.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "t0ken-xyz" in path.read_text()  # kept, to be sent as that agent's Bearer
    assert call(a, "DELETE", "/api/agents/extra").json() == {"deleted": "extra"}
    gone = call(a, "DELETE", "/api/agents/extra")
    assert gone.status_code == 404 and gone.json()["code"] == "agent_not_found"
    assert "t0ken-xyz" not in path.read_text()
    assert httpx.get(f"http://127.0.0.1:{a.http}/api/agents").status_code == 401


# --- the proxy ------------------------------------------------------------------------------


def test_the_proxy_carries_bodies_and_answers(
    two: tuple[RunningAgent, RunningAgent], tmp_path: Path
) -> None:
    a, _ = two
    via = "/api/agents/b/proxy"
    model = tmp_path / "tiny.onnx"
    linear_model(model, in_features=4, out_features=3)
    data = model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    put = call(a, "PUT", f"{via}/api/models/tiny", content=data,
               params={"sha256": sha, "filename": "tiny.onnx"})  # fmt: skip
    assert put.status_code == 201, put.text
    assert put.json()["version"] == 1
    listing = call(a, "GET", f"{via}/api/models")
    assert [m["name"] for m in listing.json()["models"]] == ["tiny"]
    infer = call(a, "POST", f"{via}/v2/models/tiny/infer", json={
        "inputs": [{"name": "input_0", "shape": [1, 4], "datatype": "FP32",
                    "data": [1, 2, 3, 4]}]})  # fmt: skip
    assert infer.status_code == 200, infer.text
    assert infer.headers["content-type"] == "application/json"
    assert len(infer.json()["outputs"][0]["data"]) == 3
    metrics = call(a, "GET", f"{via}/metrics")
    assert metrics.status_code == 200 and "edgewire_" in metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    download = call(a, "GET", f"{via}/api/models/tiny/versions/1/file")
    if download.status_code == 200:  # the route of agent/management.py, where it exists
        assert hashlib.sha256(download.content).hexdigest() == sha
    ready = call(a, "GET", f"{via}/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    missing = call(a, "GET", f"{via}/api/train/nope")
    assert missing.status_code == 404  # the other agent's answer, passed back
    wrong = call(a, "PUT", f"{via}/api/models/tiny", content=data, params={"sha256": "0" * 64})
    assert wrong.status_code in (400, 422) and wrong.json()["code"] in ("checksum", "model")


@pytest.mark.parametrize("path", [
    "api/agents", "api/agents/b/proxy/metrics", "api/%2E%2E/metrics", "api/x%2Fy",
    "api/x%2fy", "other/x", "openapi.json", "api//models", "v2/%2E/health/live",
])  # fmt: skip
def test_the_proxy_refuses_paths_off_its_list(
    two: tuple[RunningAgent, RunningAgent], path: str
) -> None:
    a, _ = two
    answer = call(a, "GET", f"/api/agents/b/proxy/{path}")
    assert answer.status_code == 400, (path, answer.text)
    one_line_error(answer, "config")


def test_a_dot_dot_path_sent_raw_is_refused(two: tuple[RunningAgent, RunningAgent]) -> None:
    a, _ = two
    with socket.create_connection(("127.0.0.1", a.http), timeout=10) as s:
        s.sendall(f"GET /api/agents/b/proxy/api/../../metrics HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {TOKEN_A}\r\nConnection: close\r\n\r\n".encode())  # fmt: skip
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n", 1)[0]
    assert b" 400 " in head or b" 404 " in head, reply[:300]


def test_an_unreachable_or_refusing_peer(two: tuple[RunningAgent, RunningAgent]) -> None:
    a, b = two
    dead = f"http://127.0.0.1:{free_port()}"
    assert (
        call(
            a, "POST", "/api/agents", json={"name": "dead", "url": dead, "token": "dead-token-1"}
        ).status_code
        == 201
    )
    assert call(a, "POST", "/api/agents", json={
        "name": "badtoken", "url": f"http://127.0.0.1:{b.http}", "token": "not-the-token"}
    ).status_code == 201  # fmt: skip
    try:
        answer = call(a, "GET", "/api/agents/dead/proxy/api/models")
        assert answer.status_code == 502
        assert "dead" in one_line_error(answer, "connect")
        assert "dead-token-1" not in answer.text
        refused = call(a, "GET", "/api/agents/badtoken/proxy/api/models")
        assert refused.status_code == 401 and refused.json()["code"] == "auth"  # b's answer
        assert "not-the-token" not in refused.text
        nobody = call(a, "GET", "/api/agents/nobody/proxy/api/models")
        assert nobody.status_code == 404 and nobody.json()["code"] == "agent_not_found"
        push = call(a, "POST", "/api/agents/badtoken/datasets", json={"workspace": "nowhere"})
        assert push.status_code == 404 and push.json()["code"] == "workspace_not_found"
    finally:
        call(a, "DELETE", "/api/agents/dead")
        call(a, "DELETE", "/api/agents/badtoken")


# --- push, train there, deploy ------------------------------------------------------------


def test_push_train_on_the_peer_through_the_proxy_and_deploy(
    two: tuple[RunningAgent, RunningAgent],
) -> None:
    a, b = two
    root = make_workspace(a, "digits")
    pushed = call(a, "POST", "/api/agents/b/datasets", json={"workspace": "digits"})
    assert pushed.status_code == 200, pushed.text
    body = pushed.json()
    assert set(body) == {"agent", "dataset", "files", "uploaded"}
    assert body["agent"] == "b" and body["files"] == 91 and body["uploaded"] == 91  # + labels
    again = call(a, "POST", "/api/agents/b/datasets", json={"workspace": "digits"}).json()
    assert again["dataset"] == body["dataset"] and again["uploaded"] == 0  # all there

    via = "/api/agents/b/proxy"
    started = call(
        a,
        "POST",
        f"{via}/api/train",
        json={"dataset": body["dataset"], "options": QUICK, "run_id": "peer-run"},
    )
    assert started.status_code == 202, started.text
    chunks: list[bytes] = []
    with httpx.stream(
        "GET",
        f"http://127.0.0.1:{a.http}{via}/api/train/peer-run/events",
        headers={"Authorization": f"Bearer {TOKEN_A}"},
        timeout=120,
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        chunks.extend(stream.iter_raw())
    seen = sse_events(b"".join(chunks).decode())
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "ready" and kinds[-1] == "summary", kinds
    assert len(chunks) > 2  # the events came as they happened, not in one piece
    assert wait_done(a, "peer-run", via=via)["state"] == "succeeded"

    # A run on this agent of the same split.
    async def push_here() -> str:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{a.http}", headers={"Authorization": f"Bearer {TOKEN_A}"}
        ) as client:
            return (await push_dataset(client, root / "dataset")).dataset

    local = asyncio.run(push_here())
    assert (
        call(
            a,
            "POST",
            "/api/train",
            json={"dataset": local, "options": QUICK, "run_id": "local-run"},
        ).status_code
        == 202
    )
    assert wait_done(a, "local-run")["state"] == "succeeded"

    order = {"workspace": "digits", "run": {"agent": None, "run_id": "local-run"},
             "model": "digits", "targets": [None, "b"], "min_accuracy": 0.0,
             "no_worse_than": 100.0}  # fmt: skip
    deployed = call(a, "POST", "/api/deploy", json=order)
    assert deployed.status_code == 200, deployed.text
    results = deployed.json()["results"]
    assert [r["agent"] for r in results] == [None, "b"]
    for r in results:
        assert r["ok"] is True and r["version"] == 1 and r["error"] is None, r["error"]
        gate = r["gate"]
        assert {k: gate[k] for k in ("samples", "min_accuracy", "no_worse_than", "passed")} == {
            "samples": 18, "min_accuracy": 0.0, "no_worse_than": 100.0, "passed": True}  # fmt: skip
        # The scores as the target measured them: a first version has nothing served before.
        assert 0.0 <= gate["accuracy"] <= 1.0 and gate["current_accuracy"] is None
    served = {m["name"]: m for m in call(b, "GET", "/api/models").json()["models"]}
    assert served["digits"]["serving"]["version"] == 1
    assert call(a, "GET", "/v2/models/digits/ready").status_code == 200

    # The peer's run, gated on a test split whose labels are shifted: it cannot score 100%.
    shifted = workspace_path(a.config, "shifted") / "dataset" / "test"
    for label, other in zip(CLASSES, CLASSES[1:] + CLASSES[:1], strict=True):
        (shifted / other).mkdir(parents=True)
        for image in (root / "dataset" / "test" / label).iterdir():
            (shifted / other / image.name).write_bytes(image.read_bytes())
    refused = call(a, "POST", "/api/deploy", json={
        **order, "workspace": "shifted", "run": {"agent": "b", "run_id": "peer-run"},
        "targets": [None, "b", "nobody"], "min_accuracy": 1.0, "no_worse_than": None,
    })  # fmt: skip
    assert refused.status_code == 200, refused.text
    here, there, nobody = refused.json()["results"]
    for r in (here, there):
        assert r["ok"] is False and r["version"] is None, r
        assert "gate refused" in r["error"] and "\n" not in r["error"]
        gate = r["gate"]
        assert {k: gate[k] for k in ("samples", "min_accuracy", "no_worse_than", "passed")} == {
            "samples": 18, "min_accuracy": 1.0, "no_worse_than": None, "passed": False}  # fmt: skip
        # Both scores on the same samples: the candidate's and the served version 1's.
        assert gate["accuracy"] < 1.0 and gate["current_accuracy"] is not None
    assert "agent 'b'" in there["error"] and TOKEN_B not in refused.text
    assert nobody["ok"] is False and "nobody" in nobody["error"] and nobody["gate"] is None
    served = {m["name"]: m for m in call(b, "GET", "/api/models").json()["models"]}
    assert served["digits"]["serving"]["version"] == 1  # the refused one does not serve
    assert list((a.config.data_dir / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    "change",
    [
        {"min_accuracy": 1.01},
        {"no_worse_than": -1},
        {"min_accuracy": True},
        {"targets": []},
        {"targets": [None, None]},
        {"model": "../x"},
        {"run": {"agent": None}},
        {"run": {"agent": None, "run_id": "no-such-run"}},
        {"extra": 1},
    ],
)
def test_bad_deploys_are_refused_before_anything_moves(
    two: tuple[RunningAgent, RunningAgent], change: dict[str, Any]
) -> None:
    a, _ = two
    root = workspace_path(a.config, "tiny-ws")
    if not root.exists():
        (root / "dataset" / "test" / "0").mkdir(parents=True)
    order = {"workspace": "tiny-ws", "run": {"agent": None, "run_id": "x"}, "model": "m",
             "targets": [None], "min_accuracy": None, "no_worse_than": None, **change}  # fmt: skip
    answer = call(a, "POST", "/api/deploy", json=order)
    assert answer.status_code == 400, answer.text
    one_line_error(answer, "config")
    missing = call(a, "POST", "/api/deploy", json={**order, "workspace": "absent"})
    assert missing.status_code in (400, 404)


class _Page(BaseHTTPRequestHandler):
    """An agent gone bad: it answers a page with a script, and echoes what it was sent."""

    def do_POST(self) -> None:
        seen = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer("application/json", seen)

    def do_GET(self) -> None:
        self._answer("text/html", b"<script>alert(document.domain)</script>")

    def _answer(self, media: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_another_agents_answer_cannot_be_a_page_of_this_origin(
    two: tuple[RunningAgent, RunningAgent],
) -> None:
    a, _ = two
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    assert call(a, "POST", "/api/agents", json={"name": "bad", "url": url,
                                               "token": "bad-token-1"}).status_code == 201  # fmt: skip
    try:
        page = call(a, "GET", "/api/agents/bad/proxy/api/x")
        assert page.status_code == 200
        assert page.headers["content-type"] == "application/octet-stream"  # not text/html
        assert page.headers["content-disposition"] == "attachment"
        assert "sandbox" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        # The dashboard's CSRF token is this agent's: it does not go on to another one.
        echoed = call(a, "POST", "/api/agents/bad/proxy/api/x", content=b"{}", headers={
            "X-Edgewire-CSRF": "this-agents-secret", "X-Edgewire-Sha256": "ab" * 32,
            "Content-Type": "application/json"}).json()  # fmt: skip
        assert "x-edgewire-csrf" not in echoed and echoed["x-edgewire-sha256"] == "ab" * 32
        assert echoed["authorization"] == "Bearer bad-token-1"
    finally:
        call(a, "DELETE", "/api/agents/bad")
        server.shutdown()
        server.server_close()
        thread.join(5)
