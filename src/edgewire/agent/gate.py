"""Gated deploys: samples sent with an upload, on which the new version must score well
enough before its alias moves.

    PUT /api/gate-data?sha256=HEX   body: .npz with uint8 x (N×C×H×W), int64 y, str classes

The file is streamed under a cap, checked against its sha256 and kept as
``DATA_DIR/gate/<sha256>.npz`` until an upload that names it (``gate=<sha256>``) uses it.
Before any array is read, the zip's declared sizes and each ``.npy`` header (dtype,
shape) are checked, so a compressed file that unpacks to gigabytes is refused without
allocating them. It is read with ``allow_pickle=False``; its classes are matched by
name against the model's ``labels``, so a folder sorted differently still scores right.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from edgewire.errors import ConfigError, DataError, GateRefused
from edgewire.serve.model import ModelVersion

GATE_DIR = "gate"
#: The largest gate file accepted (compressed), what it may unpack to, and the most
#: samples scored from one; images are N×C×H×W with C 1 or 3 and H, W up to MAX_GATE_SIDE.
MAX_GATE_BYTES = 64 << 20
MAX_GATE_UNPACKED = 256 << 20
MAX_GATE_ROWS = 20_000
MAX_GATE_SIDE = 1024
#: Gate files kept at once (each is used by one upload, then removed).
MAX_GATE_FILES = 16
if TYPE_CHECKING:
    from edgewire.data.datasets import Dataset

_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gate:
    """What an upload asked for: the samples and the two thresholds."""

    data: Path
    min_accuracy: float | None = None
    no_worse_than: float | None = None  # points (percent) below the current version


def check_id(value: str) -> str:
    if not _HEX.match(value):
        raise ConfigError(f"gate must be the sha256 of gate data sent first, got {value!r}")
    return value


def gate_query(
    sha256: str, *, min_accuracy: float | None, no_worse_than: float | None
) -> dict[str, str]:
    """The upload's query parameters that name gate data ``sha256`` and its thresholds
    (what :func:`gate_from_query` reads back)."""
    params = {"gate": sha256}
    if min_accuracy is not None:
        params["min_accuracy"] = repr(min_accuracy)
    if no_worse_than is not None:
        params["no_worse_than"] = repr(no_worse_than)
    return params


def gate_from_query(data_dir: Path, params: dict[str, str]) -> Gate | None:
    """The Gate an upload's query asks for, or None; ConfigError for a bad value."""
    raw = params.get("gate") or None
    min_accuracy = _number(params.get("min_accuracy"), "min_accuracy", 0.0, 1.0)
    no_worse = _number(params.get("no_worse_than"), "no_worse_than", 0.0, 100.0)
    if raw is None:
        if min_accuracy is not None or no_worse is not None:
            raise ConfigError("min_accuracy and no_worse_than need gate=<sha256 of gate data>")
        return None
    path = data_dir / GATE_DIR / f"{check_id(raw)}.npz"
    if not path.is_file():
        raise ConfigError(f"no gate data {raw[:12]}…; PUT it to /api/gate-data first")
    return Gate(data=path, min_accuracy=min_accuracy, no_worse_than=no_worse)


def _number(raw: str | None, what: str, low: float, high: float) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # also NaN
        raise ConfigError(f"{what} must be a number in {low:g}..{high:g}, got {raw!r}")
    return value


def check_gate_file(path: Path) -> None:
    """Refuse, from the zip directory and the .npy headers alone, a gate file that does
    not hold uint8 x (N×C×H×W), int y of N and str classes within the caps."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {i.filename: i for i in archive.infolist()}
            unpacked = sum(i.file_size for i in members.values())
            if unpacked > MAX_GATE_UNPACKED:
                raise DataError(f"gate data unpacks to {unpacked >> 20} MiB, over the "
                                f"{MAX_GATE_UNPACKED >> 20} MiB limit; send fewer samples")  # fmt: skip
            if not {"x.npy", "y.npy", "classes.npy"} <= set(members):
                raise DataError("gate data needs arrays x, y and classes")
            headers = {}
            for key in ("x", "y", "classes"):
                info = members[f"{key}.npy"]
                with archive.open(info) as member:
                    headers[key] = _npy_header(member, key, declared=info.file_size)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"gate data is not a readable .npz without pickles: {exc}") from None
    (x_shape, x_dtype), (y_shape, y_dtype), (c_shape, c_dtype) = headers.values()
    if (
        x_dtype != np.uint8
        or len(x_shape) != 4
        or y_dtype not in (np.int64, np.int32)
        or (y_shape != x_shape[:1])
    ):
        raise DataError(f"gate data must be uint8 x N×C×H×W and int64 y of N, got "
                        f"{x_dtype} {list(x_shape)} and {y_dtype} {list(y_shape)}")  # fmt: skip
    if not 1 <= x_shape[0] <= MAX_GATE_ROWS:
        raise DataError(f"gate data has {x_shape[0]} samples; send 1..{MAX_GATE_ROWS}")
    if x_shape[1] not in (1, 3) or max(x_shape[2:]) > MAX_GATE_SIDE:
        raise DataError(f"gate images must be 1 or 3 channels of at most {MAX_GATE_SIDE}×"
                        f"{MAX_GATE_SIDE}, got {list(x_shape[1:])}")  # fmt: skip
    if c_dtype.kind != "U" or len(c_shape) != 1 or not 1 <= c_shape[0] <= MAX_GATE_ROWS:
        raise DataError("gate data's classes must be a list of names")


def _npy_header(
    member: IO[bytes], key: str, *, declared: int
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    """(shape, dtype) from the header of one .npy member, its data left unread."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported .npy version {version} for {key!r}")
    if dtype.hasobject:
        raise DataError(f"gate data's {key!r} holds Python objects; it is read without pickles")
    if fortran or any(d < 0 for d in shape):
        raise DataError(f"gate data's {key!r} must be a C-ordered array")
    if math.prod(shape) * dtype.itemsize > declared:
        raise DataError(f"gate data's {key!r} is shorter than its header says")
    return tuple(shape), dtype


def read_gate_data(path: Path, labels: tuple[str, ...] | None, version: ModelVersion) -> Dataset:
    """The samples at ``path`` as a Dataset, classes renumbered to the model's ``labels``."""
    from edgewire.data.datasets import Dataset

    check_gate_file(path)  # before anything is allocated
    try:
        with np.load(path, allow_pickle=False) as npz:
            x, y, classes = npz["x"], npz["y"].astype(np.int64), npz["classes"]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"gate data is not a readable .npz without pickles: {exc}") from None
    if y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"gate data's y must be in 0..{len(classes) - 1}")
    names = [str(c) for c in classes]
    if labels is None:
        raise DataError(f"{version.label} has no labels in its metadata; the gate cannot "
                        "match classes by name (export it with edgewire export)")  # fmt: skip
    unknown = [n for n in names if n not in labels]
    if unknown:
        raise DataError(
            f"gate class {unknown[0]!r} is not one {version.label} knows "
            f"(its labels: {', '.join(labels)}); leave that folder out of the gate data"
        )
    order = np.array([labels.index(n) for n in names], dtype=np.int64)
    return Dataset(x=np.ascontiguousarray(x), y=order[y], classes=tuple(labels), name="gate data")


def score(
    gate: Gate, new: ModelVersion, current: ModelVersion | None
) -> tuple[float, float | None]:
    """(new accuracy, current accuracy) on the gate data; GateRefused when the new one fails."""
    from edgewire.agent.retrain import accuracy

    data = read_gate_data(gate.data, new.labels, new)
    new_acc, cur_acc, against = accuracy(new, data), None, ""
    if current is not None:
        cur_acc = accuracy(current, read_gate_data(gate.data, current.labels, current))
        against = f", the served version {current.version} {100 * cur_acc:.1f}%"
    shown = f"version {new.version} scored {100 * new_acc:.1f}%"
    n = len(data.y)
    scores = {"accuracy": new_acc, "current_accuracy": cur_acc, "samples": n}
    if gate.min_accuracy is not None and new_acc < gate.min_accuracy:
        raise GateRefused(f"gate refused {new.name}: {shown}{against} on {n} samples, under "
                          f"--min-accuracy {gate.min_accuracy:g}", details=scores)  # fmt: skip
    if cur_acc is not None and new_acc < cur_acc - (gate.no_worse_than or 0.0) / 100:
        raise GateRefused(f"gate refused {new.name}: {shown}{against} on {n} samples, more than "
                          f"{gate.no_worse_than or 0:g} points worse", details=scores)  # fmt: skip
    return new_acc, cur_acc
