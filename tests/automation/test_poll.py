"""The poller: new versions act once, errors back off, each ref on its own."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from edgewire.automation.events import AllowList
from edgewire.automation.poll import Poller, PollSettings
from edgewire.automation.rules import Action, ActionKind, CollectionKind, Rule, Rules
from edgewire.automation.sources import Resolved
from edgewire.errors import ConfigError, ConnectError

ALLOW = AllowList(entities=frozenset({"acme"}), projects=frozenset({"edge"}),
                  collections=frozenset({"model", "data"}))  # fmt: skip
RULES = Rules(
    rules=(
        Rule(entity="acme", project="edge", collection="model", kind=CollectionKind.MODEL, model="m"),
        Rule(entity="acme", project="edge", collection="data", kind=CollectionKind.DATA, model="m",
             on=frozenset({"download", "LINK_ARTIFACT"})),
    ),
    allow=ALLOW,
)  # fmt: skip


class FakeSource:
    def __init__(self) -> None:
        self.versions: dict[str, str | Exception] = {}

    async def resolve(self, ref: str) -> Resolved:
        found = self.versions[ref]
        if isinstance(found, Exception):
            raise found
        return Resolved(ref=ref, version_id=found, digest="d-" + found)

    async def download(self, resolved: Resolved, dest_dir: Path) -> list[Path]:
        raise AssertionError("the poller never downloads")


async def test_a_new_version_acts_once_and_a_changed_one_again() -> None:
    source = FakeSource()
    source.versions = {"acme/edge/model:download": "v1", "acme/edge/data:download": "v7"}
    acted: list[tuple[ActionKind, str, str]] = []

    async def on_change(action: Action, resolved: Resolved) -> None:
        acted.append((action.kind, action.ref, action.job_key(resolved.version_id)))

    poller = Poller(source, RULES, on_change)
    assert poller.refs() == ["acme/edge/model:download", "acme/edge/data:download"]
    assert await poller.poll_once() == 0
    assert await poller.poll_once() == 0
    source.versions["acme/edge/model:download"] = "v2"
    await poller.poll_once()
    assert acted == [
        (ActionKind.DEPLOY, "acme/edge/model:download", "deploy:acme/edge/model@v1"),
        (ActionKind.RETRAIN_THEN_DEPLOY, "acme/edge/data:download", "retrain_then_deploy:acme/edge/data@v7"),
        (ActionKind.DEPLOY, "acme/edge/model:download", "deploy:acme/edge/model@v2"),
    ]  # fmt: skip


async def test_errors_back_off_and_other_refs_still_poll() -> None:
    source = FakeSource()
    source.versions = {
        "acme/edge/model:download": ConnectError("down"),
        "acme/edge/data:download": "v1",
    }
    acted: list[str] = []

    async def on_change(action: Action, resolved: Resolved) -> None:
        acted.append(resolved.version_id)

    settings = PollSettings(interval_s=10, jitter=0, max_backoff_s=35)
    poller = Poller(source, RULES, on_change, settings=settings)
    delays = []
    for _ in range(3):
        assert await poller.poll_once() == 1
        delays.append(settings.delay(poller.failures, random.Random(0)))
    assert acted == ["v1"] and delays == [20, 35, 35]
    source.versions["acme/edge/model:download"] = "v5"
    assert await poller.poll_once() == 0 and poller.failures == 0
    assert acted == ["v1", "v5"]


async def test_a_failed_action_is_retried_next_round() -> None:
    source = FakeSource()
    source.versions = {"acme/edge/model:download": "v1", "acme/edge/data:download": "v1"}
    calls = 0

    async def on_change(action: Action, resolved: Resolved) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("queue busy")

    poller = Poller(source, RULES, on_change)
    assert await poller.poll_once() == 1
    assert await poller.poll_once() == 0
    assert calls == 3


async def test_run_stops_when_asked() -> None:
    source = FakeSource()
    source.versions = {"acme/edge/model:download": "v1", "acme/edge/data:download": "v1"}
    rounds = 0

    async def on_change(action: Action, resolved: Resolved) -> None:
        nonlocal rounds
        rounds += 1

    stop = asyncio.Event()
    poller = Poller(
        source, RULES, on_change, settings=PollSettings(interval_s=0.01, max_backoff_s=1)
    )
    task = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert rounds == 2


def test_jitter_stays_in_its_band_and_bad_settings_are_refused() -> None:
    settings = PollSettings(interval_s=100, jitter=0.2)
    rng = random.Random(1)
    assert all(80 <= settings.delay(0, rng) <= 120 for _ in range(200))
    with pytest.raises(ConfigError):
        PollSettings(interval_s=0)
    with pytest.raises(ConfigError):
        PollSettings(interval_s=10, max_backoff_s=5)
