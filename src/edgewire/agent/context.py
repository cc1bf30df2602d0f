"""What a protocol handler may use of the agent: the narrow context it is given.

Handlers take a :class:`PortContext`, never the :class:`~edgewire.agent.server.Agent`
itself, so that a new port is one handler module plus one entry in
``edgewire.ports.PORTS``, and nothing in ``agent/`` imports the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from edgewire.agent.disk import DiskBudget
from edgewire.agent.metrics import AgentMetrics
from edgewire.agent.serving import Serving
from edgewire.agent.split import SplitRuntime
from edgewire.config import AgentConfig
from edgewire.train.session import RunRegistry
from edgewire.wire.stream import ByteBudget

#: A connection handler: the peer's stream, until it ends.
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class PortContext:
    """The agent's shared resources, as every port's handler sees them."""

    config: AgentConfig
    metrics: AgentMetrics
    serving: Serving
    #: Streaming-training runs (native TRAIN_* messages).
    runs: RunRegistry
    #: Training is CPU-bound and a model is not thread-safe: one training thread.
    train_executor: Executor
    #: Bytes of frames still arriving and of HTTP bodies being read or held, shared by
    #: every connection (``max_buffered_bytes``).
    frame_budget: ByteBudget
    #: Set once the agent begins to stop: handlers finish what they hold and return.
    stopping: asyncio.Event
    #: What the data dir may hold; ask it before writing runs, checkpoints or uploads.
    disk: DiskBudget
    #: Split heads' connections to their tail servers, and the tail side's decoding.
    split: SplitRuntime
    #: Native connections waiting for their next frame; a stopping agent cancels them
    #: (their in-flight answers still go out) rather than wait out ``drain_timeout``.
    idle_readers: set[asyncio.Task[Any]] = field(default_factory=set)
    #: Capabilities listed in the hello (filled in as ports open).
    features: set[str] = field(default_factory=set)
    #: Whether the agent has started and is not stopping (``/v2/health/ready``).
    is_ready: Callable[[], bool] = lambda: False
