"""End-to-end: the real ``edgewire`` command in subprocesses."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgewire.bench.spawn import SpawnedAgent

EDGEWIRE = [sys.executable, "-m", "edgewire.cli"]
StartAgent = Callable[..., SpawnedAgent]


@pytest.fixture
def start_agent() -> Iterator[StartAgent]:
    """Start ``edgewire agent`` processes; all are stopped after the test."""
    started: list[SpawnedAgent] = []

    def start(data_dir: Path, *extra: str) -> SpawnedAgent:
        agent = SpawnedAgent(data_dir, *extra)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()
