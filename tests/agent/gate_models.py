"""Tiny classifiers with known accuracy, and gate images they are scored on.

``dark_bright(path, good=True)`` tells a dark 4×4 image from a bright one (its labels,
in its metadata: ``dark``, ``bright``); ``good=False`` always says ``dark`` (50 %).
The image folder sorts its classes ``bright``, ``dark``: the gate must match by name.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

LABELS = ("dark", "bright")


def dark_bright(path: Path, *, good: bool = True, labels: tuple[str, ...] = LABELS) -> Path:
    w = np.zeros((2, 16), np.float32)
    b = np.array([1.0, 0.0], np.float32)
    if good:
        w[0], w[1], b[:] = -1.0, 1.0, (8.0, -8.0)
    x = helper.make_tensor_value_info("input_0", TensorProto.FLOAT, ["batch", 1, 4, 4])
    y = helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Flatten", ["input_0"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["output_0"], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(nodes, "dark_bright", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"labels": json.dumps(list(labels)),
                                   "edgewire.input_size": "[1, 4, 4]"})  # fmt: skip
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def gate_folder(root: Path, *, extra_class: str | None = None, per_class: int = 6) -> Path:
    """An image folder: bright/ (white) and dark/ (black) 8×8 greys, resized by the CLI."""
    values = {"bright": 255, "dark": 0}
    if extra_class:
        values[extra_class] = 128
    for name, value in values.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((8, 8), value, np.uint8), "L").save(root / name / f"{i}.png")
    return root


def gate_npz(*, classes: tuple[str, ...] = ("bright", "dark"), n: int = 6) -> bytes:
    """The .npz the CLI sends: half bright, half dark, classes in folder (sorted) order."""
    x = np.concatenate([np.full((n, 1, 4, 4), 255, np.uint8), np.zeros((n, 1, 4, 4), np.uint8)])
    y = np.array([0] * n + [1] * n, np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y, classes=np.array(classes))
    return buffer.getvalue()


def zero_bomb(*, rows: int = 683, side: int = 1024) -> bytes:
    """A real np.savez_compressed-style .npz whose x is ``rows``×3×side×side zeros (2 GiB
    by default) in a few MiB: written in 1 MiB chunks, never whole in memory."""
    x_header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        x_header, {"descr": "|u1", "fortran_order": False, "shape": (rows, 3, side, side)}
    )
    small = io.BytesIO()
    np.savez_compressed(small, y=np.zeros(rows, np.int64), classes=np.array(LABELS))
    buffer = io.BytesIO()
    chunk = bytes(1 << 20)
    left = rows * 3 * side * side
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(x_header.getvalue())
            while left > 0:
                member.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        with zipfile.ZipFile(small) as rest:
            for name in rest.namelist():
                archive.writestr(name, rest.read(name))
    return buffer.getvalue()


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()
