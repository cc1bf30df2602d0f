"""`edgewire train stream` against a real agent process: kill, restart, resume."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.conftest import EDGEWIRE, StartAgent


def stream_cmd(port: int, *extra: str) -> list[str]:
    return [
        *EDGEWIRE, "train", "stream", "--to", f"127.0.0.1:{port}", "--data", "digits",
        "--model", "lenet5", "--batch-size", "16", "--epochs", "2", "--lr", "0.003",
        "--checkpoint-every", "5", "--window", "4", "--run-id", "resume-me", "--json", *extra,
    ]  # fmt: skip


def events_until(proc: subprocess.Popen[str], stop: Any) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if stop(events[-1]):
                break
    return events


def test_agent_sigkill_mid_run_then_resume_counts_every_batch_once(
    tmp_path: Path, start_agent: StartAgent
) -> None:
    agent = start_agent(tmp_path)
    client = subprocess.Popen(
        stream_cmd(agent.ports["native"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = events_until(
        client, lambda e: e["event"] == "feedback" and e["seq"] >= 30 and e["checkpointed"]
    )
    assert first, "no feedback before the kill"
    agent.kill()
    _, err = client.communicate(timeout=60)
    assert client.returncode in (5, 6, 7), err  # a clear error, not a traceback
    assert "Traceback" not in err
    last_checkpoint = max(e["seq"] for e in first if e["event"] == "feedback" and e["checkpointed"])

    agent2 = start_agent(tmp_path)
    done = subprocess.run(
        stream_cmd(agent2.ports["native"], "--resume"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ready = events[0]
    assert ready["event"] == "ready" and ready["resumed"] is True
    # It resumes right after the last checkpoint the agent wrote before dying
    # (a later checkpoint may have landed between the feedback we saw and the kill).
    assert ready["next_seq"] >= last_checkpoint + 1
    summary = events[-1]
    assert summary["event"] == "summary" and summary["finished"] is True
    from edgewire.data.datasets import load_dataset

    train, _ = load_dataset("digits").split(val_fraction=0.1, seed=0)
    assert summary["samples_seen"] == 2 * len(train)  # no batch counted twice, none lost
    assert summary["history"][-1]["val"]["accuracy"] > 0.8
    assert Path(summary["onnx"]).is_file()


def test_sigterm_drains_and_checkpoints(tmp_path: Path, start_agent: StartAgent) -> None:
    agent = start_agent(tmp_path)
    client = subprocess.Popen(
        stream_cmd(agent.ports["native"], "--checkpoint-every", "0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = events_until(client, lambda e: e["event"] == "feedback" and e["seq"] >= 10)
    assert agent.terminate(timeout=30) == 0
    _, err = client.communicate(timeout=60)
    assert client.returncode != 0 and "shutting down" in err
    agent2 = start_agent(tmp_path)
    done = subprocess.run(
        stream_cmd(agent2.ports["native"], "--resume"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    ready = json.loads(done.stdout.splitlines()[0])
    # The drain wrote a checkpoint although none was due: nothing trained was lost.
    assert ready["next_seq"] > seen[-1]["seq"]


def test_cli_errors_are_one_clear_line(tmp_path: Path) -> None:
    cases = [
        (["train", "stream", "--to", "127.0.0.1:1", "--data", "digits"], 7, "cannot connect"),
        (["train", "stream", "--data", str(tmp_path / "missing")], 4, "missing"),
        (["train", "stream", "--to", "nonsense:port", "--data", "digits"], 2, "bad address"),
        (["agent", "--host", "0.0.0.0", "--data-dir", str(tmp_path)], 2, "without a token"),
    ]
    for args, code, text in cases:
        done = subprocess.run([*EDGEWIRE, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == code, (args, done.stderr)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], done.stderr
        assert signal.SIGKILL  # keep the import honest
