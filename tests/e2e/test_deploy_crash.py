"""A deploy cut short by SIGKILL leaves the old model or the new one, never a broken one."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np

from edgewire.client.native import Client
from tests.e2e.conftest import StartAgent
from tests.serve.models import linear_model


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def trickle(data: bytes, pieces: int = 20, pause: float = 0.02) -> Iterator[bytes]:
    step = -(-len(data) // pieces)
    for start in range(0, len(data), step):
        yield data[start : start + step]
        time.sleep(pause)


def ask(port: int, x: np.ndarray) -> np.ndarray:
    async def go() -> np.ndarray:
        async with await Client.connect("127.0.0.1", port) as client:
            return (await client.infer("mnist", [x])).outputs["output_0"]

    return asyncio.run(go())


def test_sigkill_during_deploy_keeps_old_or_new_model(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    v1, v2 = tmp_path / "v1.onnx", tmp_path / "v2.onnx"
    w1, b1 = linear_model(v1, seed=1)
    w2, b2 = linear_model(v2, seed=2)
    x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
    expected = [softmax(x @ w1.T + b1), softmax(x @ w2.T + b2)]
    data_dir = tmp_path / "agent"
    agent = start_agent(data_dir)
    first = httpx.put(
        f"http://127.0.0.1:{agent.ports['http']}/api/models/mnist", content=v1.read_bytes()
    )
    assert first.status_code == 201, first.text
    payload = v2.read_bytes()
    sha = hashlib.sha256(payload).hexdigest()
    rng = random.Random(7)
    # Kills land while the body trickles in (about 0.4 s), around the commit, and after it.
    delays = [rng.uniform(0.0, 0.4), rng.uniform(0.0, 0.4), rng.uniform(0.4, 0.8), 2.5]
    outcomes = []
    for delay in delays:
        url = f"http://127.0.0.1:{agent.ports['http']}/api/models/mnist"

        def deploy(url: str = url) -> None:
            # The agent dies under it: that is the point.
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(url, params={"sha256": sha}, content=trickle(payload), timeout=30)

        sender = threading.Thread(target=deploy)
        sender.start()
        time.sleep(delay)
        agent.kill()
        sender.join(30)
        agent = start_agent(data_dir)
        got = ask(agent.ports["native"], x)
        matches = [np.allclose(got, e, atol=1e-5) for e in expected]
        assert any(matches), got
        outcomes.append(matches.index(True) + 1)
        listing = httpx.get(f"http://127.0.0.1:{agent.ports['http']}/api/models").json()
        assert listing["models"][0]["serving"]["version"] >= 1
    # Each restart served a whole version; once v2 was committed it stayed.
    assert outcomes[-1] == 2, outcomes
    assert outcomes == sorted(outcomes), outcomes
    # Half-written uploads and staging folders are swept when the agent starts.
    leftovers = [
        p
        for p in data_dir.rglob("*")
        if p.is_file() and ("uploads" in p.parts or ".staging-" in str(p))
    ]
    assert leftovers == [], leftovers
