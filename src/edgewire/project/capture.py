"""Frames from a camera, a stream, a video file or an image folder, into a workspace class.

Sources: ``0`` or ``/dev/videoN`` (OpenCV, V4L2), an ``http(s)://`` MJPEG stream (read
here, multipart JPEG, no OpenCV needed), an ``rtsp://`` URL (OpenCV), a video file
(OpenCV) or a folder of images. Frames are resized to ``--size`` when given and stored
as JPEG under their content names, so two captures never collide.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from edgewire.errors import ConfigError, ConnectError, DataError, PeerTimeout
from edgewire.project.footage import cv2_module
from edgewire.project.workspace import Workspace

Frame = NDArray[np.uint8]  # H×W×3 RGB
#: Largest JPEG part an MJPEG stream may send (a 4K frame is well under this).
MAX_PART_BYTES = 16 * 1024 * 1024
_DEVICE = re.compile(r"(?:/dev/video)?(\d{1,3})")


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    found = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text.strip())
    if found is None or not all(0 < int(v) <= 8192 for v in found.groups()):
        raise ConfigError(f"--size is WIDTHxHEIGHT such as 224x224, got {text!r}")
    return int(found[1]), int(found[2])


def open_source(source: str, *, timeout: float = 10.0) -> Iterator[Frame]:
    """The frames of ``source`` (see the module docstring); one clear line if it has none."""
    if source.startswith(("http://", "https://")):
        return _mjpeg(source, timeout=timeout)
    path = Path(source)
    if path.is_dir():
        return _folder(path)
    device = _DEVICE.fullmatch(source)
    if device is not None and not path.is_file():
        return _opencv(source, int(device[1]), camera=True)
    if source.startswith("rtsp://") or path.is_file():
        return _opencv(source, source, camera=False)
    raise ConfigError(
        f"no such source {source!r}: a camera (0, /dev/video0), a URL, a video file or a folder"
    )


def _folder(path: Path) -> Iterator[Frame]:
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        try:
            with Image.open(file) as image:
                yield np.asarray(image.convert("RGB"))
        except OSError:
            continue  # not an image: skipped, as import does


def _opencv(name: str, target: int | str, *, camera: bool) -> Iterator[Frame]:
    cv2 = cv2_module()
    capture = cv2.VideoCapture(target, cv2.CAP_V4L2) if camera else cv2.VideoCapture(target)
    if not capture.isOpened():
        if camera:
            raise ConnectError(
                f"no camera at {name}: is it plugged in, and free? (ls /dev/video*; "
                "another program may hold it)"
            )
        raise DataError(f"cannot read video {name!r} (not a video, or a codec OpenCV lacks)")

    def frames() -> Iterator[Frame]:
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(frame[:, :, ::-1])
        finally:
            capture.release()

    return frames()


def _mjpeg(url: str, *, timeout: float) -> Iterator[Frame]:
    """A ``multipart/x-mixed-replace`` stream of JPEGs (what IP cameras and
    ``mjpg-streamer`` send), read part by part with a cap on each part."""
    import httpx

    try:
        client = httpx.Client(timeout=timeout, follow_redirects=False)
        response = client.send(client.build_request("GET", url), stream=True)
    except httpx.TimeoutException as exc:
        raise PeerTimeout(f"{url}: no answer within {timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise ConnectError(f"cannot reach {url}: {exc}") from exc
    kind = response.headers.get("content-type", "")
    boundary = re.search(r"boundary=\"?([^\";]+)", kind)
    if response.status_code != 200 or boundary is None:
        response.close()
        client.close()
        raise DataError(f"{url} is not an MJPEG stream (HTTP {response.status_code}, {kind!r})")
    marker = b"--" + boundary[1].encode().removeprefix(b"--")

    def frames() -> Iterator[Frame]:
        buf = b""
        try:
            for chunk in response.iter_bytes():
                buf += chunk
                while True:
                    start = buf.find(marker)
                    head_end = buf.find(b"\r\n\r\n", start)
                    if start < 0 or head_end < 0:
                        break
                    length = re.search(rb"(?i)content-length:\s*(\d+)", buf[start:head_end])
                    if length is None or int(length[1]) > MAX_PART_BYTES:
                        raise DataError(f"{url}: a part without a usable Content-Length")
                    end = head_end + 4 + int(length[1])
                    if len(buf) < end:
                        break
                    jpeg, buf = buf[head_end + 4 : end], buf[end:]
                    try:
                        with Image.open(io.BytesIO(jpeg)) as image:
                            yield np.asarray(image.convert("RGB"))
                    except OSError:
                        continue
                if len(buf) > 2 * MAX_PART_BYTES:
                    raise DataError(f"{url}: no part boundary in {len(buf)} bytes")
        except httpx.HTTPError as exc:
            raise ConnectError(f"{url}: the stream broke off ({exc})") from exc
        finally:
            response.close()
            client.close()

    return frames()


@dataclass(frozen=True)
class Captured:
    saved: int
    duplicates: int
    seen: int


def capture(
    ws: Workspace,
    name: str,
    source: str,
    *,
    count: int | None = None,
    duration: float | None = None,
    every: float = 0.0,
    size: tuple[int, int] | None = None,
    on_frame: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Captured:
    """Store frames of ``source`` in class ``name`` until ``count`` are saved, ``duration``
    seconds pass or the source ends; at most one frame each ``every`` seconds."""
    ws.class_dir(name)  # an unknown class is refused before a camera is opened
    if count is None and duration is None and not Path(source).exists():
        raise ConfigError("a live source needs --count N or --duration S")
    started = clock()
    last = -float("inf")
    saved = duplicates = seen = 0
    for frame in open_source(source):
        seen += 1
        now = clock()
        if duration is not None and now - started >= duration:
            break
        if now - last < every:
            continue
        last = now
        image = Image.fromarray(frame)
        if size is not None:
            image = image.resize(size)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=92)
        _, new = ws.add_image(name, out.getvalue(), ".jpg")
        saved += new
        duplicates += not new
        if on_frame is not None:
            on_frame(saved)
        if count is not None and saved >= count:
            break
    return Captured(saved=saved, duplicates=duplicates, seen=seen)
