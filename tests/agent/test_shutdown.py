"""Stopping: idle native connections do not hold a stopping agent for its drain time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from edgewire.client.native import Client
from tests.helpers import agent_in_thread


def test_idle_native_connections_do_not_hold_the_stop(tmp_path: Path) -> None:
    """With drain_timeout at 120 s, an agent whose native clients sit idle between frames
    still stops at once (agent_in_thread gives it 30 s), and the clients see the end."""
    clients_n = 3
    closed = threading.Semaphore(0)
    ready = threading.Barrier(clients_n + 1, timeout=10)

    async def idle_client(port: int) -> None:
        async with await Client.connect("127.0.0.1", port) as client:
            await client.hello()
            await asyncio.to_thread(ready.wait)
            while client.is_open:  # noqa: ASYNC110 -- is_open has no event to wait on
                await asyncio.sleep(0.05)
            closed.release()

    with agent_in_thread(tmp_path, drain_timeout=120.0) as running:
        clients = [
            threading.Thread(target=asyncio.run, args=(idle_client(running.native),), daemon=True)
            for _ in range(clients_n)
        ]
        for thread in clients:
            thread.start()
        ready.wait()  # every client connected and idle
    # agent_in_thread asserted that the agent stopped within 30 s.
    for _ in range(clients_n):
        assert closed.acquire(timeout=10), "an idle client never saw the connection end"
    for thread in clients:
        thread.join(10)
