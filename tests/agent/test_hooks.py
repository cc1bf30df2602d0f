"""Automation on a real agent: signed webhooks -> durable jobs -> a source -> deploy or
retrain (gated) -> the new model answers; polling; SIGKILL of the agent mid-job."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgewire.automation.config import SourceKind, load_automation
from edgewire.automation.jobs import JobQueue, JobState
from edgewire.automation.rules import CollectionKind
from edgewire.automation.signatures import HookKind
from edgewire.bench.spawn import SpawnedAgent
from edgewire.config import AgentConfig, load_config
from edgewire.data.datasets import Dataset, load_dataset
from edgewire.errors import ConfigError
from tests.helpers import RunningAgent, agent_in_thread, automation_toml, upload
from tests.serve.models import expected, linear_model

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "mgmt-token-123"
SECRET = "wandb-signing-secret"
OLD_SECRET = "the-secret-before-rotation"
ENV = {"HOOK_SECRET": SECRET, "HOOK_SECRET_OLD": OLD_SECRET}

CONFIG = """
[agent]
drain_timeout = 5

[automation]
max_attempts = 2
lease_s = {lease_s}
retry_base_s = 0.2
retry_cap_s = 0.5

[automation.source]
kind = "local"
root = "{root}"

[automation.allow]
entities = ["acme"]
projects = ["edge"]
collections = ["mnist", "digits"]

[[automation.hooks]]
name = "wandb"
kind = "wandb"
secret_env = ["HOOK_SECRET_OLD", "HOOK_SECRET"]
max_body_bytes = 4096
rate_per_s = 100
burst = 100

[[automation.hooks]]
name = "gh"
kind = "github"
secrets = ["gh-secret"]
rate_per_s = 100
burst = 100

[[automation.hooks]]
name = "limited"
kind = "github"
secrets = ["gh-secret"]
rate_per_s = 0.01
burst = 2

[[automation.rules]]
entity = "acme"
project = "edge"
collection = "mnist"
kind = "model"
model = "mnist"

[[automation.rules]]
entity = "acme"
project = "edge"
collection = "digits"
kind = "data"
model = "digits"
arch = "lenet5"
epochs = {epochs}
"""


def write_config(
    tmp: Path, root: Path, *, lease_s: float = 5, epochs: int = 5, extra: str = ""
) -> Path:
    path = tmp / "edgewire.toml"
    path.write_text(CONFIG.format(root=root, lease_s=lease_s, epochs=epochs) + extra)
    return path


def agent_config(path: Path, data_dir: Path) -> AgentConfig:
    flags = {"host": "127.0.0.1", "port": 0, "http_port": 0, "data_dir": data_dir}
    return load_config(AgentConfig, flags=flags, config_file=path, environ=ENV)


def point(alias: Path, target: str) -> None:
    """Move an alias of the local source (a symlink to a version folder)."""
    if alias.is_symlink():
        alias.unlink()
    alias.symlink_to(target)


def wandb_body(collection: str = "mnist", alias: str = "download", **extra: Any) -> bytes:
    """A body as a W&B automation's template renders it (the seed's shape)."""
    payload = {"artifact_collection_name": collection,
               "artifact_version_string": f"acme/edge/{collection}:{alias}", **extra}  # fmt: skip
    return json.dumps({"event_type": "ADD_ARTIFACT_ALIAS", "client_payload": payload}).encode()


def wandb_signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"Content-Type": "application/json", "X-Wandb-Signature": base64.b64encode(mac).decode()}


def gh_signed(body: bytes, delivery: str) -> dict[str, str]:
    mac = hmac.new(b"gh-secret", body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={mac}", "X-GitHub-Delivery": delivery}


def post(port: int, hook: str, body: bytes, headers: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"http://127.0.0.1:{port}/hooks/{hook}", content=body, headers=headers, timeout=10
    )


def api(port: int, path: str, token: str | None = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def settle(port: int, *, token: str | None = TOKEN, within: float = 60.0) -> list[dict[str, Any]]:
    """The jobs once none is queued or running."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = api(port, "/api/jobs?limit=500", token)
        if body["counts"]["queued"] + body["counts"]["running"] == 0:
            return list(body["jobs"])
        time.sleep(0.05)
    raise AssertionError(f"jobs did not settle: {body}")


def wait_for(check: Callable[[], Any], *, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def infer(port: int, name: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input_0", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"http://127.0.0.1:{port}/v2/models/{name}/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])


def served_version(port: int, name: str) -> int | None:
    for model in api(port, "/api/models")["models"]:
        if model["name"] == name and model["serving"]:
            return int(model["serving"]["version"])
    return None


# -- a model collection: hook -> job -> source -> deploy -> the new model answers --------


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    for version, seed in (("v1", 1), ("v2", 2)):
        folder = root / "acme/edge/mnist" / version
        folder.mkdir(parents=True)
        linear_model(folder / "model.onnx", seed=seed)
        (folder / "labels.txt").write_text("\n".join(map(str, range(10))))
    point(root / "acme/edge/mnist/download", "v1")
    return root


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Iterator[RunningAgent]:
    tmp = tmp_path_factory.mktemp("agent")
    cfg = agent_config(write_config(tmp, source), tmp / "data")
    assert cfg.automation is not None
    with agent_in_thread(tmp / "data", token=TOKEN, automation=cfg.automation) as agent:
        yield agent


def test_a_wandb_delivery_deploys_the_model_and_it_answers(
    running: RunningAgent, source: Path
) -> None:
    port = running.http
    body = wandb_body()
    started = time.monotonic()
    response = post(port, "wandb", body, wandb_signed(body))
    assert time.monotonic() - started < 1.0  # answered at once: the work runs in the queue
    assert response.status_code == 202, response.text
    resolve_id = response.json()["job"]
    jobs = settle(port)
    resolve = api(port, f"/api/jobs/{resolve_id}")
    assert resolve["state"] == "succeeded" and resolve["kind"] == "resolve"
    deploy = api(port, f"/api/jobs/{resolve['result']['job']}")
    assert deploy["kind"] == "deploy" and deploy["state"] == "succeeded", deploy
    assert deploy["result"]["deployed"] is True and "deployed mnist version 1" in deploy["log_tail"]
    assert {j["id"] for j in jobs} >= {resolve_id, deploy["id"]}
    x = np.random.default_rng(0).random((2, 784), dtype=np.float32)
    w, b = linear_model(source / "scratch.onnx", seed=1)
    np.testing.assert_allclose(infer(port, "mnist", x), expected(x, w, b), atol=1e-5)

    # W&B sends no delivery id: the same delivery again is a new hint, but the version is
    # acted on once. The old secret still signs (rotation).
    again = post(port, "wandb", body, wandb_signed(body, OLD_SECRET))
    assert again.status_code == 202
    jobs = settle(port)
    assert [j["kind"] for j in jobs].count("deploy") == 1
    assert served_version(port, "mnist") == 1

    point(source / "acme/edge/mnist/download", "v2")  # the alias moved: a new version
    assert post(port, "wandb", body, wandb_signed(body)).status_code == 202
    jobs = settle(port)
    assert [j["kind"] for j in jobs].count("deploy") == 2
    assert served_version(port, "mnist") == 2
    w2, b2 = linear_model(source / "scratch.onnx", seed=2)
    np.testing.assert_allclose(infer(port, "mnist", x), expected(x, w2, b2), atol=1e-5)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'edgewire_hook_deliveries_total{hook="wandb",outcome="accepted"} 3.0' in metrics
    assert 'edgewire_job_attempts_total{kind="deploy",outcome="succeeded"} 2.0' in metrics
    assert 'edgewire_jobs{state="succeeded"}' in metrics


def test_a_delivery_with_an_id_is_queued_once(running: RunningAgent) -> None:
    body = json.dumps({"event_type": "LINK_ARTIFACT", "client_payload": {
        "artifact_version_string": "acme/edge/mnist:download", "alias": "download"}}).encode()  # fmt: skip
    first = post(running.http, "gh", body, gh_signed(body, "delivery-1"))
    second = post(running.http, "gh", body, gh_signed(body, "delivery-1"))
    assert first.status_code == 202 and second.status_code == 200
    assert second.json() == {"job": first.json()["job"], "status": "duplicate"}
    settle(running.http)


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=zz", "!!!not-base64!!!", "c2hvcnQ=", b"\xff\xfe\xfd", "sha256=" + "0" * 64],
)
def test_a_missing_empty_garbled_or_wrong_signature_is_401(
    running: RunningAgent, signature: str | bytes | None
) -> None:
    body = wandb_body()
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Wandb-Signature"] = signature
    before = api(running.http, "/api/jobs")["jobs"]
    response = post(running.http, "wandb", body, headers)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "signature"
    assert SECRET not in response.text and OLD_SECRET not in response.text
    assert api(running.http, "/api/jobs")["jobs"] == before  # nothing was queued


def test_a_signature_of_other_bytes_is_401(running: RunningAgent) -> None:
    body = wandb_body()
    response = post(running.http, "wandb", body + b" ", wandb_signed(body))
    assert response.status_code == 401


URL_AS_NAME = {"client_payload": {"artifact_collection_name": "http://169.254.169.254/x",
                                  "artifact_version_string": "acme/edge/mnist:download"}}  # fmt: skip
UNKNOWN_FIELD = {"client_payload": {"artifact_version_string": "acme/edge/mnist:download",
                                    "surprise": 1}}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (wandb_body("secret-models"), 403, "not_allowed"),
        (wandb_body().replace(b"acme/", b"evil/"), 403, "not_allowed"),
        (json.dumps(URL_AS_NAME).encode(), 403, "not_allowed"),
        (b'{"client_payload": ', 400, "protocol"),
        (json.dumps(UNKNOWN_FIELD).encode(), 400, "protocol"),
    ],
)
def test_signed_but_refused_deliveries(
    running: RunningAgent, body: bytes, status: int, code: str
) -> None:
    response = post(running.http, "wandb", body, wandb_signed(body))
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert str(running.config.data_dir) not in response.text


def test_an_alias_no_rule_names_is_ignored(running: RunningAgent) -> None:
    body = wandb_body(alias="staging")
    response = post(running.http, "wandb", body, wandb_signed(body))
    assert response.status_code == 200 and response.json() == {"job": None, "status": "ignored"}


def test_a_body_over_the_cap_is_413_before_it_is_read(running: RunningAgent) -> None:
    body = wandb_body(artifact_metadata={"pad": "x" * 5000})
    response = post(running.http, "wandb", body, wandb_signed(body))
    assert response.status_code == 413 and response.json()["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off as it arrives
        for _ in range(100):
            yield b"x" * 1024

    chunked = httpx.post(f"http://127.0.0.1:{running.http}/hooks/wandb", content=chunks(),
                         headers=wandb_signed(b""), timeout=10)  # fmt: skip
    assert chunked.status_code == 413


def test_past_the_rate_limit_is_429(running: RunningAgent) -> None:
    body = wandb_body(alias="staging")
    answers = [post(running.http, "limited", body, gh_signed(body, f"r-{n}")) for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert (
        answers[2].json()["code"] == "rate_limited" and int(answers[2].headers["retry-after"]) >= 1
    )


def test_unknown_hooks_are_404_and_the_jobs_api_needs_the_token(running: RunningAgent) -> None:
    body = wandb_body()
    assert post(running.http, "nope", body, wandb_signed(body)).status_code == 404
    base = f"http://127.0.0.1:{running.http}"
    assert httpx.get(f"{base}/api/jobs").status_code == 401
    assert (
        httpx.get(f"{base}/api/jobs", headers={"Authorization": "Bearer wrong-token"}).status_code
        == 401
    )
    missing = httpx.get(f"{base}/api/jobs/999999", headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == 404 and missing.json()["code"] == "job_not_found"
    metrics = httpx.get(f"{base}/metrics").text
    assert re.search(
        r'edgewire_hook_deliveries_total\{hook="wandb",outcome="signature"\} [1-9]', metrics
    )


# -- a data collection: retrain on the agent, deploy only if no worse ----------------------


def export(data: Dataset, path: Path, *, epochs: int) -> None:
    from edgewire.train.local import train_local
    from edgewire.train.stream_client import spec_for
    from edgewire.train.trainer import Trainer, TrainSpec

    trainer = Trainer(TrainSpec.from_dict(spec_for(data, model="lenet5")))
    train_local(trainer, data, None, epochs=epochs, batch_size=32)
    trainer.export_onnx(path)


def save_npz(path: Path, data: Dataset) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=data.x, y=data.y)


def test_a_data_delivery_retrains_and_the_gate_keeps_the_better_model(tmp_path: Path) -> None:
    digits = load_dataset("digits")
    root = tmp_path / "artifacts"
    save_npz(root / "acme/edge/digits/full/data.npz", digits)
    save_npz(root / "acme/edge/digits/tiny/data.npz", digits.subset(60))
    point(root / "acme/edge/digits/download", "full")
    poor = tmp_path / "poor.onnx"
    export(digits.subset(40), poor, epochs=1)
    cfg = agent_config(write_config(tmp_path, root), tmp_path / "data")
    with agent_in_thread(tmp_path / "data", automation=cfg.automation) as agent:
        port = agent.http
        assert upload(agent, poor, "digits").status_code == 201
        body = wandb_body("digits")
        assert post(port, "wandb", body, wandb_signed(body)).status_code == 202
        jobs = settle(port, token=None)
        retrain = api(port, f"/api/jobs/{jobs[0]['id']}", None)
        assert retrain["kind"] == "retrain_then_deploy" and retrain["state"] == "succeeded", retrain
        result = retrain["result"]
        assert result["deployed"] is True and result["version"] == 2
        assert result["new_accuracy"] >= result["current_accuracy"]
        assert "held-out accuracy (359 samples): new" in retrain["log_tail"]
        assert served_version(port, "digits") == 2
        x = digits.x[:4].astype(np.float32) / 255
        assert infer(port, "digits", x).shape == (4, 10)

        # Tiny data: the new model is worse than the one serving, and is not deployed.
        point(root / "acme/edge/digits/download", "tiny")
        assert post(port, "wandb", body, wandb_signed(body)).status_code == 202
        jobs = settle(port, token=None)
        refused = api(port, f"/api/jobs/{jobs[0]['id']}", None)
        assert refused["state"] == "succeeded" and refused["result"]["deployed"] is False, refused
        assert refused["result"]["new_accuracy"] < refused["result"]["current_accuracy"]
        assert "not deployed: the new model is worse" in refused["log_tail"]
        assert served_version(port, "digits") == 2
        assert str(tmp_path) not in json.dumps(api(port, "/api/jobs?limit=500", None))


def test_a_data_delivery_can_train_on_a_training_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train_on`: the data goes to another agent over the native protocol (with its token,
    read from the variable the rule names), the model comes back in the run's summary, and
    the gate and the deploy happen here as for a local retrain."""
    digits = load_dataset("digits")
    root = tmp_path / "artifacts"
    save_npz(root / "acme/edge/digits/full/data.npz", digits)
    point(root / "acme/edge/digits/download", "full")
    monkeypatch.setenv("EDGEWIRE_TRAINER_TOKEN", "trainer-token-123")
    with agent_in_thread(tmp_path / "trainer", token="trainer-token-123") as trainer:
        extra = (f'train_on = "127.0.0.1:{trainer.native}"\n'
                 'train_token_env = "EDGEWIRE_TRAINER_TOKEN"\n')  # fmt: skip
        cfg = agent_config(write_config(tmp_path, root, epochs=2, extra=extra), tmp_path / "data")
        with agent_in_thread(tmp_path / "data", automation=cfg.automation) as agent:
            body = wandb_body("digits")
            assert post(agent.http, "wandb", body, wandb_signed(body)).status_code == 202
            jobs = settle(agent.http, token=None)
            job = api(agent.http, f"/api/jobs/{jobs[0]['id']}", None)
            assert job["state"] == "succeeded", job
            assert job["result"]["deployed"] is True
            assert job["result"]["trained_at"] == f"127.0.0.1:{trainer.native}"
            assert f"on 127.0.0.1:{trainer.native} (run auto-" in job["log_tail"]
            x = digits.x[:4].astype(np.float32) / 255
            assert infer(agent.http, "digits", x).shape == (4, 10)
        runs = list((tmp_path / "trainer" / "runs").glob("auto-*/model.onnx"))
        assert len(runs) == 1  # the training agent trained it, as one run
    monkeypatch.delenv("EDGEWIRE_TRAINER_TOKEN")
    cfg = agent_config(write_config(tmp_path, root, extra=extra), tmp_path / "data2")
    with agent_in_thread(tmp_path / "data2", automation=cfg.automation) as agent:
        body = wandb_body("digits")
        assert post(agent.http, "wandb", body, wandb_signed(body)).status_code == 202
        jobs = settle(agent.http, token=None)
        job = api(agent.http, f"/api/jobs/{jobs[0]['id']}", None)
        assert job["state"] == "failed" and "EDGEWIRE_TRAINER_TOKEN is not set" in job["error"]


def test_stopping_the_agent_halts_a_training_and_gives_the_job_back(tmp_path: Path) -> None:
    digits = load_dataset("digits")
    root = tmp_path / "artifacts"
    save_npz(root / "acme/edge/digits/v1/data.npz", digits)
    point(root / "acme/edge/digits/download", "v1")
    cfg = agent_config(write_config(tmp_path, root, epochs=500), tmp_path / "data")
    with agent_in_thread(tmp_path / "data", automation=cfg.automation) as agent:
        body = wandb_body("digits")
        assert post(agent.http, "wandb", body, wandb_signed(body)).status_code == 202

        def training() -> int | None:
            for job in api(agent.http, "/api/jobs", None)["jobs"]:
                running = job["kind"] == "retrain_then_deploy" and job["state"] == "running"
                if (
                    running
                    and "epoch 1/" in api(agent.http, f"/api/jobs/{job['id']}", None)["log_tail"]
                ):
                    return int(job["id"])
            return None

        job_id = wait_for(training)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5  # halted at its next batch, not after 500 epochs
    queue = JobQueue(tmp_path / "data" / "automation")
    try:
        job = queue.get(job_id)
        assert job is not None and job.state is JobState.QUEUED and "interrupted" in str(job.error)
    finally:
        queue.close()


# -- polling, for devices behind NAT -------------------------------------------------------


def test_polling_notices_a_moved_alias_and_acts_once_per_version(
    tmp_path: Path, source: Path
) -> None:
    root = tmp_path / "artifacts"
    for version in ("v1", "v2"):
        (root / "acme/edge/mnist" / version).mkdir(parents=True)
        (root / "acme/edge/mnist" / version / "model.onnx").write_bytes(
            (source / "acme/edge/mnist" / version / "model.onnx").read_bytes()
        )
    point(root / "acme/edge/mnist/download", "v1")
    poll = "\n[automation.poll]\ninterval_s = 0.1\njitter = 0.1\nmax_backoff_s = 1\n"
    cfg = agent_config(write_config(tmp_path, root, extra=poll), tmp_path / "data")
    with agent_in_thread(tmp_path / "data", automation=cfg.automation) as agent:
        wait_for(lambda: served_version(agent.http, "mnist") == 1)
        time.sleep(0.5)  # several more polls of the same version
        point(root / "acme/edge/mnist/download", "v2")
        wait_for(lambda: served_version(agent.http, "mnist") == 2)
        time.sleep(0.3)
        jobs = settle(agent.http, token=None)
        assert [(j["kind"], j["state"]) for j in jobs] == [("deploy", "succeeded")] * 2
        # The data collection's alias is not there: its polls fail and back off, quietly.
        metrics = httpx.get(f"http://127.0.0.1:{agent.http}/metrics").text
        assert 'edgewire_job_attempts_total{kind="deploy",outcome="succeeded"} 2.0' in metrics


# -- SIGKILL mid-job -----------------------------------------------------------------------


@pytest.mark.slow
def test_an_agent_killed_mid_retrain_resumes_the_job_once_after_a_restart(tmp_path: Path) -> None:
    digits = load_dataset("digits")
    root = tmp_path / "artifacts"
    save_npz(root / "acme/edge/digits/v1/data.npz", digits)
    point(root / "acme/edge/digits/download", "v1")
    config = write_config(tmp_path, root, lease_s=2, epochs=20)
    env = {**ENV, "PYTHONPATH": str(ROOT / "src")}
    data = tmp_path / "data"
    body = wandb_body("digits")
    with SpawnedAgent(data, "--config", str(config), env=env) as first:
        port = first.ports["http"]
        assert post(port, "wandb", body, wandb_signed(body)).status_code == 202

        def training() -> dict[str, Any] | None:
            for job in api(port, "/api/jobs", None)["jobs"]:
                if job["kind"] == "retrain_then_deploy" and job["state"] == "running":
                    detail = api(port, f"/api/jobs/{job['id']}", None)
                    if "epoch 2/" in detail["log_tail"]:
                        return detail
            return None

        job = wait_for(training, within=60)
        first.kill()  # SIGKILL, mid-epoch
    with SpawnedAgent(data, "--config", str(config), env=env) as second:
        port = second.ports["http"]
        jobs = settle(port, token=None, within=90)
        done = api(port, f"/api/jobs/{job['id']}", None)
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert "attempt 2 of 2" in done["log_tail"] and done["result"]["deployed"] is True
        assert [j["kind"] for j in jobs].count("retrain_then_deploy") == 1
        models = api(port, "/api/models", None)["models"]
        assert [(m["name"], len(m["versions"])) for m in models] == [("digits", 1)]
        assert second.proc.poll() is None


# -- the config ------------------------------------------------------------------------


def test_the_docs_example_loads(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "automation.md").read_text("utf-8")
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "edgewire.toml"
    path.write_text(example)
    env = {
        "EDGEWIRE_HOOK_WANDB_SECRET": "secret-one",
        "EDGEWIRE_HOOK_WANDB_SECRET_NEXT": "secret-two",
    }
    cfg = load_config(AgentConfig, flags={}, config_file=path, environ=env)
    auto = cfg.automation
    assert auto is not None and auto.source.kind is SourceKind.LOCAL
    wandb = auto.hook("wandb")
    assert (
        wandb is not None
        and wandb.auth.kind is HookKind.WANDB
        and wandb.auth.secrets == ("secret-one", "secret-two")
    )
    assert [r.kind for r in auto.rules.rules] == [CollectionKind.MODEL, CollectionKind.DATA]
    assert auto.poll is not None and "secret-one" not in repr(cfg)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("max_attempts = 2", "max_attempts = 2\nbogus = 1"), "unknown key automation.bogus"),
        (
            ('kind = "wandb"', 'kind = "wandb"\nsecret = "x"'),
            "unknown key automation.hooks[0].secret",
        ),
        (('kind = "local"', 'kind = "ftp"'), "automation.source.kind"),
        (("burst = 100", 'burst = "many"'), "automation.hooks[0].burst"),
        (('"HOOK_SECRET_OLD", ', '"NOT_SET_ANYWHERE", '), "variable NOT_SET_ANYWHERE is not set"),
        (
            ('collections = ["mnist", "digits"]', 'collections = ["mnist"]'),
            "rule for 'acme/edge/digits'",
        ),
        (('arch = "lenet5"', 'arch = "vgg"'), "arch 'vgg'"),
    ],
)
def test_a_bad_automation_table_is_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = write_config(tmp_path, tmp_path)
    text = path.read_text()
    assert change[0] in text
    path.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        agent_config(path, tmp_path / "data")
    assert "\n" not in str(caught.value) and SECRET not in str(caught.value)


def test_automation_is_off_without_the_table_and_not_read_from_env(tmp_path: Path) -> None:
    path = tmp_path / "edgewire.toml"
    path.write_text("[agent]\nport = 7001\n")
    cfg = load_config(AgentConfig, flags={}, config_file=path, environ={"EDGEWIRE_AUTOMATION": "1"})
    assert cfg.automation is None and cfg.port == 7001
    assert load_automation({"source": {"kind": "local", "root": "/x"}}).hooks == ()
    with pytest.raises(ConfigError, match="source"):
        load_automation({})


def test_another_agents_store_is_a_source(tmp_path: Path) -> None:
    """kind = "agent": the alias resolves in the other agent's store (with its token), the
    file comes from its versions/{n}/file route sha256-checked, and it serves here."""
    linear_model(tmp_path / "m1.onnx", seed=1)
    w2, b2 = linear_model(tmp_path / "m2.onnx", seed=2)
    with agent_in_thread(tmp_path / "store", token="store-token-123") as store:
        headers = {"Authorization": "Bearer store-token-123"}
        for path in (tmp_path / "m1.onnx", tmp_path / "m2.onnx"):
            data = path.read_bytes()
            r = httpx.put(
                f"http://127.0.0.1:{store.http}/api/models/mnist",
                params={"sha256": hashlib.sha256(data).hexdigest(), "alias": "download"},
                content=data, headers=headers, timeout=60,
            )  # fmt: skip
            assert r.status_code == 201, r.text
        # The file route: the token, and exact bytes with their sha256.
        url = f"http://127.0.0.1:{store.http}/api/models/mnist/versions/1/file"
        assert httpx.get(url, timeout=30).status_code == 401
        got = httpx.get(url, headers=headers, timeout=30)
        assert got.content == (tmp_path / "m1.onnx").read_bytes()
        assert got.headers["x-edgewire-sha256"] == hashlib.sha256(got.content).hexdigest()
        assert httpx.get(url.replace("/1/", "/9/"), headers=headers, timeout=30).status_code == 404

        source = (f'kind = "agent"\nbase_url = "http://127.0.0.1:{store.http}"\n'
                  'api_key_env = "STORE_TOKEN"')  # fmt: skip
        allow = 'hosts = ["127.0.0.1"]\nnetworks = ["127.0.0.0/8"]\nschemes = ["http"]'
        text = automation_toml(source, collection="mnist", allow=allow,
                               rule='kind = "model"\nmodel = "mnist"')  # fmt: skip
        (tmp_path / "a.toml").write_text(text)
        flags = {"host": "127.0.0.1", "port": 0, "http_port": 0, "data_dir": tmp_path / "data"}
        env = {**ENV, "STORE_TOKEN": "store-token-123"}
        cfg = load_config(AgentConfig, flags=flags, config_file=tmp_path / "a.toml", environ=env)
        with agent_in_thread(tmp_path / "data", automation=cfg.automation) as agent:
            body = wandb_body("mnist")
            assert post(agent.http, "wandb", body, wandb_signed(body)).status_code == 202
            jobs = settle(agent.http, token=None)
            deploy = next(j for j in jobs if j["kind"] == "deploy")
            assert deploy["state"] == "succeeded", api(
                agent.http, f"/api/jobs/{deploy['id']}", None
            )
            x = np.random.default_rng(0).random((2, 784), dtype=np.float32)
            # Version 2 is what "download" names in the store: its weights answer here.
            np.testing.assert_allclose(
                infer(agent.http, "mnist", x), expected(x, w2, b2), atol=1e-4
            )


def test_a_model_delivery_with_a_holdout_is_gated(tmp_path: Path) -> None:
    """A model rule that names a holdout set deploys a delivered model only if it is no
    worse on it than the served one."""
    digits = load_dataset("digits")
    root = tmp_path / "artifacts"
    for name, data, epochs in (("good", digits, 3), ("poor", digits.subset(40), 1)):
        (root / "acme/edge/dmodel" / name).mkdir(parents=True)
        export(data, root / "acme/edge/dmodel" / name / "model.onnx", epochs=epochs)
    save_npz(tmp_path / "holdout.npz", digits.subset(300))
    point(root / "acme/edge/dmodel/download", "good")
    rule = f'kind = "model"\nmodel = "digits"\nholdout = "{tmp_path / "holdout.npz"}"'
    text = automation_toml(f'kind = "local"\nroot = "{root}"', collection="dmodel", rule=rule)
    (tmp_path / "g.toml").write_text(text)
    flags = {"host": "127.0.0.1", "port": 0, "http_port": 0, "data_dir": tmp_path / "data"}
    cfg = load_config(AgentConfig, flags=flags, config_file=tmp_path / "g.toml", environ=ENV)
    with agent_in_thread(tmp_path / "data", automation=cfg.automation) as agent:
        body = wandb_body("dmodel")
        for expect_deployed in (True, False):
            assert post(agent.http, "wandb", body, wandb_signed(body)).status_code == 202
            jobs = settle(agent.http, token=None)
            deploy = api(agent.http, f"/api/jobs/{jobs[0]['id']}", None)
            assert deploy["kind"] == "deploy" and deploy["state"] == "succeeded", deploy
            assert deploy["result"]["deployed"] is expect_deployed, deploy
            assert "held-out accuracy: new" in deploy["log_tail"]
            point(root / "acme/edge/dmodel/download", "poor")
        assert "not deployed: the new model is worse" in deploy["log_tail"]
        assert served_version(agent.http, "digits") == 1
