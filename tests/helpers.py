"""Test helpers: a real agent on loopback, in a thread of its own."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from edgewire.agent.server import Agent
from edgewire.config import AgentConfig
from edgewire.data.datasets import load_dataset


@dataclasses.dataclass
class RunningAgent:
    agent: Agent
    loop: asyncio.AbstractEventLoop
    config: AgentConfig

    @property
    def native(self) -> int:
        return self.agent.ports["native"]

    @property
    def http(self) -> int:
        return self.agent.ports["http"]

    def port(self, name: str) -> int:
        return self.agent.ports[name]


@contextmanager
def agent_in_thread(data_dir: Path, **overrides: Any) -> Iterator[RunningAgent]:
    """Start a real Agent on 127.0.0.1 (ephemeral ports) and stop it afterwards."""
    config = AgentConfig(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir, **overrides)
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        agent = None
        try:
            agent = Agent(config)
            await agent.start()
        except BaseException as exc:
            box["error"] = exc
            started.set()
            if agent is not None:
                await agent.stop()
            return
        box["agent"], box["loop"] = agent, asyncio.get_running_loop()
        started.set()
        await agent.serve_forever()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(30), "agent did not start"
    if "error" in box:
        thread.join(10)
        raise box["error"]
    running = RunningAgent(agent=box["agent"], loop=box["loop"], config=config)
    try:
        yield running
    finally:
        running.loop.call_soon_threadsafe(running.agent.request_stop)
        thread.join(30)
        assert not thread.is_alive(), "agent did not stop"


def upload(agent: RunningAgent, path: Path, name: str = "mnist", **params: str) -> httpx.Response:
    """PUT a model file to the agent's management API, with its sha256 and file name."""
    data = path.read_bytes()
    params = {"sha256": hashlib.sha256(data).hexdigest(), "filename": path.name, **params}
    return httpx.put(
        f"http://127.0.0.1:{agent.http}/api/models/{name}", params=params, content=data, timeout=60
    )


@contextmanager
def serving_agent(data_dir: Path, **overrides: Any) -> Iterator[RunningAgent]:
    """An agent with the MnistProt port open and a short batching delay, as serving tests use."""
    with agent_in_thread(
        data_dir, legacy_ports={"mnistprot": 0}, max_queue_delay_ms=1.0, **overrides
    ) as running:
        yield running


def automation_toml(
    source: str,
    *,
    collection: str,
    head: str = "",
    hook: str = 'secret_env = ["HOOK_SECRET"]',
    allow: str = "",
    rule: str = "",
) -> str:
    """An agent config with one automation source, one W&B hook (``/hooks/wandb``) and one
    rule for ``acme/edge/<collection>``; each argument is TOML lines for that table."""
    return f"""
{head}
[automation.source]
{source}

[automation.allow]
entities = ["acme"]
projects = ["edge"]
collections = ["{collection}"]
{allow}

[[automation.hooks]]
name = "wandb"
kind = "wandb"
{hook}

[[automation.rules]]
entity = "acme"
project = "edge"
collection = "{collection}"
{rule}
"""


def write_split(root: Path, classes: list[str], counts: dict[str, int]) -> Path:
    """A split folder as ``edgewire project split`` writes it, of real MNIST digits."""
    mnist = load_dataset("mnist5k")
    for name in classes:
        members = np.flatnonzero(mnist.y == int(name))
        start = 0
        for split, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in members[start : start + n]:
                Image.fromarray(mnist.x[k, 0]).save(folder / f"{k}.png")
            start += n
    (root / "labels.txt").write_text("\n".join(classes) + "\n")
    return root
