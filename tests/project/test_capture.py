"""Capture from generated footage: an MJPG video file, an image folder, an MJPEG stream
over HTTP; a missing camera is one line."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgewire.errors import ConfigError, ConnectError
from edgewire.project.capture import capture, parse_size
from edgewire.project.footage import frames, write_avi
from edgewire.project.workspace import Workspace
from tests.cli.cli_run import run_cli


@pytest.fixture(scope="module")
def footage() -> list[np.ndarray]:
    return frames(7, count=24, seed=1)


def test_footage_has_real_pixels_and_moves(footage: list[np.ndarray]) -> None:
    assert footage[0].shape == (120, 160, 3) and footage[0].dtype == np.uint8
    assert footage[0].std() > 20  # a photograph, not a flat fill
    assert np.abs(footage[0].astype(int) - footage[10].astype(int)).mean() > 3


def test_capture_from_a_video_file_keeps_count_and_size(
    tmp_path: Path, footage: list[np.ndarray]
) -> None:
    video = write_avi(tmp_path / "seven.avi", footage)
    ws = Workspace.init(tmp_path / "w", ["seven", "three"])
    done = capture(ws, "seven", str(video), count=10, size=(64, 48))
    assert done.saved == 10 and len(ws.images("seven")) == 10
    with Image.open(ws.images("seven")[0]) as image:
        assert image.size == (64, 48)
    # To the end of the file: the first ten frames again give the same bytes, kept once.
    again = capture(ws, "seven", str(video), size=(64, 48))
    assert (again.seen, again.saved, again.duplicates) == (24, 14, 10)
    assert len(ws.images("seven")) == 24


def test_capture_from_a_folder_and_refusals(tmp_path: Path, footage: list[np.ndarray]) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(footage[:6]):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    (folder / "readme.txt").write_text("skipped")
    ws = Workspace.init(tmp_path / "w", ["seven", "three"])
    assert capture(ws, "seven", str(folder)).saved == 6
    with pytest.raises(ConfigError, match="unknown class"):
        capture(ws, "eight", str(folder))
    with pytest.raises(ConnectError, match=r"no camera at /dev/video63"):
        capture(ws, "seven", "/dev/video63", count=1)
    with pytest.raises(ConfigError, match="needs --count N or --duration S"):
        capture(ws, "seven", "0")
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        parse_size("224")


class _Mjpeg(BaseHTTPRequestHandler):
    jpegs: list[bytes] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for jpeg in self.jpegs:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
            self.wfile.write(f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stream(footage: list[np.ndarray]) -> Iterator[str]:
    jpegs = []
    for frame in footage:
        out = io.BytesIO()
        Image.fromarray(frame).save(out, format="JPEG")
        jpegs.append(out.getvalue())
    _Mjpeg.jpegs = jpegs
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mjpeg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stream"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_capture_from_an_mjpeg_stream_with_the_cli(
    tmp_path: Path,
    stream: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = tmp_path / "w"
    Workspace.init(ws, ["seven", "three"])
    code, out = run_cli(capsys, monkeypatch, "project", "capture", "-w", str(ws), "--class",
                        "seven", "--source", stream, "--count", "8", "--size", "32x32")  # fmt: skip
    assert code == 0 and "seven: 8 frame(s) saved" in out, out
    code, out = run_cli(capsys, monkeypatch, "project", "capture", "-w", str(ws), "--class",
                        "seven", "--source", "/dev/video63", "--count", "1")  # fmt: skip
    assert code == 7 and "no camera at /dev/video63" in out, out
