"""``edgewire pipeline``: planning from edgewire.toml, the record of finished steps, and
real runs of its first steps (capture and split) from generated footage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgewire.errors import ConfigError
from edgewire.project.pipeline import STEPS, State, flags, plan, step_range
from edgewire.project.sample import write_sample
from edgewire.project.workspace import CONFIG_FILE, Workspace


def _edgewire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgewire.cli", *args],
        capture_output=True, text=True, timeout=180, env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip


def _workspace(tmp_path: Path, extra: str) -> Workspace:
    ws = Workspace.init(tmp_path / "ws", ["cat", "dog"])
    with (ws.root / CONFIG_FILE).open("a") as out:
        out.write(extra)
    return Workspace.open(ws.root)


def test_step_range() -> None:
    assert step_range(None, None) == list(STEPS)
    assert step_range("train", "deploy") == ["train", "export", "deploy"]
    with pytest.raises(ConfigError, match="unknown step 'trian'"):
        step_range("trian", None)
    with pytest.raises(ConfigError, match="--from deploy comes after --to split"):
        step_range("deploy", "split")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[train]\nepoch = 3\n", r"\[train\] has unknown keys \['epoch'\]; it takes: model"),
        ("[deploy]\ntoken = 'hunter22'\n", "a token never goes in the workspace file"),
        ("[export]\nint8 = 'yes'\n", r"\[export\] int8 = 'yes' is not a usable value"),
        ("[capture.cow]\nsource = 'x.avi'\n", "unknown class 'cow'"),
        ("[capture.cat]\ncount = 3\n", r"\[capture.cat\] needs a source"),
        ("[train]\nmodel = ['a']\n", "is not a usable value"),
        ("[[run]]\non = 'a:1'\n", r"\[run\] must be a table"),
    ],
)
def test_bad_tables_are_refused_before_anything_runs(
    tmp_path: Path, extra: str, message: str
) -> None:
    ws = _workspace(tmp_path, extra)
    with pytest.raises(ConfigError, match=message):
        plan(ws)


def test_tables_become_the_commands_a_user_would_type(tmp_path: Path) -> None:
    ws = _workspace(
        tmp_path,
        "[train]\nmodel = 'resnet_small'\nepochs = 3\naugment = false\ninit = 'mine.safetensors'\n"
        "[export]\nint8 = true\nfp16 = false\n"
        "[deploy]\nto = '10.0.0.2:8000'\nvariant = 'int8'\nmin_accuracy = 0.8\n"
        "[run]\non = '10.0.0.2:8000'\nsource = '0'\nrate = 10\n",
    )
    steps = {s.name: s for s in plan(ws)}
    root = str(ws.root)
    assert steps["capture"].skip_reason is not None  # no sources: the images there are used
    assert steps["train"].commands == [[
        "train", "run", "-w", root, "--model", "resnet_small", "--epochs", "3", "--no-augment",
        "--init", str(ws.root / "mine.safetensors"),
    ]]  # fmt: skip
    assert steps["export"].commands[0][-1] == "--int8"
    deploy = steps["deploy"].commands[0]
    assert deploy[:4] == ["deploy", str(ws.root / "export" / "model.int8.onnx"), "--name", "ws"]
    assert ["--gate-data", root] == deploy[4:6] and "--min-accuracy" in deploy
    assert steps["run"].commands == [[
        "run", "--model", "ws", "--on", "10.0.0.2:8000", "--source", "0", "--rate", "10",
    ]]  # fmt: skip
    assert not steps["run"].cached
    assert flags("export", {"fp16": True, "int8": False}, ws.root) == ["--fp16"]
    # A file of the workspace is found from anywhere; a camera or a URL stays as it is.
    (ws.root / "cat.avi").write_bytes(b"")
    assert flags("capture", {"source": "cat.avi"}, ws.root) == [
        "--source",
        str(ws.root / "cat.avi"),
    ]
    assert flags("capture", {"source": "0"}, ws.root) == ["--source", "0"]
    assert flags("run", {"source": "cat.avi"}, ws.root) == ["--source", "cat.avi"]  # the agent's
    with pytest.raises(ConfigError, match="variant must be one of fp32, fp16, int8"):
        plan(_workspace(tmp_path / "b", "[deploy]\nvariant = 'int4'\n"))


def test_a_step_is_fresh_while_its_inputs_and_outputs_are_as_recorded(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "[split]\nseed = 1\n")
    (ws.root / "images" / "cat" / "a.png").write_bytes(b"x")
    state = State.load(ws)
    split = next(s for s in plan(ws) if s.name == "split")
    assert not state.fresh(split)  # never ran
    (ws.root / "dataset" / "train").mkdir(parents=True)
    state.record(split)
    assert State.load(ws).fresh(split)
    (ws.root / "dataset" / "train" / "b.png").write_bytes(b"y")  # its output changed
    assert not State.load(ws).fresh(split)
    state.record(split)
    (ws.root / "images" / "dog" / "c.png").write_bytes(b"z")  # what it reads changed
    assert not State.load(ws).fresh(next(s for s in plan(ws) if s.name == "split"))
    (ws.root / ".edgewire" / "pipeline.json").write_text("{not json")
    with pytest.raises(ConfigError, match="remove it to run every step"):
        State.load(ws)


def test_pipeline_captures_and_splits_then_skips_what_is_up_to_date(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "ws", clips=2, clip_frames=10, settings="[split]\nseed = 1\n")
    root = str(sample.workspace.root)
    first = _edgewire("pipeline", "-w", root, "--to", "split")
    assert first.returncode == 0, first.stderr
    assert "edgewire project capture -w" in first.stdout and "done" in first.stdout
    assert all(len(sample.workspace.images(c)) == 20 for c in sample.workspace.classes)
    labels = (sample.workspace.root / "dataset" / "labels.txt").read_text().split()
    assert labels == ["one", "two", "zero"]
    again = _edgewire("pipeline", "-w", root, "--to", "split")
    assert again.returncode == 0 and again.stdout.count("up to date") == 2, again.stdout
    assert "capture" not in again.stdout.split("pipeline of")[0]  # nothing ran
    # A changed table runs its step again, and only that one.
    config = sample.workspace.root / CONFIG_FILE
    config.write_text(config.read_text().replace("seed = 1", "seed = 2"))
    third = _edgewire("pipeline", "-w", root, "--to", "split")
    assert (
        "edgewire project split" in third.stdout and "edgewire project capture" not in third.stdout
    )
    record = json.loads((sample.workspace.root / ".edgewire" / "pipeline.json").read_text())
    assert set(record["steps"]) == {"capture", "split"}


def test_a_failing_step_stops_the_pipeline_with_its_exit_code(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, "[capture.cat]\nsource = 'missing.avi'\ncount = 2\n")
    done = _edgewire("pipeline", "-w", str(ws.root))
    assert done.returncode not in (0, 1), done.stdout + done.stderr  # the capture's own code
    assert "step capture failed" in done.stderr and "it starts at capture" in done.stderr
    assert not (ws.root / ".edgewire" / "pipeline.json").exists()


def test_ctrl_c_stops_in_a_step_and_the_next_run_starts_there(tmp_path: Path) -> None:
    settings = "[train]\nmodel = 'mnist_cnn'\nsize = 16\nepochs = 2000\npatience = 0\n"
    sample = write_sample(tmp_path / "ws", clips=2, clip_frames=6, settings=settings)
    root = sample.workspace.root
    child = subprocess.Popen(
        [sys.executable, "-m", "edgewire.cli", "pipeline", "-w", str(root), "--to", "train"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        record = root / ".edgewire" / "pipeline.json"
        deadline = time.monotonic() + 120
        # Training has begun once the split is recorded and the run's folder exists.
        while not (record.is_file() and "split" in record.read_text() and (root / "runs").is_dir()):
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == 130, err
    assert "interrupted in step train" in err
    assert set(json.loads(record.read_text())["steps"]) == {"capture", "split"}
    plan_now = _edgewire("pipeline", "-w", str(root), "--to", "train", "--dry-run")
    assert (
        plan_now.stdout.count("up to date") == 2
        and "would run: edgewire train run" in plan_now.stdout
    )
