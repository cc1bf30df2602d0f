"""``edgewire jobs`` against a real agent with automation: the list, one job, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agent.test_hooks import (
    TOKEN,
    agent_config,
    point,
    post,
    settle,
    wandb_body,
    wandb_signed,
    write_config,
)
from tests.cli.cli_run import run_cli
from tests.helpers import agent_in_thread
from tests.serve.models import linear_model


def test_jobs_lists_and_shows_the_jobs_of_a_delivery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "artifacts"
    (root / "acme/edge/mnist/v1").mkdir(parents=True)
    linear_model(root / "acme/edge/mnist/v1/model.onnx")
    point(root / "acme/edge/mnist/download", "v1")
    cfg = agent_config(write_config(tmp_path, root), tmp_path / "data")
    monkeypatch.delenv("EDGEWIRE_TOKEN", raising=False)
    with agent_in_thread(tmp_path / "data", token=TOKEN, automation=cfg.automation) as agent:
        body = wandb_body()
        assert post(agent.http, "wandb", body, wandb_signed(body)).status_code == 202
        settle(agent.http)
        to = f"127.0.0.1:{agent.http}"

        code, out = run_cli(capsys, monkeypatch, "jobs", "--to", to, "--token", TOKEN)
        assert code == 0, out
        assert "jobs on 127.0.0.1" in out and "2 succeeded" in out
        assert "deploy" in out and "resolve" in out and "acme/edge/mnist:download" in out

        code, out = run_cli(capsys, monkeypatch, "jobs", "--to", to, "--token", TOKEN, "--json")
        listed = json.loads(out)
        deploy = next(j for j in listed["jobs"] if j["kind"] == "deploy")

        code, out = run_cli(
            capsys, monkeypatch, "jobs", "--to", to, "--token", TOKEN, "--id", str(deploy["id"])
        )
        assert code == 0, out
        assert f"job {deploy['id']}" in out and "succeeded" in out
        assert "log:" in out and "deployed mnist version 1 as 'production'" in out

        code, out = run_cli(
            capsys, monkeypatch, "jobs", "--to", to, "--token", TOKEN, "--id", "9999"
        )
        assert code == 6 and "no job 9999" in out

        code, out = run_cli(capsys, monkeypatch, "jobs", "--to", to)
        assert code == 9 and "--token" in out


def test_jobs_on_an_agent_without_automation_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with agent_in_thread(tmp_path / "data") as agent:
        code, out = run_cli(capsys, monkeypatch, "jobs", "--to", f"127.0.0.1:{agent.http}")
    assert code == 2 and "runs no automation" in out
