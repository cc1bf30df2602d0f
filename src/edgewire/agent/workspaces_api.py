"""Workspaces on the agent over HTTP (the dashboard's ai_nano flow): classes, images, split.

Each workspace is a :class:`~edgewire.project.workspace.Workspace` folder under
``DATA_DIR/workspaces/NAME``, the same layout the CLI makes on a laptop.
"""

from __future__ import annotations

from pathlib import Path

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import Endpoint
from edgewire.config import AgentConfig
from edgewire.serve.store import check_name

#: The folder under the data dir that holds the agent's workspaces.
WORKSPACES = "workspaces"


def workspace_path(cfg: AgentConfig, name: str) -> Path:
    """The folder of workspace ``name`` (checked: a plain name, no path)."""
    check_name(name, what="workspace name")
    return cfg.data_dir / WORKSPACES / name


def workspaces_routes(ctx: PortContext) -> list[tuple[str, Endpoint, list[str]]]:
    return []
