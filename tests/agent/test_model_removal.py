"""Removing models over HTTP on a real agent: versions (with force), aliases, whole models,
and the prune of unused versions at start."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgewire.serve.store import ModelStore
from tests.helpers import RunningAgent, agent_in_thread, upload
from tests.serve.models import broken_model, expected, linear_model


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seed in (1, 2, 3):
        path = tmp_path / f"m{seed}.onnx"
        out[seed] = (path, *linear_model(path, in_features=784, out_features=10, seed=seed))
    bad = tmp_path / "bad.onnx"
    broken_model(bad)
    out["bad"] = bad
    return out


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    with agent_in_thread(tmp_path / "agent", max_queue_delay_ms=1.0) as running:
        yield running


def _api(agent: RunningAgent, path: str = "") -> str:
    return f"http://127.0.0.1:{agent.http}/api/models{path}"


def _listing(agent: RunningAgent) -> dict[str, Any]:
    models = httpx.get(_api(agent), timeout=30).json()["models"]
    return {m["name"]: m for m in models}


def _answer(agent: RunningAgent, model: str = "mnist") -> tuple[str, np.ndarray]:
    """(version that answered, output_0) of one KServe v2 inference of a row of ones."""
    body = {
        "inputs": [{"name": "input_0", "shape": [1, 784], "datatype": "FP32", "data": [1.0] * 784}]
    }
    response = httpx.post(
        f"http://127.0.0.1:{agent.http}/v2/models/{model}/infer", json=body, timeout=30
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    return doc["model_version"], np.array(doc["outputs"][0]["data"]).reshape(1, 10)


def _assert_serves(agent: RunningAgent, models: dict[str, Any], seed: int, version: int) -> None:
    got_version, out = _answer(agent)
    _, w, b = models[seed]
    assert got_version == str(version)
    np.testing.assert_allclose(out, expected(np.ones((1, 784)), w, b), atol=1e-5)


def test_force_delete_of_the_served_version_serves_the_next_one_first(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    assert upload(agent, models[1][0]).status_code == 201
    assert upload(agent, models[2][0]).status_code == 201  # production -> 2, served
    _assert_serves(agent, models, 2, 2)

    refused = httpx.delete(_api(agent, "/mnist/versions/2"), timeout=30)
    assert refused.status_code == 422 and refused.json()["code"] == "model", refused.text
    assert "being served" in refused.json()["error"]

    done = httpx.delete(_api(agent, "/mnist/versions/2"), params={"force": "1"}, timeout=30)
    assert done.status_code == 200, done.text
    assert done.json() == {"name": "mnist", "deleted": 2, "serving": 1}
    _assert_serves(agent, models, 1, 1)
    listing = _listing(agent)["mnist"]
    assert [v["version"] for v in listing["versions"]] == [1]
    assert listing["aliases"] == {} and listing["serving"]["version"] == 1

    # The last version: the whole model is the thing to delete, and it still serves.
    last = httpx.delete(_api(agent, "/mnist/versions/1"), params={"force": "1"}, timeout=30)
    assert last.status_code == 422 and "delete the whole model" in last.json()["error"]
    _assert_serves(agent, models, 1, 1)


def test_force_delete_refused_when_the_next_version_does_not_load(
    agent: RunningAgent, models: dict[str, Any]
) -> None:
    assert upload(agent, models[1][0]).status_code == 201
    stored = upload(agent, models["bad"], activate="0")  # stored, never loaded
    assert stored.status_code == 201 and stored.json()["version"] == 2
    refused = httpx.delete(_api(agent, "/mnist/versions/1"), params={"force": "1"}, timeout=60)
    assert refused.status_code == 422, refused.text
    assert "does not load" in refused.json()["error"]
    assert "nothing was deleted" in refused.json()["error"]
    _assert_serves(agent, models, 1, 1)
    assert _listing(agent)["mnist"]["aliases"] == {"production": 1}

    # A version that is not served goes without force once no alias points at it.
    assert httpx.delete(_api(agent, "/mnist/versions/2"), timeout=30).status_code == 200
    assert [v["version"] for v in _listing(agent)["mnist"]["versions"]] == [1]


def test_alias_removal(agent: RunningAgent, models: dict[str, Any]) -> None:
    assert upload(agent, models[1][0], alias="staging").status_code == 201
    assert upload(agent, models[2][0]).status_code == 201  # production -> 2, served
    assert upload(agent, models[3][0], activate="0").status_code == 201

    gone = httpx.delete(_api(agent, "/mnist/aliases/staging"), timeout=30)
    assert gone.status_code == 200 and gone.json() == {
        "name": "mnist",
        "alias": "staging",
        "was": 1,
    }
    # Without production a restart would serve version 3, not the served 2: refused.
    refused = httpx.delete(_api(agent, "/mnist/aliases/production"), timeout=30)
    assert refused.status_code == 422 and "restart would serve version 3" in refused.text
    missing = httpx.delete(_api(agent, "/mnist/aliases/beta"), timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
    assert _listing(agent)["mnist"]["aliases"] == {"production": 2}
    _assert_serves(agent, models, 2, 2)

    # Once 3 is gone, the restart would serve 2 anyway: production may go.
    assert httpx.delete(_api(agent, "/mnist/versions/3"), timeout=30).status_code == 200
    assert httpx.delete(_api(agent, "/mnist/aliases/production"), timeout=30).status_code == 200
    assert _listing(agent)["mnist"]["aliases"] == {}
    _assert_serves(agent, models, 2, 2)


def test_delete_model_unloads_and_removes_it(
    agent: RunningAgent, models: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edgewire")
    assert upload(agent, models[1][0]).status_code == 201
    assert upload(agent, models[2][0]).status_code == 201
    assert upload(agent, models[1][0], name="other").status_code == 201

    done = httpx.delete(_api(agent, "/mnist"), timeout=30)
    assert done.status_code == 200 and done.json() == {"name": "mnist", "deleted": [1, 2]}
    assert list(_listing(agent)) == ["other"]
    gone = httpx.get(f"http://127.0.0.1:{agent.http}/v2/models/mnist/ready", timeout=30)
    assert gone.status_code == 404
    assert _answer(agent, "other")[0] == "1"
    again = httpx.delete(_api(agent, "/mnist"), timeout=30)
    assert again.status_code == 404 and again.json()["code"] == "model_not_found"
    # Stored again, it takes new numbers: a client's cached "version 1" never means it.
    assert upload(agent, models[3][0]).json()["version"] == 3
    _assert_serves(agent, models, 3, 3)

    messages = [r.getMessage() for r in caplog.records if r.name.startswith("edgewire")]
    assert sum(m.startswith("deployed mnist version") for m in messages) == 3
    assert "deleted model mnist (versions 1, 2)" in messages


def test_removal_needs_the_token(tmp_path: Path, models: dict[str, Any]) -> None:
    with agent_in_thread(tmp_path / "agent", token="correct-horse-battery") as agent:
        auth = {"Authorization": "Bearer correct-horse-battery"}
        url = f"http://127.0.0.1:{agent.http}/api/models/mnist"
        data = models[1][0].read_bytes()
        assert httpx.put(url, content=data, headers=auth, timeout=30).status_code == 201
        for path in ("/versions/1?force=1", "/aliases/production", ""):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                answer = httpx.delete(url + path, headers=headers, timeout=30)
                assert answer.status_code == 401, (path, answer.text)
        assert httpx.delete(url, headers=auth, timeout=30).status_code == 200


def test_bad_version_and_force_values_are_400(agent: RunningAgent, models: dict[str, Any]) -> None:
    assert upload(agent, models[1][0]).status_code == 201
    for path, params in (("/mnist/versions/x1", {}), ("/mnist/versions/1", {"force": "maybe"})):
        answer = httpx.delete(_api(agent, path), params=params, timeout=30)
        assert answer.status_code == 400 and answer.json()["code"] == "config", answer.text
    _assert_serves(agent, models, 1, 1)


def test_unused_versions_are_pruned_at_start(tmp_path: Path, models: dict[str, Any]) -> None:
    data_dir = tmp_path / "agent"
    store = ModelStore(data_dir / "models")
    for seed in (1, 2, 3):
        store.add("mnist", models[seed][0])
    store.set_alias("mnist", "production", 2)
    store.set_alias("mnist", "production", 1)  # 2 released
    (store.root / "mnist" / "versions" / "9").mkdir()  # a half version a crash left
    store.add("solo", models[1][0])  # no alias: what a restart serves, so it stays
    time.sleep(0.2)
    with agent_in_thread(data_dir, unused_version_ttl_s=0.1) as agent:
        listing = _listing(agent)
        assert [v["version"] for v in listing["mnist"]["versions"]] == [1]
        assert listing["mnist"]["serving"]["version"] == 1
        assert [v["version"] for v in listing["solo"]["versions"]] == [1]
        assert listing["solo"]["serving"]["version"] == 1
    assert sorted(p.name for p in (store.root / "mnist" / "versions").iterdir()) == ["1"]
