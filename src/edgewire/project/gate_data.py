"""The samples a gated deploy is scored on, packed as .npz (``edgewire deploy --gate-data``,
the agent's ``POST /api/deploy``).

The source is a workspace (its ``dataset/test``), a train/val/test folder (its
``test``) or a plain image folder, resized to the model's input size (its
``edgewire.input_size`` metadata, else its input shape). The file is compressed and
kept within the agent's caps (agent/gate.py): when the images do not all fit, the same
number of each class is sent, the first of each in file order, and ``note`` is given
one line that says so.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgewire.agent.gate import MAX_GATE_BYTES, MAX_GATE_ROWS, MAX_GATE_UNPACKED
from edgewire.errors import ConfigError, DataError


def model_input_size(model: Path) -> tuple[int, int, int]:
    """(channels, height, width) the ONNX model at ``model`` takes."""
    import onnx

    if model.suffix != ".onnx":
        raise ConfigError(f"--gate-data needs an ONNX model, got {model.name!r}")
    proto = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "edgewire.input_size" in props:
        c, h, w = (int(d) for d in json.loads(props["edgewire.input_size"]))
        return c, h, w
    weights = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in weights]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(dims) != 4 or min(dims[1:]) < 1:
        raise ConfigError(
            f"{model.name} does not say its image size (input {dims}); export it with edgewire export"
        )
    return dims[1], dims[2], dims[3]


def pack_gate_data(
    source: Path,
    model: Path,
    *,
    max_bytes: int = MAX_GATE_BYTES,
    note: Callable[[str], None] | None = None,
) -> tuple[bytes, int]:
    """(the compressed .npz bytes, how many samples) for ``source`` at ``model``'s input
    size: all of them, or the most of a class-balanced subset that fit ``max_bytes``
    (then ``note`` gets one line saying how many and why)."""
    from edgewire.data.datasets import load_dataset

    c, h, w = model_input_size(model)
    if h != w:
        raise ConfigError(f"{model.name} takes {h}×{w} images; --gate-data resizes to squares")
    folder = Path(source)
    if (folder / "dataset" / "test").is_dir():  # a workspace
        folder = folder / "dataset"
    if not folder.is_dir():
        raise ConfigError(f"--gate-data {str(source)!r} is not a folder")
    if (folder / "test").is_dir():  # a train/val/test layout: its test images, by class
        folder = folder / "test"
    data = load_dataset(str(folder), image_size=h)
    x = data.x
    if x.shape[1] != c:
        if c == 1 and x.shape[1] == 3:  # the model is grey: as training converts colour
            x = x.astype(np.float32).mean(axis=1, keepdims=True).round().astype(np.uint8)
        else:
            raise DataError(
                f"--gate-data images have {x.shape[1]} channels; {model.name} takes {c}"
            )
    y, classes = data.y.astype(np.int64), np.array(data.classes, dtype=str)
    order = balanced_order(y)
    # What the agent unpacks: the arrays, plus a little for the .npy headers.
    room = (MAX_GATE_UNPACKED - classes.nbytes - 4096) // (x[0].nbytes + 8)
    n, why = len(y), ""
    for limit, reason in ((MAX_GATE_ROWS, f"the agent scores at most {MAX_GATE_ROWS}"),
                          (room, f"the most that unpack within {_size(MAX_GATE_UNPACKED)}")):  # fmt: skip
        if limit < n:
            n, why = _even(limit, y), reason
    while True:
        pick = np.sort(order[:n])
        body = _npz(x[pick], y[pick], classes)
        if len(body) <= max_bytes:
            break
        n2 = _even(min(n - 1, int(n * max_bytes / len(body) * 0.98)), y)  # compression varies
        if n2 < 1:
            raise DataError(f"one gate image is over {_size(max_bytes)} compressed")
        n, why = n2, f"the most that fit {_size(max_bytes)}"
    if n < len(y) and note is not None:
        note(f"gate: {n} of {len(y)} test images ({why})")
    return body, n


def balanced_order(y: np.ndarray) -> np.ndarray:
    """Indices taking each class's samples in turn (file order within a class): any
    prefix holds the same number of each class, until a class runs out."""
    by_class = np.argsort(y, kind="stable")
    counts = np.bincount(y)
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - starts[y[by_class]]
    order: np.ndarray = np.lexsort((y, rank))
    return order


def _even(n: int, y: np.ndarray) -> int:
    """``n`` rounded down to the same count of each class, while each class has that many."""
    counts = np.bincount(y)
    k = int(np.count_nonzero(counts))
    if k <= n <= k * int(counts[counts > 0].min()):
        return n - n % k
    return n


def _npz(x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.ascontiguousarray(x), y=y, classes=classes)
    return buffer.getvalue()


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
