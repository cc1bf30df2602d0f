"""Gated deploys on a real agent: PUT /api/gate-data, then an upload that names it is
scored (against the served version too) before its alias moves; a worse one is refused."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.agent.gate_models import dark_bright, gate_npz, npz, zero_bomb
from tests.helpers import RunningAgent, agent_in_thread

TOKEN = "gate-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    with agent_in_thread(tmp_path / "data", token=TOKEN) as running:
        yield running


def _url(agent: RunningAgent, path: str) -> str:
    return f"http://127.0.0.1:{agent.http}{path}"


def _send_gate(agent: RunningAgent, body: bytes, *, sha: str | None = None) -> httpx.Response:
    digest = sha or hashlib.sha256(body).hexdigest()
    return httpx.put(_url(agent, "/api/gate-data"), params={"sha256": digest}, content=body,
                     headers=AUTH, timeout=30)  # fmt: skip


def _deploy(agent: RunningAgent, model: Path, **params: str) -> httpx.Response:
    data = model.read_bytes()
    query = {"sha256": hashlib.sha256(data).hexdigest(), "filename": model.name, **params}
    return httpx.put(_url(agent, "/api/models/db"), params=query, content=data, headers=AUTH,
                     timeout=60)  # fmt: skip


def _gated(
    agent: RunningAgent, model: Path, body: bytes | None = None, **params: str
) -> httpx.Response:
    sent = _send_gate(agent, body or gate_npz())
    assert sent.status_code == 201, sent.text
    return _deploy(agent, model, gate=sent.json()["gate"], **params)


def _versions(agent: RunningAgent) -> list[int]:
    listing = httpx.get(_url(agent, "/api/models"), headers=AUTH, timeout=10).json()
    return [v["version"] for m in listing["models"] for v in m["versions"]]


def test_a_worse_version_is_refused_with_both_accuracies_and_kept_unserved(
    agent: RunningAgent, tmp_path: Path
) -> None:
    good, bad = dark_bright(tmp_path / "good.onnx"), dark_bright(tmp_path / "bad.onnx", good=False)
    first = _gated(agent, good, min_accuracy="0.9")
    assert first.status_code == 201, first.text
    refused = _gated(agent, bad)
    assert refused.status_code == 422
    error = refused.json()
    assert error["code"] == "gate_refused"
    assert error["error"] == (
        "gate refused db: version 2 scored 50.0%, the served version 1 100.0% on 12 samples, "
        "more than 0 points worse; stored as version 2, not served"
    )
    assert agent.agent.serving.served_version("db") == 1
    assert _versions(agent) == [1, 2]
    # 50 points worse is allowed when the user says so.
    allowed = _gated(agent, bad, no_worse_than="50")
    assert allowed.status_code == 201 and allowed.json()["active"], allowed.text
    assert agent.agent.serving.served_version("db") == 3
    # The gate file went with the upload that used it.
    assert not list((agent.config.data_dir / "gate").iterdir())


def test_min_accuracy_without_a_served_version(agent: RunningAgent, tmp_path: Path) -> None:
    bad = dark_bright(tmp_path / "bad.onnx", good=False)
    refused = _gated(agent, bad, min_accuracy="0.75")
    assert refused.status_code == 422
    assert "version 1 scored 50.0% on 12 samples, under --min-accuracy 0.75" in refused.text
    assert agent.agent.serving.served_version("db") is None


def test_classes_are_matched_by_name_and_an_unknown_one_changes_nothing(
    agent: RunningAgent, tmp_path: Path
) -> None:
    good = dark_bright(tmp_path / "good.onnx")
    # The data's classes sort bright, dark; the model's labels are dark, bright: 100 %.
    assert _gated(agent, good, min_accuracy="1").status_code == 201
    # The same scores under the other labels are wrong on every sample.
    mislabeled = dark_bright(tmp_path / "mislabeled.onnx", labels=("bright", "dark"))
    refused = _gated(agent, mislabeled, no_worse_than="99")
    assert refused.status_code == 422 and "version 2 scored 0.0%" in refused.text
    odd = gate_npz(classes=("bright", "purple"))
    answer = _gated(agent, good, odd)
    assert answer.status_code == 400
    assert (
        "gate class 'purple' is not one model 'db' version 3 knows (its labels: dark, bright)"
        in answer.text
    )
    assert _versions(agent) == [1, 2]  # the bad gate data left nothing behind


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"gate": "ab" * 32}, "no gate data abababababab"),
        ({"gate": "nothex"}, "gate must be the sha256"),
        ({"gate": "ab" * 32, "min_accuracy": "2"}, "min_accuracy must be a number in 0..1"),
        ({"min_accuracy": "0.5"}, "need gate=<sha256"),
        ({"no_worse_than": "nan"}, "no_worse_than must be a number in 0..100"),
    ],
)
def test_bad_gate_parameters_are_400_and_store_nothing(
    agent: RunningAgent, tmp_path: Path, params: dict[str, str], message: str
) -> None:
    answer = _deploy(agent, dark_bright(tmp_path / "good.onnx"), **params)
    assert answer.status_code == 400 and message in answer.text, answer.text
    assert _versions(agent) == []


def test_gate_data_upload_is_guarded_checked_and_never_unpickled(agent: RunningAgent) -> None:
    body = gate_npz()
    digest = hashlib.sha256(body).hexdigest()
    assert httpx.put(_url(agent, "/api/gate-data"), params={"sha256": digest}, content=body,
                     timeout=10).status_code == 401  # fmt: skip
    assert _send_gate(agent, body, sha="00" * 32).status_code == 400
    assert _send_gate(agent, body, sha="xyz").status_code == 400
    pickled = io.BytesIO()
    np.savez(pickled, x=np.array([object()], dtype=object), y=np.zeros(1, np.int64),
             classes=np.array(["a"]))  # fmt: skip
    assert _send_gate(agent, pickled.getvalue()).status_code == 201  # stored as bytes only
    model = Path(agent.config.data_dir).parent / "good.onnx"
    dark_bright(model)
    sent = hashlib.sha256(pickled.getvalue()).hexdigest()
    answer = _deploy(agent, model, gate=sent)
    assert answer.status_code == 400 and "without pickles" in answer.text, answer.text
    garbage = _deploy(agent, model, gate=_send_gate(agent, b"not a zip").json()["gate"])
    assert garbage.status_code == 400 and "not a readable .npz" in garbage.text
    assert _versions(agent) == []


def test_a_zip_bomb_is_refused_from_its_headers_without_unpacking(
    agent: RunningAgent, tmp_path: Path
) -> None:
    good = dark_bright(tmp_path / "good.onnx")
    assert _deploy(agent, good).status_code == 201
    bomb = zero_bomb()  # 2 GiB of zeros declared, a few MiB sent
    assert len(bomb) < 16 << 20
    tracemalloc.start()
    try:
        answer = _gated(agent, good, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == (
        "gate data unpacks to 2049 MiB, over the 256 MiB limit; send fewer samples"
    )
    assert peak < 256 << 20  # the 2 GiB was never allocated
    assert _versions(agent) == [1] and agent.agent.serving.served_version("db") == 1


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 2, 4, 4), np.uint8)}, "must be 1 or 3 channels of at most 1024×1024"),
        (
            {"x": np.zeros((1, 1, 1025, 1), np.uint8), "y": np.zeros(1, np.int64)},
            "got [1, 1025, 1]",
        ),
        (
            {"x": np.zeros((20_001, 1, 1, 1), np.uint8), "y": np.zeros(20_001, np.int64)},
            "has 20001 samples; send 1..20000",
        ),
        ({"x": np.zeros((2, 1, 4, 4), np.float32)}, "must be uint8 x N×C×H×W"),
        ({"y": np.zeros(2, np.int64)[None]}, "and int64 y of N"),
        ({"classes": np.array([1, 2])}, "classes must be a list of names"),
    ],
)
def test_gate_headers_are_checked_before_loading(
    agent: RunningAgent,
    tmp_path: Path,
    arrays: dict[str, np.ndarray],
    message: str,
) -> None:
    base: dict[str, np.ndarray] = {
        "x": np.zeros((2, 1, 4, 4), np.uint8),
        "y": np.zeros(2, np.int64),
        "classes": np.array(["dark", "bright"]),
    }
    answer = _gated(agent, dark_bright(tmp_path / "good.onnx"), npz(**(base | arrays)))
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert _versions(agent) == []


def test_int32_labels_are_accepted(agent: RunningAgent, tmp_path: Path) -> None:
    body = npz(x=np.zeros((2, 1, 4, 4), np.uint8), y=np.ones(2, np.int32) * 0,
               classes=np.array(["dark", "bright"]))  # fmt: skip
    answer = _gated(agent, dark_bright(tmp_path / "good.onnx"), body, min_accuracy="1")
    assert answer.status_code == 201, answer.text


def test_a_refused_first_upload_is_not_served_after_a_restart(tmp_path: Path) -> None:
    bad = dark_bright(tmp_path / "bad.onnx", good=False)
    body = {"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 1, 4, 4],
                        "data": [0.0] * 16}]}  # fmt: skip
    with agent_in_thread(tmp_path / "data", token=TOKEN) as first:
        refused = _gated(first, bad, min_accuracy="0.75")
        assert refused.status_code == 422
        assert refused.json()["error"].endswith(
            "; version 1 deleted (with no 'production' alias a restart would serve it)"
        )
    with agent_in_thread(tmp_path / "data", token=TOKEN) as again:
        infer = httpx.post(_url(again, "/v2/models/db/infer"), json=body, timeout=10)
        assert infer.status_code == 404, infer.text
        assert _versions(again) == []
