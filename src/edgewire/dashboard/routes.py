"""The dashboard's pages, static files, login and logout."""

from __future__ import annotations

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import Endpoint


def dashboard_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    return []
