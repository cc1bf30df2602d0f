"""``edgewire train run --on`` against a real agent process: the workspace's split goes up,
trains there, and the run folder comes back as a local run would have written it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from edgewire.project.workspace import Workspace
from tests.e2e.conftest import EDGEWIRE, StartAgent
from tests.helpers import write_split

TOKEN = "e2e-remote-token-1"


def train_cmd(port: int, ws: Path, run_id: str, *extra: str) -> list[str]:
    return [
        *EDGEWIRE, "train", "run", "--on", f"127.0.0.1:{port}", "-w", str(ws), "--epochs", "1",
        "--size", "32", "--model", "mnist_cnn", "--batch-size", "16", "--no-augment",
        "--patience", "0", "--run-id", run_id, *extra,
    ]  # fmt: skip


def _setup(tmp_path: Path, start_agent: StartAgent) -> tuple[Path, int, dict[str, str]]:
    """A two-class workspace of real digits, an agent with a token, the CLI's env."""
    ws = tmp_path / "ws"
    Workspace.init(ws, ["0", "1"])
    write_split(ws / "dataset", ["0", "1"], {"train": 16, "val": 6, "test": 6})
    agent = start_agent(tmp_path / "agent", "--token", TOKEN)
    return ws, agent.ports["http"], {**os.environ, "EDGEWIRE_TOKEN": TOKEN, "COLUMNS": "200"}


def test_train_run_on_a_remote_agent_then_resume_sends_nothing(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    ws, http, env = _setup(tmp_path, start_agent)

    done = subprocess.run(train_cmd(http, ws, "first", "--json"), capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "ready" and kinds[-1] == "done"
    assert "feedback" in kinds and "epoch" in kinds
    run_dir = ws / "runs" / "first"
    assert lines[-1]["run_dir"] == str(run_dir)
    assert (ws / "runs" / "LATEST").read_text() == "first\n"
    names = {p.name for p in run_dir.iterdir()}
    assert {"checkpoint.safetensors", "last.safetensors", "model.onnx", "history.jsonl",
            "report.json", "confusion.txt"} <= names  # fmt: skip
    report = json.loads((run_dir / "report.json").read_text())
    assert report["samples"] == 12
    assert not list((ws / "runs").glob(".*partial*"))
    # The agent's data set folder is gone: the run's meta names the workspace's instead.
    exported = subprocess.run([*EDGEWIRE, "export", str(run_dir), "--int8", "-o",
                               str(tmp_path / "out" / "model.onnx")], capture_output=True,
                              text=True, timeout=300, env=env)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "model.int8.onnx").is_file()
    assert "test accuracy" in exported.stdout

    # The same data set again: every file is on the agent, nothing goes up twice.
    again = subprocess.run(train_cmd(http, ws, "second"), capture_output=True, text=True,
                           timeout=300, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "57 of 57 files already on the agent" in again.stdout  # 56 digits + labels.txt
    assert "test split" in again.stdout  # the report
    assert (ws / "runs" / "LATEST").read_text() == "second\n"

    # A wrong token: one clear line, exit code 9, no traceback.
    refused = subprocess.run(train_cmd(http, ws, "third"), capture_output=True, text=True,
                             timeout=120, env={**env, "EDGEWIRE_TOKEN": "wrong-token-123"})  # fmt: skip
    assert refused.returncode == 9, refused.stderr
    assert "Traceback" not in refused.stderr and "token" in refused.stderr
    assert not (ws / "runs" / "third").exists()


def test_ctrl_c_leaves_the_run_going_and_attach_brings_it_home(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    ws, http, env = _setup(tmp_path, start_agent)
    cmd = [*train_cmd(http, ws, "bg", "--json"), "--epochs", "20"]  # the last --epochs wins
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env)  # fmt: skip
    try:
        assert client.stdout is not None
        for line in client.stdout:
            if '"event": "feedback"' in line:
                break
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 130, err
    assert f"edgewire train attach --on 127.0.0.1:{http} bg -w {ws}" in err
    assert "Traceback" not in err
    assert not (ws / "runs" / "bg").exists()

    attached = subprocess.run([*EDGEWIRE, "train", "attach", "--on", f"127.0.0.1:{http}", "bg",
                               "-w", str(ws), "--json"], capture_output=True, text=True,
                              timeout=300, env=env)  # fmt: skip
    assert attached.returncode == 0, attached.stderr
    lines = [json.loads(line) for line in attached.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "ready" and lines[-1]["event"] == "done"  # from the first event
    assert sum(1 for line in lines if line["event"] == "epoch") == 20
    assert (ws / "runs" / "LATEST").read_text() == "bg\n"
    assert (ws / "runs" / "bg" / "model.onnx").is_file()
