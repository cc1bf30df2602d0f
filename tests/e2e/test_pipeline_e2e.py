"""The whole ai_nano loop with real processes: generated footage of three classes →
capture → split → train → export fp32 and int8 → gated deploy to a real agent → a run
on a video whose class changes every 3 s → the simulated pins follow the classes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from edgewire.actions.config import DEFAULT_PINS
from edgewire.project.sample import segments_right, write_sample
from tests.e2e.conftest import EDGEWIRE, StartAgent

TOKEN = "pipeline-e2e-token"


def test_footage_to_pins(tmp_path: Path, start_agent: StartAgent) -> None:
    agent = start_agent(
        tmp_path / "agent", "--token", TOKEN, "--run-source-allow", str(tmp_path / "ws")
    )
    http = f"127.0.0.1:{agent.ports['http']}"
    ws = tmp_path / "ws"
    settings = (
        "[train]\nmodel = 'resnet_small'\nsize = 32\nepochs = 15\n"
        "[export]\nint8 = true\n"
        f"[deploy]\nto = '{http}'\nname = 'digits'\nvariant = 'int8'\nmin_accuracy = 0.6\n"
        f"[run]\non = '{http}'\nsource = '{ws / 'footage' / 'test.avi'}'\nrate = 10\n"
        "json = true\n"
    )
    sample = write_sample(ws, segments=6, settings=settings)
    env = {**os.environ, "EDGEWIRE_TOKEN": TOKEN, "COLUMNS": "200"}
    done = subprocess.run(
        [*EDGEWIRE, "pipeline", "-w", str(ws)], capture_output=True, text=True, env=env,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (ws / "export" / "model.onnx").is_file() and (
        ws / "export" / "model.int8.onnx"
    ).is_file()
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    frames = [e for e in lines if "fired" in e and "frame" in e]
    assert len(frames) == len(sample.shown)  # every frame of the video was classified
    labels = sorted(sample.workspace.classes)  # the order training and the model use
    pin_of = dict(zip(labels, DEFAULT_PINS, strict=False))
    right, total = segments_right(sample, frames, pin_of)
    print(f"segments right: {right}/{total}")
    assert total == 6 and right >= 4
    # Nothing is done twice: a second pipeline finds every step up to date but the run.
    again = subprocess.run(
        [*EDGEWIRE, "pipeline", "-w", str(ws), "--to", "deploy"], capture_output=True,
        text=True, env=env, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout.count("up to date") == 5, again.stdout
