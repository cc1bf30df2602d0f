"""Shared bits of the CLI: consoles, address parsing, running coroutines."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from rich.console import Console

from edgewire.errors import ConfigError

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)


def parse_address(value: str, *, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``[v6]:PORT`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = value, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad address {value!r}: expected HOST:PORT") from None
    if not 0 < port < 65536:
        raise ConfigError(f"bad port in {value!r}: {port}")
    return host, port


def run(coro: Coroutine[Any, Any, T]) -> T:
    """The one place the CLI enters asyncio (uvloop when installed)."""
    from edgewire.agent.server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(coro)
