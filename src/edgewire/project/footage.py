"""Camera-like footage with real pixels, for tests and the demo (no camera here).

Each frame is a crop of one of the colour photographs that scikit-image and
scikit-learn ship (the MNIST-M set's: see ``edgewire.data.mnistm``; which one, and
where, depends on the seed only), panned a little from frame to frame, with a real MNIST-5k digit of the chosen class pasted
over it: moved along a path, scaled, blurred, under a changing light, with sensor
noise. Written as an MJPG ``.avi`` with OpenCV (``edgewire[camera]``), as a USB
webcam's stream would be.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from edgewire.errors import ConfigError, DependencyMissing


def cv2_module() -> Any:
    import os

    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # camera probing is noisy
    try:
        import cv2
    except ImportError as exc:
        raise DependencyMissing(
            "video needs OpenCV; install it with: pip install 'edgewire[camera]'"
        ) from exc
    return cv2


@functools.cache
def _digits() -> Any:
    from edgewire.data.datasets import load_dataset

    return load_dataset("mnist5k")


def frames(
    digit: int, *, count: int = 60, size: tuple[int, int] = (160, 120), seed: int = 0
) -> list[NDArray[np.uint8]]:
    """``count`` RGB frames (H×W×3) showing handwritten ``digit``s over a photograph."""
    from edgewire.data.mnistm import photographs

    if not 0 <= digit <= 9:
        raise ConfigError(f"a digit is 0..9, got {digit!r}")
    width, height = size
    # The scene depends on the seed alone: footage of every digit with one seed shares
    # its background, so a model cannot tell the classes apart by the photograph.
    scene = np.random.default_rng(seed)
    photo = photographs()[int(scene.integers(len(photographs())))]
    ph, pw = photo.shape[:2]
    scale = min(ph / height, pw / width) * 0.6
    cw, ch = int(width * scale), int(height * scale)
    x0, y0 = int(scene.integers(0, pw - cw)), int(scene.integers(0, ph - ch))
    rng = np.random.default_rng((seed, digit))
    mnist = _digits()
    pool = np.flatnonzero(mnist.y == digit)
    sample = mnist.x[int(rng.choice(pool)), 0]
    out = []
    for t in range(count):
        if t % 15 == 0:  # another writer's digit now and then
            sample = mnist.x[int(rng.choice(pool)), 0]
        dx = int(4 * np.sin(t / 9.0) * scale)
        crop = photo[y0 : y0 + ch, max(0, x0 + dx) : max(0, x0 + dx) + cw]
        frame = np.asarray(Image.fromarray(crop).resize((width, height)), dtype=np.float32)
        side = int(height * (0.55 + 0.15 * np.sin(t / 7.0)))
        glyph = (
            Image.fromarray(sample)
            .resize((side, side))
            .filter(ImageFilter.GaussianBlur(float(0.6 + 0.4 * abs(np.sin(t / 5.0)))))
        )
        ink = np.asarray(glyph, dtype=np.float32)[..., None] / 255.0
        cx = int((width - side) * (0.5 + 0.3 * np.sin(t / 11.0)))
        cy = int((height - side) * (0.5 + 0.2 * np.cos(t / 13.0)))
        patch = frame[cy : cy + side, cx : cx + side]
        frame[cy : cy + side, cx : cx + side] = patch * (1 - ink) + (255 - patch) * ink
        light = 0.8 + 0.3 * np.sin(t / 17.0)
        frame = frame * light + rng.normal(0, 6, frame.shape)
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def write_avi(path: Path, video: list[NDArray[np.uint8]], *, fps: float = 15.0) -> Path:
    """RGB frames to an MJPG ``.avi``."""
    cv2 = cv2_module()
    height, width = video[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise ConfigError(f"cannot write video {path}")
    try:
        for frame in video:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV wants BGR
    finally:
        writer.release()
    return path
