"""Image folders: one sub-folder of images per class, or the ai_nano split layout.

Two layouts are read:

- ``root/<class>/*.png`` (png, jpg, jpeg, bmp): classes are the sorted folder names;
- ``root/{train,val,test}/<class>/...`` with ``root/labels.txt`` naming the
  classes one per line, in label order (the layout ai_nano's capture tool
  writes): the ``train/`` split is read unless another is asked for. Without
  ``labels.txt`` the sorted folder names under ``train/`` are the classes.

Images are read in sorted order, converted to grayscale when every image is
grayscale (Pillow mode ``L`` or ``1``; in the split layout, every image of every
split, so that the splits of one data set agree) and to RGB otherwise, and resized to a
square ``image_size`` with bilinear filtering (aspect ratio is not kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from edgewire.errors import ConfigError, DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
SPLITS = frozenset({"train", "val", "test"})
LABELS_FILE = "labels.txt"
_GRAY_MODES = frozenset({"L", "1"})
MAX_IMAGE_SIZE = 4096


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def is_split_layout(root: Path) -> bool:
    """Whether ``root`` holds the ai_nano ``train/val/test`` layout."""
    if not (root / "train").is_dir():
        return False
    return (root / LABELS_FILE).is_file() or {p.name for p in _subdirs(root)} <= SPLITS


def _read_labels(path: Path) -> tuple[str, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class names ({exc})") from exc
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names repeat: {names!r}")
    return names


def class_folders(root: Path, *, split: str = "train") -> tuple[tuple[str, ...], list[Path]]:
    """The class names and their image folders under ``root`` (either layout; ``split``
    picks the split of the ``train/val/test`` layout)."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if is_split_layout(root):
        base = root / split
        if not base.is_dir():
            raise DataError(f"{root}: has no {split}/ split")
        found = [p.name for p in _subdirs(base)]
        labels = root / LABELS_FILE
        names = _read_labels(labels) if labels.is_file() else tuple(found)
        extra = sorted(set(found) - set(names))
        if extra:
            raise DataError(f"{base}: class folders {extra} are not listed in {labels}")
    else:
        base = root
        names = tuple(p.name for p in _subdirs(root))
    if not names:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>.png)")
    folders = [base / name for name in names]
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: missing the folder of class {folder.name!r}")
    return names, folders


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc


def load_image_folder(
    root: Path, *, image_size: int, split: str = "train"
) -> tuple[NDArray[np.uint8], NDArray[np.int64], tuple[str, ...]]:
    """Images (N×C×S×S uint8), labels and class names from an image folder (``split``
    of the ``train/val/test`` layout)."""
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be in 1..{MAX_IMAGE_SIZE}, got {image_size!r}")
    names, folders = class_folders(root, split=split)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(folders):
        found = _images_in(folder)
        if not found:
            raise DataError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    # First pass reads only headers: the channel count must be known for all.
    gray = True
    for path in _all_splits(root, names) if is_split_layout(root) else files:
        with _open(path) as img:
            gray = gray and img.mode in _GRAY_MODES
    mode, channels = ("L", 1) if gray else ("RGB", 3)
    x = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    for i, path in enumerate(files):
        with _open(path) as img:
            try:
                pixels = img.convert(mode).resize(
                    (image_size, image_size), Image.Resampling.BILINEAR
                )
            except (OSError, Image.DecompressionBombError) as exc:
                raise DataError(f"{path}: cannot decode image ({exc})") from exc
        arr = np.asarray(pixels, dtype=np.uint8)
        x[i] = arr[None] if gray else arr.transpose(2, 0, 1)
    return x, np.asarray(labels, dtype=np.int64), names


def _all_splits(root: Path, names: tuple[str, ...]) -> list[Path]:
    return [
        path
        for split in sorted(SPLITS)
        for name in names
        if (root / split / name).is_dir()
        for path in _images_in(root / split / name)
    ]


def resize_images(x: NDArray[np.uint8], image_size: int) -> NDArray[np.uint8]:
    """Resize uint8 N×C×H×W images (C 1 or 3) to N×C×S×S with bilinear filtering."""
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be in 1..{MAX_IMAGE_SIZE}, got {image_size!r}")
    n, channels = x.shape[:2]
    if channels not in (1, 3):
        raise DataError(f"can only resize 1- or 3-channel images, got {channels} channels")
    out = np.empty((n, channels, image_size, image_size), dtype=np.uint8)
    for i in range(n):
        img = Image.fromarray(x[i, 0] if channels == 1 else x[i].transpose(1, 2, 0))
        resized = np.asarray(img.resize((image_size, image_size), Image.Resampling.BILINEAR))
        out[i] = resized[None] if channels == 1 else resized.transpose(2, 0, 1)
    return out
