"""The pieces together, as the agent will wire them: verify -> parse -> match -> a job that
resolves at the source -> a job keyed by the version found there, which runs once."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edgewire.automation.events import AllowList, parse_event
from edgewire.automation.jobs import Job, JobQueue, JobState
from edgewire.automation.rules import CollectionKind, Rule, Rules, match
from edgewire.automation.signatures import HookAuth, HookKind, verify
from edgewire.automation.sources import LocalSource
from edgewire.automation.worker import JobContext, Worker
from edgewire.errors import NotAllowed, SignatureError

SECRET = "gh-secret"
RULES = Rules(
    rules=(Rule(entity="acme", project="edge", collection="mnist", kind=CollectionKind.MODEL, model="mnist"),),
    allow=AllowList(entities=frozenset({"acme"}), projects=frozenset({"edge"}), collections=frozenset({"mnist"})),
)  # fmt: skip
AUTH = HookAuth(kind=HookKind.GITHUB, secrets=(SECRET,))
BODY = json.dumps({"event_type": "ADD_ARTIFACT_ALIAS", "client_payload": {
    "artifact_version_string": "acme/edge/mnist:download", "alias": "download"}}).encode()  # fmt: skip


def signed(body: bytes, delivery: str) -> dict[str, str]:
    mac = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={mac}", "X-GitHub-Delivery": delivery}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[JobQueue, LocalSource, Path]]:
    store = tmp_path / "store"
    for version, data in (("v1", b"one"), ("v2", b"two")):
        (store / "acme/edge/mnist" / version).mkdir(parents=True)
        (store / "acme/edge/mnist" / version / "model.onnx").write_bytes(data)
    (store / "acme/edge/mnist/download").symlink_to("v1")
    queue = JobQueue(tmp_path / "data")
    yield queue, LocalSource(store), store
    queue.close()


def receive(queue: JobQueue, headers: Mapping[str, str], body: bytes) -> tuple[int, bool] | None:
    """What the HTTP route does within its second: verify, parse, match, enqueue a hint."""
    delivery = verify(AUTH, headers, body)
    action = match(parse_event(delivery.body, allow=RULES.allow), RULES, hook="gh")
    if action is None:
        return None
    return queue.enqueue("resolve", action.payload(), f"hook:gh:{delivery.idempotency_key}")


async def test_the_same_delivery_twice_and_the_same_version_twice_act_once(
    setup: tuple[JobQueue, LocalSource, Path], tmp_path: Path
) -> None:
    queue, source, store = setup
    deployed: list[str] = []

    async def resolve(job: Job, ctx: JobContext) -> Mapping[str, Any]:
        resolved = await source.resolve(job.payload["ref"])
        ctx.log(f"{job.payload['ref']} is {resolved.version_id}")
        key = f"deploy:{job.payload['collection']}@{resolved.version_id}"
        deploy_id, created = queue.enqueue(
            "deploy", {**job.payload, "version_id": resolved.version_id}, key
        )
        return {"deploy_job": deploy_id, "created": created}

    async def deploy(job: Job, ctx: JobContext) -> None:
        resolved = await source.resolve(job.payload["ref"])
        dest = tmp_path / "models" / resolved.digest
        await source.download(resolved, dest)
        deployed.append((dest / "model.onnx").read_text())

    worker = Worker(queue, {"resolve": resolve, "deploy": deploy}, owner="w")

    async def drain() -> None:
        while await worker.run_once() is not None:
            pass

    first = receive(queue, signed(BODY, "d-1"), BODY)
    assert first is not None and first[1] is True
    assert receive(queue, signed(BODY, "d-1"), BODY) == (first[0], False)  # redelivered
    await drain()
    assert receive(queue, signed(BODY, "d-2"), BODY) is not None  # new delivery, same version
    await drain()
    assert deployed == ["one"]
    (store / "acme/edge/mnist/download").unlink()
    (store / "acme/edge/mnist/download").symlink_to("v2")  # the alias moved
    receive(queue, signed(BODY, "d-3"), BODY)
    await drain()
    assert deployed == ["one", "two"]
    assert queue.counts()[JobState.SUCCEEDED] == 5  # 3 hints, 2 deploys


def test_refusals_happen_before_anything_is_queued(
    setup: tuple[JobQueue, LocalSource, Path],
) -> None:
    queue = setup[0]
    with pytest.raises(SignatureError):
        receive(queue, {**signed(BODY, "d-1"), "X-Hub-Signature-256": "sha256=" + "0" * 64}, BODY)
    evil = BODY.replace(b"acme/", b"evil/")
    with pytest.raises(NotAllowed):
        receive(queue, signed(evil, "d-2"), evil)
    other = BODY.replace(b":download", b":staging").replace(b'"download"', b'"staging"')
    assert receive(queue, signed(other, "d-3"), other) is None
    assert queue.list() == []
