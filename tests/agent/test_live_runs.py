"""Live runs on a real agent: a real model on a generated video whose class changes; the
sim pins follow it; a model swap mid-run; stop; refusals; the event stream and its resume."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from edgewire.errors import ConfigError, ModelError
from tests.actions.live_model import centroid_model, jetson_library, segments_video
from tests.helpers import RunningAgent, agent_in_thread, upload

PER_SEGMENT = 20
DIGITS = (0, 1, 2)
PINS = {"0": 12, "1": 16, "2": 18}
SIM = {"run": {"pins": "sim", "debounce": 2, "hold_s": 0.0}}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("live")
    return {
        "model": centroid_model(tmp / "digits.onnx", DIGITS),
        "model2": centroid_model(tmp / "digits2.onnx", DIGITS, count=6),
        "video": segments_video(tmp / "segments.avi", DIGITS, per_segment=PER_SEGMENT),
    }


@pytest.fixture
def agent(tmp_path: Path, media: dict[str, Path]) -> Iterator[RunningAgent]:
    record = tmp_path / "commands.txt"
    actions = tmp_path / "actions.toml"
    code = f"import os; open({str(record)!r}, 'a').write(os.environ['EDGEWIRE_CLASS'] + chr(10))"
    actions.write_text(
        '[run]\npins = "sim"\ndebounce = 2\nhold_s = 0.0\n'
        f"[classes.1]\npin = 16\ncommand = {json.dumps([sys.executable, '-c', code])}\n"
    )
    with agent_in_thread(tmp_path / "data", max_queue_delay_ms=1.0, actions_file=actions,
                         run_post_allow=frozenset({"http://127.0.0.1:9/allowed/"}),
                         run_source_allow=allow_media(media)) as running:  # fmt: skip
        assert upload(running, media["model"], name="digits").status_code == 201
        yield running


def allow_media(media: dict[str, Path], *more: str) -> frozenset[str]:
    """The folder of the test footage (and ``more``) as the agent's run_source_allow."""
    return frozenset({str(media["video"].parent), *more})


def api(agent: RunningAgent, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"http://127.0.0.1:{agent.http}{path}", timeout=30, **kwargs)


def start(agent: RunningAgent, **body: Any) -> str:
    answer = api(agent, "POST", "/api/runs", json={"model": "digits", **body})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def events(agent: RunningAgent, run_id: str, after: int = 0) -> list[tuple[int, str, Any]]:
    """The run's event stream to its end (the summary)."""
    found: list[tuple[int, str, Any]] = []
    url = f"http://127.0.0.1:{agent.http}/api/runs/{run_id}/events?after={after}"
    with httpx.stream("GET", url, timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in stream.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(": ")
                fields[key] = value
                continue
            if fields:
                found.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
    return found


def wait_for(agent: RunningAgent, run_id: str, ok: Any) -> dict[str, Any]:
    for _ in range(600):
        detail: dict[str, Any] = api(agent, "GET", f"/api/runs/{run_id}").json()
        if ok(detail):
            return detail
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never got there: {detail}")


def test_the_sim_pins_follow_the_classes_shown(agent: RunningAgent, media: dict[str, Path]) -> None:
    run_id = start(agent, source=str(media["video"]), rate=25, actions=SIM)
    stream = events(agent, run_id)
    frames = [data for _, kind, data in stream if kind == "frame"]
    summary = stream[-1]
    assert summary[1] == "summary" and summary[2]["state"] == "finished"
    assert summary[2]["reason"] == "end of source" and summary[2]["frames"] == 3 * PER_SEGMENT
    detail = api(agent, "GET", f"/api/runs/{run_id}").json()
    moves = [(t["pin"], t["level"]) for t in detail["pin_transitions"]]
    assert moves == [(12, 1), (12, 0), (16, 1), (16, 0), (18, 1), (18, 0)]
    # The pin high after each frame, against the digit that frame showed.
    high: int | None = None
    by_frame = {t["frame"]: t for t in detail["pin_transitions"] if t["level"] == 1}
    right = 0
    for event in frames:
        if event["frame"] in by_frame:
            high = by_frame[event["frame"]]["pin"]
        shown = DIGITS[(event["frame"] - 1) // PER_SEGMENT]
        right += high == PINS[str(shown)]
    fraction = right / len(frames)
    print(f"sim pins right on {right}/{len(frames)} frames ({fraction:.0%})")
    assert fraction >= 0.9  # a debounce of 2 costs a frame or two at each change
    assert {"frame", "label", "class", "score", "fired", "latency_ms"} <= set(frames[0])
    assert set(detail["pin_levels"].values()) == {0}


def test_a_model_replaced_mid_run_keeps_it_going(
    agent: RunningAgent, media: dict[str, Path]
) -> None:
    run_id = start(agent, source=str(media["video"]), rate=40, actions=SIM, loop=True,
                   max_frames=80)  # fmt: skip
    wait_for(agent, run_id, lambda d: d["frames"] >= 5)
    assert upload(agent, media["model2"], name="digits").status_code == 201
    done = wait_for(agent, run_id, lambda d: d["state"] != "running")
    assert (done["state"], done["frames"], done["errors"]) == ("finished", 80, 0)
    assert done["versions"] == [1, 2]


def test_stop_leaves_every_pin_low(agent: RunningAgent, media: dict[str, Path]) -> None:
    run_id = start(agent, source=str(media["video"]), rate=25, actions=SIM, loop=True)
    wait_for(agent, run_id, lambda d: 1 in d["pin_levels"].values())
    stopped = api(agent, "POST", f"/api/runs/{run_id}/stop").json()
    assert stopped["state"] == "stopped"
    assert set(stopped["pin_levels"].values()) == {0}
    listed = api(agent, "GET", "/api/runs").json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
    metrics = api(agent, "GET", "/metrics").text
    assert 'edgewire_gpio_pin_level{pin="12"} 0.0' in metrics
    assert 'edgewire_gpio_transitions_total{level="1",pin="12"}' in metrics


def test_a_command_from_the_network_is_refused(agent: RunningAgent, media: dict[str, Path]) -> None:
    actions = {"classes": {"1": {"command": ["/bin/touch", "/tmp/x"]}}}
    answer = api(agent, "POST", "/api/runs",
                 json={"model": "digits", "source": str(media["video"]), "actions": actions})  # fmt: skip
    assert answer.status_code == 403
    assert "agent's own actions file (edgewire agent --actions FILE)" in answer.json()["error"]
    posted = {"classes": {"1": {"post": "http://127.0.0.1:9/elsewhere"}}}
    answer = api(agent, "POST", "/api/runs",
                 json={"model": "digits", "source": str(media["video"]), "actions": posted})  # fmt: skip
    assert answer.status_code == 403 and "run_post_allow" in answer.json()["error"]
    assert api(agent, "GET", "/api/runs").json()["runs"] == []


def test_the_agent_file_runs_its_commands(
    agent: RunningAgent, media: dict[str, Path], tmp_path: Path
) -> None:
    run_id = start(agent, source=str(media["video"]), rate=25, actions="agent")
    stream = events(agent, run_id)
    results = [data for _, kind, data in stream if kind == "action"]
    assert [(r["kind"], r["class"], r["returncode"]) for r in results] == [("command", "1", 0)]
    assert (tmp_path / "commands.txt").read_text() == "1\n"
    # Only class 1 has a pin in that file: 16 went high once and low again.
    detail = api(agent, "GET", f"/api/runs/{run_id}").json()
    assert [(t["pin"], t["level"]) for t in detail["pin_transitions"]] == [(16, 1), (16, 0)]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"source": "{media}/no-such.avi"}, 400, "no such source '{media}/no-such.avi'"),
        ({"source": "x", "rate": 0}, 400, "rate must be a number of Hz over 0"),
        ({"source": "x", "model": "nope"}, 404, "model 'nope' is not served"),
        ({"source": "x", "colour": 1}, 400, "unknown field 'colour'"),
    ],
)
def test_bad_requests_are_one_clear_line(
    agent: RunningAgent, media: dict[str, Path], body: dict[str, Any], status: int, words: str
) -> None:
    folder = str(media["video"].parent)
    body = {k: v.replace("{media}", folder) if isinstance(v, str) else v for k, v in body.items()}
    words = words.replace("{media}", folder)
    answer = api(agent, "POST", "/api/runs", json={"model": "digits", **body})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"] and "\n" not in answer.json()["error"]


def test_the_event_stream_resumes_after_an_event(
    agent: RunningAgent, media: dict[str, Path]
) -> None:
    run_id = start(agent, source=str(media["video"]), rate=50, actions=SIM, max_frames=10)
    whole = events(agent, run_id)
    assert [seq for seq, _, _ in whole] == list(range(1, len(whole) + 1))
    assert whole[-1][1] == "summary" and whole[-1][2]["frames"] == 10
    rest = events(agent, run_id, after=5)
    assert rest == whole[5:]
    assert api(agent, "GET", f"/api/runs/{run_id}/events?after=x").status_code == 400
    assert api(agent, "GET", "/api/runs/0123456789ab").status_code == 404


def test_a_bad_agent_actions_file_stops_the_agent_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "actions.toml"
    bad.write_text("[classes.a]\npin = 'twelve'\n")
    with (
        pytest.raises(ConfigError, match="pin must be a whole number"),
        agent_in_thread(tmp_path / "data", actions_file=bad),
    ):
        pass


def test_runs_need_the_token(tmp_path: Path) -> None:
    with agent_in_thread(tmp_path / "data", token="live-token-123") as running:
        assert api(running, "GET", "/api/runs").status_code == 401
        assert api(running, "POST", "/api/runs", json={}).status_code == 401
        auth = {"Authorization": "Bearer live-token-123"}
        assert api(running, "GET", "/api/runs", headers=auth).json() == {"runs": []}


def test_an_agent_that_stops_lowers_the_pins_of_its_runs(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    with agent_in_thread(tmp_path / "data", max_queue_delay_ms=1.0, max_live_runs=1,
                         run_source_allow=allow_media(media)) as running:  # fmt: skip
        assert upload(running, media["model"], name="digits").status_code == 201
        run_id = start(running, source=str(media["video"]), rate=25, actions=SIM, loop=True)
        wait_for(running, run_id, lambda d: 1 in d["pin_levels"].values())
        busy = api(running, "POST", "/api/runs",
                   json={"model": "digits", "source": str(media["video"])})  # fmt: skip
        assert busy.status_code == 503 and "max_live_runs" in busy.json()["error"]
        run = running.agent.live.get(run_id)
        assert run is not None
    assert run.state == "stopped" and not any(run.pins.levels.values())
    assert run.events[-1][1] == "summary"


class _Mjpeg(BaseHTTPRequestHandler):
    """An IP camera: multipart JPEGs as fast as it can, until the server closes."""

    jpegs: list[bytes] = []
    closing = threading.Event()

    def do_GET(self) -> None:  # http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for i in itertools.count():
                if self.closing.is_set():
                    return
                jpeg = self.jpegs[i % len(self.jpegs)]
                head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                self.wfile.write(head.encode() + jpeg + b"\r\n")
                time.sleep(0.005)
        except OSError:
            return  # the agent closed the stream

    def log_message(self, *args: object) -> None:
        pass


def test_a_stream_gives_its_newest_frame_and_drops_the_rest(
    tmp_path: Path, media: dict[str, Path]
) -> None:
    from edgewire.project.footage import frames

    _Mjpeg.jpegs = []
    for frame in frames(1, count=4, size=(160, 120), seed=1):
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format="JPEG")
        _Mjpeg.jpegs.append(out.getvalue())
    _Mjpeg.closing.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mjpeg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        camera = f"http://127.0.0.1:{server.server_address[1]}"
        url = camera + "/stream"
        with agent_in_thread(tmp_path / "data", max_queue_delay_ms=1.0,
                             run_source_allow=frozenset({camera + "/stream"})) as agent:  # fmt: skip
            assert upload(agent, media["model"], name="digits").status_code == 201
            # Same host, another port or path: not the camera the owner named.
            for other in (camera + "/streams", camera + "/stream/../admin",
                          f"http://127.0.0.1:{server.server_address[1] + 1}/stream"):  # fmt: skip
                refused = api(agent, "POST", "/api/runs", json={"model": "digits", "source": other})
                assert refused.status_code == 403, (other, refused.text)
            run_id = start(agent, source=url, rate=10, actions=SIM, max_frames=8)
            summary = events(agent, run_id)[-1][2]
    finally:
        _Mjpeg.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert (summary["state"], summary["frames"]) == ("finished", 8)
    assert summary["per_class"] == {"1": 8}
    assert summary["source_dropped"] > 0  # the stream is faster than 10 Hz


@pytest.mark.parametrize(
    "source",
    [
        "/etc/hostname",
        "{media}/../outside.avi",
        "{media}/escape.avi",  # a symlink out of the allowed folder
        "http://169.254.169.254/latest/meta-data/",
        "rtsp://127.0.0.1:8554/internal",
        "file:///etc/hostname",
    ],
)
def test_a_source_off_the_allow_list_is_refused(
    agent: RunningAgent, media: dict[str, Path], source: str
) -> None:
    folder = media["video"].parent
    escape = folder / "escape.avi"
    if not escape.is_symlink():
        escape.symlink_to(media["video"].parent.parent / "outside.avi")
        (media["video"].parent.parent / "outside.avi").write_bytes(media["video"].read_bytes())
    source = source.replace("{media}", str(folder))
    answer = api(agent, "POST", "/api/runs", json={"model": "digits", "source": source})
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert "--run-source-allow" in error and "\n" not in error
    assert api(agent, "GET", "/api/runs").json()["runs"] == []


def test_a_camera_needs_no_allow_entry(agent: RunningAgent) -> None:
    # No camera here: whatever the answer, it is not the allow-list's refusal.
    answer = api(agent, "POST", "/api/runs", json={"model": "digits", "source": "/dev/video63"})
    assert answer.status_code != 403, answer.text


def test_with_no_allow_list_files_are_refused(tmp_path: Path, media: dict[str, Path]) -> None:
    with agent_in_thread(tmp_path / "data") as running:
        assert upload(running, media["model"], name="digits").status_code == 201
        answer = api(running, "POST", "/api/runs",
                     json={"model": "digits", "source": str(media["video"])})  # fmt: skip
        assert answer.status_code == 403 and "--run-source-allow" in answer.json()["error"]


def test_a_model_scoring_nan_keeps_the_stream_going(
    agent: RunningAgent, media: dict[str, Path], tmp_path: Path
) -> None:
    nan = centroid_model(tmp_path / "nan.onnx", DIGITS, count=2, nan=True)
    assert upload(agent, nan, name="nan").status_code == 201
    run_id = start(agent, model="nan", source=str(media["video"]), rate=50, actions=SIM,
                   max_frames=5)  # fmt: skip
    stream = events(agent, run_id)
    frames = [data for _, kind, data in stream if kind == "frame"]
    assert [f["score"] for f in frames] == [None] * 5
    assert stream[-1][1] == "summary" and stream[-1][2]["frames"] == 5


def test_a_looped_source_with_no_frames_ends_the_run(
    agent: RunningAgent, media: dict[str, Path]
) -> None:
    empty = media["video"].parent / "empty"
    empty.mkdir(exist_ok=True)
    run_id = start(agent, source=str(empty), rate=50, actions=SIM, loop=True)
    done = wait_for(agent, run_id, lambda d: d["state"] != "running")
    assert done["state"] == "failed"
    assert done["reason"] == f"source {str(empty)!r} gave no frames"


@pytest.mark.parametrize(
    ("size", "dynamic", "status"),
    [
        ("not json", False, 201),  # the static input shape is used instead
        ("[3, 100000, 100000]", False, 201),
        ("[3, 24, 32]", True, 201),
        ("not json", True, ModelError.http_status),
        ('["3", 24, 32]', True, ModelError.http_status),
        ("[2, 24, 32]", True, ModelError.http_status),
        ("[3, 100000, 100000]", True, ModelError.http_status),
        ("[3, 24]", True, ModelError.http_status),
    ],
)
def test_a_bad_input_size_falls_back_or_is_one_line(
    agent: RunningAgent,
    media: dict[str, Path],
    tmp_path: Path,
    size: str,
    dynamic: bool,
    status: int,
) -> None:
    model = centroid_model(tmp_path / "m.onnx", DIGITS, count=2, input_size=size, dynamic=dynamic)
    assert upload(agent, model, name="sized").status_code == 201
    answer = api(agent, "POST", "/api/runs", json={"model": "sized", "source": str(media["video"]),
                                                   "actions": SIM, "max_frames": 2})  # fmt: skip
    assert answer.status_code == status, answer.text
    if status != 201:
        error = answer.json()["error"]
        assert "edgewire.input_size" in error and "\n" not in error
    else:
        done = wait_for(agent, answer.json()["id"], lambda d: d["state"] != "running")
        assert (done["state"], done["frames"]) == ("finished", 2)


class _SlowCamera(BaseHTTPRequestHandler):
    """A camera that answers only once ``release`` is set: its run stays 'opening'."""

    asked = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:  # http.server's name
        self.asked.set()
        self.release.wait(20)
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        jpeg = _Mjpeg.jpegs[0]
        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
        with contextlib.suppress(OSError):
            for _ in range(3):
                self.wfile.write(head.encode() + jpeg + b"\r\n")

    def log_message(self, *args: object) -> None:
        pass


def test_two_runs_starting_at_once_cannot_share_real_pins(
    tmp_path: Path, media: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    jetson_library(tmp_path / "lib")
    monkeypatch.delitem(sys.modules, "Jetson.GPIO", raising=False)
    monkeypatch.delitem(sys.modules, "Jetson", raising=False)
    out = io.BytesIO()
    Image.new("RGB", (160, 120)).save(out, format="JPEG")
    _Mjpeg.jpegs = [out.getvalue()]
    _SlowCamera.asked.clear()
    _SlowCamera.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowCamera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    camera = f"http://127.0.0.1:{server.server_address[1]}/cam"
    real = {"run": {"pins": "jetson"}, "classes": {"0": {"pin": 12}}}
    try:
        with agent_in_thread(tmp_path / "data", run_source_allow=frozenset({camera})) as agent:
            assert upload(agent, media["model"], name="digits").status_code == 201
            body = {"model": "digits", "source": camera, "actions": real, "max_frames": 2}
            first: dict[str, httpx.Response] = {}
            opener = threading.Thread(
                target=lambda: first.update(r=api(agent, "POST", "/api/runs", json=body))
            )
            opener.start()
            assert _SlowCamera.asked.wait(20)  # the first run holds pin 12, opening its camera
            second = api(agent, "POST", "/api/runs", json=body)
            _SlowCamera.release.set()
            opener.join(30)
            assert first["r"].status_code == 201, first["r"].text
            assert second.status_code == 503, second.text
            assert "pins [12]" in second.json()["error"]
            wait_for(agent, first["r"].json()["id"], lambda d: d["state"] != "running")
    finally:
        _SlowCamera.release.set()
        server.shutdown()
        server.server_close()
    for name in ("Jetson.GPIO", "Jetson"):
        sys.modules.pop(name, None)
