"""The browser test machinery itself: Chromium's fake camera plays a ``.y4m`` written by
``y4m.py``, ``getUserMedia`` on a loopback page (a secure context) gets its frames, and
a canvas sample of one has the colours the file holds."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser.conftest import Launch
from tests.browser.y4m import FPS, changing_video, read_y4m, write_y4m

#: Draws the camera's frames on a canvas and says the mean colour of each half.
PAGE = """<!doctype html>
<meta charset="utf-8">
<video id="v" autoplay muted playsinline></video>
<canvas id="c"></canvas>
<script>
async function sample() {
  const stream = await navigator.mediaDevices.getUserMedia({video: true});
  const video = document.getElementById("v");
  video.srcObject = stream;
  await new Promise(ok => video.onplaying = ok);
  await new Promise(ok => setTimeout(ok, 300));
  const canvas = document.getElementById("c");
  const w = video.videoWidth, h = video.videoHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0);
  const data = ctx.getImageData(0, 0, w, h).data;
  const halves = [[0, 0, 0, 0], [0, 0, 0, 0]];
  for (let i = 0; i < w * h; i++) {
    const half = halves[(i % w) < w / 2 ? 0 : 1];
    half[0] += data[4 * i]; half[1] += data[4 * i + 1]; half[2] += data[4 * i + 2]; half[3]++;
  }
  stream.getTracks().forEach(t => t.stop());
  return {width: w, height: h, secure: window.isSecureContext,
          halves: halves.map(([r, g, b, n]) => [r / n, g / n, b / n])};
}
sample().then(r => window.result = r, e => window.result = {error: String(e)});
</script>
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def page_url(tmp_path: Path) -> Iterator[str]:
    """The sampling page, served on loopback by a tiny server in a thread."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def sample(launch: Launch, y4m: Path, url: str, shot: Path) -> dict[str, Any]:
    browser = launch(y4m)
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("window.result !== undefined", timeout=10_000)
    result: dict[str, Any] = page.evaluate("window.result")
    page.screenshot(path=str(shot))
    browser.close()
    assert "error" not in result, json.dumps(result)
    return result


def test_the_fake_camera_plays_the_y4m(
    launch_browser: Launch, page_url: str, tmp_path: Path, screenshots_dir: Path
) -> None:
    # Two halves of two colours, the same in every frame: whichever frame the page gets.
    left, right = (200, 60, 40), (40, 120, 210)
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:, :48], frame[:, 48:] = left, right
    y4m = write_y4m(tmp_path / "halves.y4m", [frame] * FPS)
    back = read_y4m(y4m)[0]  # what the file holds, after 4:2:0 and rounding
    result = sample(launch_browser, y4m, page_url, screenshots_dir / "fake-camera.png")
    assert result["secure"] is True
    assert (result["width"], result["height"]) == (96, 64)
    for got, want in zip(result["halves"], (back[:, :48], back[:, 48:]), strict=True):
        # The chroma at the seam is shared by both halves: a few levels of tolerance.
        assert np.abs(np.asarray(got) - want.reshape(-1, 3).mean(0)).max() < 6, result
    assert np.abs(back[0, 0].astype(int) - left).max() <= 2  # the file keeps the colours


def test_footage_frames_reach_the_page(
    launch_browser: Launch, page_url: str, tmp_path: Path, screenshots_dir: Path
) -> None:
    y4m, shown = changing_video(tmp_path / "footage.y4m", [0, 1], segment_s=1.0)
    assert len(shown) == 2 * FPS
    video = read_y4m(y4m)
    assert len(video) == len(shown) and video[0].shape == (96, 96, 3)
    result = sample(launch_browser, y4m, page_url, screenshots_dir / "fake-footage.png")
    got = np.asarray(result["halves"])
    # Whichever frame was drawn, it is near one of the file's frames, not black or noise.
    nearest = min(
        np.abs(
            got - np.stack([f[:, :48].reshape(-1, 3).mean(0), f[:, 48:].reshape(-1, 3).mean(0)])
        ).max()
        for f in video
    )
    assert nearest < 12, (result, nearest)
