"""Other agents this agent acts on (the dashboard's several agents): registry and proxy."""

from __future__ import annotations

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import Endpoint


def peers_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    return []
