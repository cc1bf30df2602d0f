"""Live runs fed by their caller (source ``push``, a browser's camera): a real agent on
loopback, a real ONNX classifier, frames POSTed as JPEG/PNG; the label follows the class
pushed, the newest frame wins, bad bodies are one line, the run ends when frames stop."""

from __future__ import annotations

import hashlib
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from edgewire.agent import live, live_frames
from edgewire.agent.live_api import MAX_FRAME_BODY
from edgewire.errors import ConfigError
from edgewire.project.footage import frames
from tests.actions.live_model import FRAME, centroid_model
from tests.agent.test_live_runs import DIGITS, SIM, api, events, wait_for
from tests.helpers import RunningAgent, agent_in_thread, upload

TOKEN = "push-token-1234"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return centroid_model(tmp_path_factory.mktemp("push") / "digits.onnx", DIGITS)


@pytest.fixture(scope="module")
def footage() -> dict[int, list[bytes]]:
    """JPEGs of each digit's footage, over the scene the model's centroids were made of."""
    return {d: [_jpeg(f) for f in frames(d, count=6, size=FRAME, seed=d)] for d in DIGITS}


@pytest.fixture
def agent(tmp_path: Path, model: Path) -> Iterator[RunningAgent]:
    with agent_in_thread(tmp_path / "data", max_queue_delay_ms=1.0,
                         run_source_allow=frozenset({str(tmp_path / "shots")})) as running:  # fmt: skip
        assert upload(running, model, name="digits").status_code == 201
        yield running


def _jpeg(frame: np.ndarray, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format=fmt)
    return out.getvalue()


def start_push(agent: RunningAgent, **body: Any) -> dict[str, Any]:
    answer = api(agent, "POST", "/api/runs",
                 json={"model": "digits", "source": "push", "actions": SIM, **body})  # fmt: skip
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def push(agent: RunningAgent, run_id: str, data: bytes, kind: str = "image/jpeg",
         **kwargs: Any) -> httpx.Response:  # fmt: skip
    headers = {"Content-Type": kind, **kwargs.pop("headers", {})}
    return api(agent, "POST", f"/api/runs/{run_id}/frame", content=data, headers=headers,
               **kwargs)  # fmt: skip


def push_classified(agent: RunningAgent, run_id: str, data: bytes) -> dict[str, Any]:
    """Push one frame and wait until the run has classified it."""
    before = api(agent, "GET", f"/api/runs/{run_id}").json()["frames"]
    answer = push(agent, run_id, data)
    assert answer.status_code == 202, answer.text
    return wait_for(agent, run_id, lambda d: d["frames"] > before)


def test_the_label_follows_the_class_pushed(
    agent: RunningAgent, footage: dict[int, list[bytes]]
) -> None:
    started = start_push(agent, rate=50)
    run_id = started["id"]
    assert started["source"] == "push" and started["labels"] == ["0", "1", "2"]
    for digit in (0, 2, 1):
        for jpeg in footage[digit]:
            push_classified(agent, run_id, jpeg)
    stopped = api(agent, "POST", f"/api/runs/{run_id}/stop").json()
    assert stopped["state"] == "stopped" and stopped["frames"] == 18
    assert stopped["class_pins"] == {"0": 12, "1": 16, "2": 18}
    assert stopped["labels"] == ["0", "1", "2"]
    stream = [data for _, kind, data in events(agent, run_id) if kind == "frame"]
    labels = [e["label"] for e in stream]
    assert labels == ["0"] * 6 + ["2"] * 6 + ["1"] * 6, labels
    for event in stream:
        assert len(event["scores"]) == 3 and abs(sum(event["scores"]) - 1) < 1e-3
        assert event["scores"][event["class"]] == event["score"]
    # The sim pins went with the classes: 12, then 18, then 16.
    highs = [t["pin"] for t in stopped["pin_transitions"] if t["level"] == 1]
    assert highs == [12, 18, 16]
    assert set(stopped["pin_levels"].values()) == {0}


def test_the_newest_frame_wins_and_the_rest_are_counted_dropped(
    agent: RunningAgent, footage: dict[int, list[bytes]]
) -> None:
    run_id = start_push(agent, rate=1)["id"]  # one frame a second: the pushes outrun it
    answers = [push(agent, run_id, jpeg).json() for jpeg in footage[1]]
    assert [a["frame"] for a in answers] == [1, 2, 3, 4, 5, 6]
    dropped = [a["dropped"] for a in answers]
    assert dropped == sorted(dropped) and dropped[-1] >= 3, dropped
    # Every frame pushed is classified or dropped, never both; the last one is classified.
    done = wait_for(agent, run_id, lambda d: d["frames"] + d["source_dropped"] == 6)
    assert done["frames"] <= 2 and done["per_class"] == {"1": done["frames"]}
    api(agent, "POST", f"/api/runs/{run_id}/stop")


def test_the_newest_frame_is_shown_as_a_jpeg(
    agent: RunningAgent, footage: dict[int, list[bytes]]
) -> None:
    run_id = start_push(agent, rate=50)["id"]
    before = api(agent, "GET", f"/api/runs/{run_id}/frame")
    assert before.status_code == 404 and before.json()["code"] == "no_frame"
    big = np.zeros((720, 1280, 3), np.uint8)
    big[:, :640] = (200, 30, 30)
    push_classified(agent, run_id, _jpeg(big, "PNG"))
    shown = api(agent, "GET", f"/api/runs/{run_id}/frame")
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    assert shown.headers["x-edgewire-frame"] == "1"
    with Image.open(io.BytesIO(shown.content)) as image:
        assert image.format == "JPEG" and image.size == (640, 360)  # capped at 640 a side
        left = np.asarray(image.convert("RGB"))[:, :300].reshape(-1, 3).mean(0)
    assert np.abs(left - (200, 30, 30)).max() < 12
    push_classified(agent, run_id, footage[0][0])
    again = api(agent, "GET", f"/api/runs/{run_id}/frame")
    assert again.headers["x-edgewire-frame"] == "2"
    with Image.open(io.BytesIO(again.content)) as image:
        assert image.size == (FRAME[0], FRAME[1])
    api(agent, "POST", f"/api/runs/{run_id}/stop")
    # A finished run keeps showing its last frame.
    kept = api(agent, "GET", f"/api/runs/{run_id}/frame")
    assert kept.status_code == 200 and kept.content == again.content


def test_a_file_run_shows_its_frames_but_takes_none(
    agent: RunningAgent, tmp_path: Path, footage: dict[int, list[bytes]]
) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    for i, jpeg in enumerate(footage[2]):
        (shots / f"{i}.jpg").write_bytes(jpeg)
    answer = api(agent, "POST", "/api/runs", json={"model": "digits", "source": str(shots),
                                                   "rate": 50, "actions": SIM, "loop": True})  # fmt: skip
    assert answer.status_code == 201, answer.text
    run_id = answer.json()["id"]
    refused = push(agent, run_id, footage[2][0])
    assert refused.status_code == 400
    assert 'only a run started with source "push" takes frames' in refused.json()["error"]
    wait_for(agent, run_id, lambda d: d["frames"] >= 2)
    shown = api(agent, "GET", f"/api/runs/{run_id}/frame")
    assert shown.status_code == 200 and shown.content[:2] == b"\xff\xd8"
    api(agent, "POST", f"/api/runs/{run_id}/stop")


def test_an_unknown_run_is_not_found(agent: RunningAgent, footage: dict[int, list[bytes]]) -> None:
    for run_id in ("0123456789ab", "not-a-run"):
        answer = push(agent, run_id, footage[0][0])
        assert answer.status_code == 404 and answer.json()["code"] == "run_not_found"
        assert api(agent, "GET", f"/api/runs/{run_id}/frame").status_code == 404


@pytest.mark.parametrize(
    ("body", "kind", "status", "words"),
    [
        (b"not an image at all", "image/jpeg", 400, "is not one whole JPEG or PNG image"),
        (b"", "image/jpeg", 400, "the frame (0 bytes) is not one whole JPEG or PNG image"),
        ("truncated", "image/jpeg", 400, "is not one whole JPEG or PNG image"),
        ("gif", "image/gif", 400, "is not one whole JPEG or PNG image"),
        ("bomb", "image/png", 413, "pixels is over the limit of"),
        ("jpeg", "application/octet-stream", 400, "sent with Content-Type image/jpeg"),
        ("jpeg", "", 400, "sent with Content-Type image/jpeg"),
    ],
)
def test_a_bad_frame_is_one_line_and_the_run_goes_on(
    agent: RunningAgent,
    footage: dict[int, list[bytes]],
    body: bytes | str,
    kind: str,
    status: int,
    words: str,
) -> None:
    jpeg = footage[0][0]
    made = {
        "truncated": jpeg[: len(jpeg) // 2],
        "gif": _jpeg(np.zeros((8, 8, 3), np.uint8), "GIF"),
        # A small file that says it is 5000x5000: refused from its header, never decoded.
        "bomb": _jpeg(np.zeros((5000, 5000), np.uint8)[..., None].repeat(3, 2), "PNG"),
        "jpeg": jpeg,
    }
    data = made[body] if isinstance(body, str) else body
    run_id = start_push(agent, rate=50)["id"]
    answer = push(agent, run_id, data, kind=kind)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error and "\n" not in error
    push_classified(agent, run_id, jpeg)  # the run still takes a good one
    api(agent, "POST", f"/api/runs/{run_id}/stop")


def test_an_oversize_body_is_refused_before_it_is_read(
    agent: RunningAgent, footage: dict[int, list[bytes]]
) -> None:
    run_id = start_push(agent, rate=50)["id"]
    with socket.create_connection(("127.0.0.1", agent.http), timeout=10) as conn:
        # The head alone: the answer comes without one byte of the body sent.
        conn.sendall(
            f"POST /api/runs/{run_id}/frame HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: image/jpeg\r\nContent-Length: {MAX_FRAME_BODY + 1}\r\n\r\n".encode()
        )
        answer = b""
        while b"}" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
    text = answer.decode("latin-1")
    assert text.startswith("HTTP/1.1 413"), text
    assert "over the limit of 4194304" in text
    at_limit = footage[0][0] + b"\0" * (MAX_FRAME_BODY - len(footage[0][0]))
    assert len(at_limit) == MAX_FRAME_BODY
    answer = push(agent, run_id, at_limit)  # read, and decoded (JPEG ignores the tail)
    assert answer.status_code == 202, answer.text
    api(agent, "POST", f"/api/runs/{run_id}/stop")


def test_bodies_draw_on_the_shared_budget(tmp_path: Path, model: Path) -> None:
    with agent_in_thread(tmp_path / "data", max_buffered_bytes=64 * 1024,
                         max_frame_bytes=1024) as running:  # fmt: skip
        assert upload(running, model, name="digits").status_code == 201
        run_id = start_push(running)["id"]
        answer = push(running, run_id, b"\xff\xd8" + b"\0" * 100_000)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "too many request bodies" in answer.json()["error"]


def test_frames_need_the_token(
    tmp_path: Path, model: Path, footage: dict[int, list[bytes]]
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with agent_in_thread(tmp_path / "data", token=TOKEN, max_queue_delay_ms=1.0) as running:
        data = model.read_bytes()
        put = httpx.put(f"http://127.0.0.1:{running.http}/api/models/digits", content=data,
                        params={"sha256": hashlib.sha256(data).hexdigest(),
                                "filename": model.name}, headers=auth, timeout=60)  # fmt: skip
        assert put.status_code == 201, put.text
        answer = api(running, "POST", "/api/runs", headers=auth,
                     json={"model": "digits", "source": "push", "actions": SIM})  # fmt: skip
        run_id = answer.json()["id"]
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-123"},
            {"Authorization": "Bearer"},
        ):
            refused = push(running, run_id, footage[0][0], headers=headers)
            assert refused.status_code == 401, refused.text
            assert api(running, "GET", f"/api/runs/{run_id}/frame",
                       headers=headers).status_code == 401  # fmt: skip
        assert push(running, run_id, footage[0][0], headers=auth).status_code == 202
        stop = api(running, "POST", f"/api/runs/{run_id}/stop", headers=auth).json()
        assert stop["state"] == "stopped"


def test_a_run_with_no_frames_ends(
    agent: RunningAgent, footage: dict[int, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_frames, "NO_FRAMES_S", 0.6)
    quiet = start_push(agent)["id"]
    fed = start_push(agent, rate=50)["id"]
    push_classified(agent, fed, footage[0][0])
    for run_id, frames_seen in ((quiet, 0), (fed, 1)):
        done = wait_for(agent, run_id, lambda d: d["state"] != "running")
        assert (done["state"], done["reason"], done["frames"]) == ("finished", "no frames",
                                                                    frames_seen)  # fmt: skip
        late = push(agent, run_id, footage[0][0])
        assert late.status_code == 400 and "has ended (no frames)" in late.json()["error"]


def test_a_stopped_push_run_lets_go_at_once(agent: RunningAgent) -> None:
    run_id = start_push(agent)["id"]
    began = time.monotonic()
    stopped = api(agent, "POST", f"/api/runs/{run_id}/stop").json()
    assert stopped["state"] == "stopped" and time.monotonic() - began < 2.0
    run = agent.agent.live.get(run_id)
    assert run is not None and not run.feed._thread.is_alive()


def test_too_many_decoding_at_once_is_busy(
    agent: RunningAgent, footage: dict[int, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "MAX_DECODING", 0)
    run_id = start_push(agent)["id"]
    answer = push(agent, run_id, footage[0][0])
    assert answer.status_code == 503 and "being decoded" in answer.json()["error"]
    api(agent, "POST", f"/api/runs/{run_id}/stop")


def test_the_push_slot_keeps_the_newest() -> None:
    source = live_frames.PushSource()
    first = np.zeros((2, 2, 3), np.uint8)
    second = np.ones((2, 2, 3), np.uint8)
    assert source.push(first) == (1, 0)
    assert source.push(second) == (2, 1)
    it = source.frames()
    assert next(it) is second
    source.close()
    began = time.monotonic()
    assert next(it, None) is None
    assert time.monotonic() - began < 1.0
    with pytest.raises(ConfigError, match="has ended"):
        source.push(first)
