"""``edgewire train run -w WS``: a workspace made by the real project commands, trained
in a subprocess into ``WS/runs/RUN-ID``, with the report printed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from edgewire.project.footage import frames
from tests.e2e.conftest import EDGEWIRE

TRAIN = ["train", "run", "--epochs", "1", "--size", "32", "--model", "mnist_cnn", "--no-flip"]


def edgewire(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGEWIRE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Camera-like RGB frames of real digits over real photos, imported and split."""
    base = tmp_path_factory.mktemp("train-ws")
    root = base / "ws"
    assert edgewire("project", "init", str(root), "--classes", "three,five").returncode == 0
    for name, digit in (("three", 3), ("five", 5)):
        shots = base / name
        shots.mkdir()
        for i, frame in enumerate(frames(digit, count=30, seed=digit)):
            Image.fromarray(frame).save(shots / f"{i}.png")
        done = edgewire("project", "import", str(shots), "--class", name, "-w", str(root))
        assert done.returncode == 0, done.stderr
    split = edgewire("project", "split", "-w", str(root))
    assert split.returncode == 0, split.stderr
    return root


def test_a_workspace_run_writes_its_folder_latest_and_the_report(ws: Path) -> None:
    done = edgewire(*TRAIN, "-w", str(ws), "--run-id", "first")
    assert done.returncode == 0, done.stderr
    run = ws / "runs" / "first"
    assert (ws / "runs" / "LATEST").read_text() == "first\n"
    report = json.loads((run / "report.json").read_text())
    assert report["classes"] == ["five", "three"]  # labels.txt is sorted
    out = done.stdout
    assert f"accuracy {100 * report['accuracy']:.1f}%" in out
    assert "confusion matrix" in out and (run / "confusion.txt").read_text() in out
    for name in ("checkpoint.safetensors", "last.safetensors", "model.onnx", "history.jsonl",
                 "report.json", "confusion.txt", "confusion.png"):  # fmt: skip
        assert (run / name).is_file()
        assert str(run / name) in out
    assert "batch size " in out  # the fitted size, and why

    before = (run / "checkpoint.safetensors").read_bytes()
    again = edgewire(*TRAIN, "-w", str(ws), "--run-id", "first")
    assert again.returncode == 2 and "exists already" in again.stderr
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_json_lines_end_with_the_summary(ws: Path) -> None:
    done = edgewire(*TRAIN, "-w", str(ws), "--run-id", "as-json", "--json", "--batch-size", "8")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "batch_size" and events[0]["batch_size"] == 8
    assert {"feedback", "epoch", "report"} <= set(kinds) and kinds[-1] == "done"
    assert events[-1]["run_id"] == "as-json" and events[-1]["batch_size"] == 8
    assert (ws / "runs" / "LATEST").read_text() == "as-json\n"


def test_fine_tuning_takes_the_model_from_the_checkpoint(ws: Path) -> None:
    first = edgewire(*TRAIN, "-w", str(ws), "--run-id", "base")
    assert first.returncode == 0, first.stderr
    init = ws / "runs" / "base" / "checkpoint.safetensors"
    args = ["train", "run", "-w", str(ws), "--epochs", "1", "--size", "32", "--init", str(init)]
    tuned = edgewire(*args, "--run-id", "tuned")
    assert tuned.returncode == 0, tuned.stderr
    assert "fine-tuning from" in tuned.stdout and "new classifier head" not in tuned.stdout
    report = json.loads((ws / "runs" / "tuned" / "report.json").read_text())
    assert report["classes"] == ["five", "three"]


def test_out_of_memory_is_one_line_and_leaves_no_run(ws: Path) -> None:
    latest = ws / "runs" / "LATEST"
    before = latest.read_text() if latest.exists() else None
    done = edgewire(*TRAIN, "-w", str(ws), "--run-id", "tiny", "--memory-budget", "1")
    assert done.returncode == 10, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "out of memory" in lines[0] and "--memory-budget" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (ws / "runs" / "tiny").exists()
    assert (latest.read_text() if latest.exists() else None) == before


def test_a_folder_without_a_split_says_what_to_run(tmp_path: Path) -> None:
    assert edgewire("project", "init", str(tmp_path / "w"), "--classes", "a,b").returncode == 0
    done = edgewire(*TRAIN, "-w", str(tmp_path / "w"))
    assert done.returncode == 2 and "edgewire project split" in done.stderr
    assert not (tmp_path / "w" / "runs").exists()
    mixed = edgewire(*TRAIN, "-w", str(tmp_path / "w"), "--data", "digits", "--init", "x")
    assert mixed.returncode == 2 and "--init only go with a workspace" in mixed.stderr
