"""``GET /openapi.json``: the document lists exactly the app's routes, and is behind the
management check (the token; loopback when the agent has none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import BaseRoute, Route

from edgewire.agent.http import create_app
from edgewire.agent.live_api import live_routes
from edgewire.agent.openapi import OPENAPI_PATH, document
from edgewire.agent.peers import peers_routes
from edgewire.agent.server import Agent
from edgewire.agent.train_remote import train_remote_routes
from edgewire.agent.workspaces_api import workspaces_routes
from edgewire.config import AgentConfig, load_config
from edgewire.dashboard.routes import dashboard_routes
from tests.helpers import agent_in_thread, automation_toml

TOKEN = "openapi-token-123"
HOOK_SECRET = "openapi-hook-secret"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def automated_config(tmp: Path, **flags: Any) -> AgentConfig:
    """A loopback agent on free ports with automation on: one hook, ``/hooks/wandb``."""
    root = tmp / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    path = tmp / "edgewire.toml"
    path.write_text(automation_toml(
        f'kind = "local"\nroot = "{root}"', collection="mnist",
        head="[automation]\nmax_attempts = 1",
        hook=f'secrets = ["{HOOK_SECRET}"]\nrate_per_s = 1000\nburst = 1000',
        rule='kind = "model"\nmodel = "tiny"',
    ))  # fmt: skip
    given = {"host": "127.0.0.1", "port": 0, "http_port": 0, "data_dir": tmp / "data", **flags}
    return load_config(AgentConfig, flags=given, config_file=path, environ={})


def app_routes(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    found = set()
    for route in routes:
        assert isinstance(route, Route), route  # FastAPI's APIRoute is one too; no mounts
        for method in route.methods or ():
            if method != "HEAD":  # starlette adds HEAD to each GET
                # starlette's {path:path} is OpenAPI's {path}
                found.add((route.path.replace(":path}", "}"), method.lower()))
    return found


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item
            if method in METHODS}  # fmt: skip


@pytest.mark.parametrize("automation", [True, False])
def test_the_document_lists_exactly_the_routes_of_the_app(tmp_path: Path, automation: bool) -> None:
    config = automated_config(tmp_path) if automation else AgentConfig(data_dir=tmp_path)
    agent = Agent(config)
    try:
        extra = agent.automation.routes() if agent.automation is not None else []
        extra = [*extra, *train_remote_routes(agent.context)]  # as Agent._start_http mounts
        extra = [*extra, *live_routes(agent.context, agent.live)]  # live runs, likewise
        extra = [*extra, *peers_routes(agent.context)]  # other agents, likewise
        extra = [*extra, *workspaces_routes(agent.context)]  # workspaces, likewise
        extra = [*extra, *dashboard_routes(agent.context)]  # the dashboard, likewise
        app = create_app(agent.context, routes=extra)
        hooks = [h.name for h in config.automation.hooks] if config.automation else None
        doc = document(hooks=hooks)
        assert app_routes(app.routes) == documented(doc)
    finally:
        agent.train_executor.shutdown()
    assert ("/hooks/wandb", "post") in documented(doc) if automation else True


def test_every_operation_says_its_answers_and_guarded_ones_their_security() -> None:
    doc = document(hooks=["wandb"])
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert op["responses"], (method, path)
            templated = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == templated, (method, path)
            guarded = path.startswith("/api/") or path == OPENAPI_PATH
            assert ("security" in op) == guarded, (method, path)
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}


def test_openapi_json_needs_the_token(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path, token=TOKEN) as running:
        url = f"http://127.0.0.1:{running.http}{OPENAPI_PATH}"
        refused = httpx.get(url)
        assert refused.status_code == 401
        assert "/api/models" not in refused.text
        answer = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["openapi"].startswith("3.1")
    assert "/api/models/{name}/activate" in doc["paths"]
    assert "/hooks/wandb" not in doc["paths"]  # automation is off


def test_openapi_json_without_a_token_is_for_loopback_and_lists_hooks(tmp_path: Path) -> None:
    config = automated_config(tmp_path)
    overrides = {"automation": config.automation}
    with agent_in_thread(tmp_path / "data", **overrides) as running:
        answer = httpx.get(f"http://127.0.0.1:{running.http}{OPENAPI_PATH}")
    assert answer.status_code == 200
    assert {"/hooks/wandb", "/api/jobs", "/api/jobs/{id}"} <= set(answer.json()["paths"])
