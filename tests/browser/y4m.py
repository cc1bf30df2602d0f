"""YUV4MPEG2 files for Chromium's fake camera (``--use-file-for-fake-video-capture``).

A ``.y4m`` is one text header (``YUV4MPEG2 W.. H.. F15:1 Ip A1:1 C420jpeg``) and then,
per frame, ``FRAME`` and the I420 planes: Y at full size, then U and V at half size
each way. RGB becomes YCbCr by BT.601, the chroma averaged over each 2×2 block, at
studio range (Y 16..235, chroma 16..240): Chromium's fake camera reads a file as that
whatever its header says (written at full range, JPEG's, a frame came back with its
colours some 12 levels more saturated; at studio range within 2). The footage is :func:`edgewire.project.footage.frames`: MNIST digits
over photographs, as the sample workspace shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgewire.project.footage import frames

FPS = 15
SIZE = (96, 96)  # width, height: even, as 4:2:0 needs

Frame = NDArray[np.uint8]


def to_i420(frame: Frame) -> bytes:
    """One RGB frame (H×W×3 uint8, even sides) as I420 planes, BT.601 studio range."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"a frame is H×W×3 uint8, got {frame.shape} {frame.dtype}")
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"4:2:0 needs even sides, got {width}x{height}")
    r, g, b = (frame[..., i].astype(np.float64) for i in range(3))
    y = 16 + (0.299 * r + 0.587 * g + 0.114 * b) * 219 / 255
    cb = 128 + (-0.168736 * r - 0.331264 * g + 0.5 * b) * 224 / 255
    cr = 128 + (0.5 * r - 0.418688 * g - 0.081312 * b) * 224 / 255

    def half(plane: NDArray[np.float64]) -> NDArray[np.float64]:
        return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

    planes = (y, half(cb), half(cr))
    return b"".join(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)


def write_y4m(path: Path, video: Sequence[Frame], *, fps: int = FPS) -> Path:
    """``video`` (RGB frames, all one size) as a ``.y4m`` at ``fps``."""
    if not video:
        raise ValueError("a video needs at least one frame")
    height, width = video[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in video:
            if frame.shape[:2] != (height, width):
                raise ValueError(f"every frame is {width}x{height}, got {frame.shape}")
            out.write(b"FRAME\n")
            out.write(to_i420(frame))
    return path


def read_y4m(path: Path) -> list[Frame]:
    """The frames of a ``.y4m`` this module wrote, back as RGB (for checks)."""
    data = path.read_bytes()
    head, _, rest = data.partition(b"\n")
    fields = {t[:1]: t[1:] for t in head.split()[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    size = width * height * 3 // 2
    out = []
    marker = b"FRAME\n"
    while rest.startswith(marker):
        raw = np.frombuffer(rest[len(marker) : len(marker) + size], np.uint8)
        rest = rest[len(marker) + size :]
        y = (raw[: width * height].reshape(height, width).astype(np.float64) - 16) * 255 / 219
        quarter = (width // 2) * (height // 2)
        cb, cr = (
            raw[width * height + k * quarter : width * height + (k + 1) * quarter]
            .reshape(height // 2, width // 2)
            .repeat(2, 0)
            .repeat(2, 1)
            .astype(np.float64)
            - 128
            for k in range(2)
        )
        cb, cr = cb * 255 / 224, cr * 255 / 224
        rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
        out.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return out


def class_video(
    path: Path, digit: int, *, seconds: float = 4.0, size: tuple[int, int] = SIZE, seed: int = 0
) -> Path:
    """Footage of one class (``digit``), for capturing into a workspace class."""
    count = max(1, round(seconds * FPS))
    return write_y4m(path, frames(digit, count=count, size=size, seed=seed))


def changing_video(
    path: Path,
    digits: Sequence[int],
    *,
    segment_s: float = 3.0,
    size: tuple[int, int] = SIZE,
    seed: int = 0,
) -> tuple[Path, list[int]]:
    """Footage whose class changes every ``segment_s`` seconds (``digits`` in turn), for
    a live run; and the digit each frame shows. Chromium loops the file."""
    per_segment = max(1, round(segment_s * FPS))
    video: list[Frame] = []
    shown: list[int] = []
    for digit in digits:
        video += frames(digit, count=per_segment, size=size, seed=seed)
        shown += [digit] * per_segment
    return write_y4m(path, video), shown
