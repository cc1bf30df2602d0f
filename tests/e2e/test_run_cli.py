"""``edgewire run`` and ``edgewire runs`` against a real agent process started with
``--actions``: JSON lines per frame and the summary last; its command ran; refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.actions.live_model import centroid_model, segments_video
from tests.e2e.conftest import EDGEWIRE, StartAgent


def edgewire(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEWIRE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def test_run_json_follows_the_run_to_its_summary(tmp_path: Path, start_agent: StartAgent) -> None:
    record = tmp_path / "seen.txt"
    code = f"open({str(record)!r}, 'a').write('seen' + chr(10))"
    actions = tmp_path / "actions.toml"
    actions.write_text(
        '[run]\npins = "sim"\ndebounce = 2\nhold_s = 0.0\n'
        f"[classes.1]\npin = 16\ncommand = {json.dumps([sys.executable, '-c', code])}\n"
    )
    agent = start_agent(tmp_path / "data", "--actions", str(actions),
                        "--run-source-allow", f"{tmp_path / 'videos'},http://127.0.0.1:9/cam")  # fmt: skip
    on = f"127.0.0.1:{agent.ports['http']}"
    model = centroid_model(tmp_path / "digits.onnx", (0, 1, 2), count=6)
    (tmp_path / "videos").mkdir()
    video = segments_video(tmp_path / "videos" / "seg.avi", (0, 1, 2), per_segment=8)
    deployed = edgewire("deploy", str(model), "--to", on, "--name", "digits")
    assert deployed.returncode == 0, deployed.stderr

    done = edgewire("run", "--on", on, "--model", "digits", "--source", str(video),
                    "--rate", "40", "--actions", "agent", "--max-frames", "20", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    frames = [line for line in lines if line["event"] == "frame"]
    assert [f["frame"] for f in frames] == list(range(1, 21))
    assert {"frame", "label", "class", "score", "fired"} <= set(frames[0])
    summary = lines[-1]
    assert summary["event"] == "summary" and summary["state"] == "finished"
    assert summary["frames"] == 20 and summary["per_class"]["1"] >= 6
    fired = [f for frame in frames for f in frame["fired"]]
    assert {"kind": "pin", "pin": 16, "level": 1} in fired
    assert record.read_text() == "seen\n"

    listed = edgewire("runs", "--on", on, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["runs"][0]["id"] == summary["id"]

    # Without --json: a line per frame, the summary last.
    plain = edgewire("run", "--on", on, "--model", "digits", "--source", str(video),
                     "--rate", "40", "--max-frames", "4")  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    out = plain.stdout.splitlines()
    assert [line.split()[:2] for line in out[:4]] == [["frame", str(i)] for i in range(1, 5)]
    assert "finished (4 frames): 4 frames at" in out[-1] and "frame to pin" in out[-1]

    # Detached, it keeps running until `runs --stop`.
    started = edgewire("run", "--on", on, "--model", "digits", "--source", str(video),
                       "--loop", "--detach", "--json")  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["id"]
    stopped = edgewire("runs", "--on", on, "--stop", run_id)
    assert stopped.returncode == 0 and f"run {run_id} stopped; every pin low" in stopped.stdout
    missing = edgewire("runs", "--on", on, "--stop", "0123456789ab")
    assert missing.returncode == 6 and "no live run '0123456789ab'" in missing.stderr

    # A source off --run-source-allow: refused, one line naming the flag.
    for source in (str(actions), "http://127.0.0.1:9/admin"):
        refused = edgewire("run", "--on", on, "--model", "digits", "--source", source)
        assert refused.returncode == 9, refused.stderr
        assert "--run-source-allow" in refused.stderr and source in refused.stderr


def test_run_refuses_a_file_with_commands(tmp_path: Path) -> None:
    actions = tmp_path / "mine.toml"
    actions.write_text('[classes.a]\ncommand = ["/bin/true"]\n')
    refused = edgewire("run", "--on", "127.0.0.1:9", "--model", "m", "--source", "0",
                       "--actions", str(actions))  # fmt: skip
    assert refused.returncode == 2
    assert "they run only from the agent's own actions file" in refused.stderr
