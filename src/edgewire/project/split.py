"""``train/ val/ test/`` and ``labels.txt`` from a workspace's images: stratified, seeded.

Each class's images (sorted by name, which is their content hash) are shuffled by a
generator seeded with the seed and the class, and cut by the ratios, every split
getting at least one image of every class; so the same images and seed always give
the same split, and adding a class does not move the others. ``labels.txt`` lists
the classes in the sorted folder order that training and inference use (a
``labels.txt`` out of that order is the classic way to get every prediction wrong).

The new split is written beside the old one and swapped in only when complete: a
refusal or a failure leaves the workspace as it was.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgewire.errors import ConfigError
from edgewire.project.workspace import DATASET, Workspace, replace_folder

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_RATIOS = (0.8, 0.1, 0.1)


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ConfigError(f"--ratios is three numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or any(not math.isfinite(p) or p < 0 for p in parts):
        raise ConfigError(f"--ratios is three numbers >= 0 like 0.8,0.1,0.1, got {text!r}")
    if abs(sum(parts) - 1.0) > 1e-6 or parts[0] == 0:
        raise ConfigError(f"--ratios must add up to 1 with a train share above 0, got {text!r}")
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class SplitReport:
    #: class -> images in train, val, test
    counts: dict[str, tuple[int, int, int]]
    labels: tuple[str, ...]
    folder: Path


def _counts(n: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    wanted = [i for i, r in enumerate(ratios) if r > 0]
    sizes = [0, 0, 0]
    for i in wanted[1:]:
        sizes[i] = max(1, round(n * ratios[i]))
    sizes[0] = n - sum(sizes)
    return sizes[0], sizes[1], sizes[2]


def split_workspace(
    ws: Workspace, *, ratios: tuple[float, float, float] = DEFAULT_RATIOS, seed: int = 0
) -> SplitReport:
    labels = tuple(sorted(ws.classes))
    needed = sum(1 for r in ratios if r > 0)
    plan: dict[str, list[list[Path]]] = {}
    too_few = []
    for name in labels:
        images = ws.images(name)
        counts = _counts(len(images), ratios)
        if len(images) < needed or min(c for c, r in zip(counts, ratios, strict=True) if r > 0) < 1:
            too_few.append(f"{name} ({len(images)})")
            continue
        key = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")
        order = np.random.default_rng(key).permutation(len(images))
        shuffled = [images[i] for i in order]
        a, b = counts[0], counts[0] + counts[1]
        plan[name] = [shuffled[:a], shuffled[a:b], shuffled[b:]]
    if too_few:
        raise ConfigError(
            f"too few images to give every split one: {', '.join(too_few)}; a "
            f"{'/'.join(f'{r:g}' for r in ratios)} split needs at least {needed} a class "
            "(capture or import more)"
        )
    target = ws.root / DATASET
    tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET}-", dir=ws.root))
    try:
        for name, parts in plan.items():
            for split, files in zip(SPLIT_NAMES, parts, strict=True):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for file in files:
                    shutil.copy2(file, folder / file.name)
        for split in SPLIT_NAMES:
            (tmp / split).mkdir(exist_ok=True)
        (tmp / "labels.txt").write_text("".join(f"{n}\n" for n in labels), "utf-8")
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    table = {name: (len(p[0]), len(p[1]), len(p[2])) for name, p in plan.items()}
    return SplitReport(counts=table, labels=labels, folder=target)
