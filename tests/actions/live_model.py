"""A real model for live runs, with known weights: nearest centroid over footage frames.

``centroid_model`` writes an ONNX classifier (Flatten → Gemm → Softmax) whose class
``k`` scores by closeness to the mean frame of digit ``k``'s footage
(``edgewire.project.footage.frames``), as ``edgewire export`` would label it:
``labels``, ``preprocessing`` and ``edgewire.input_size`` in its metadata.
``segments_video`` writes those digits' footage one after another into an ``.avi``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from edgewire.project.footage import frames, write_avi

SIZE = (32, 24)  # width, height of the model's input
FRAME = (160, 120)
#: Sharpens the softmax of -distance²: scores near 1 for the closest centroid.
TEMPERATURE = 4.0


def _inputs(video: Sequence[np.ndarray]) -> np.ndarray:
    width, height = SIZE
    rows = [
        np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR),
                   np.float32).transpose(2, 0, 1).ravel() / 255.0
        for f in video
    ]  # fmt: skip
    return np.stack(rows)


def centroid_model(
    path: Path,
    digits: Sequence[int] = (0, 1, 2),
    *,
    count: int = 12,
    nan: bool = False,
    input_size: str | None = None,
    dynamic: bool = False,
) -> Path:
    """``nan``: every score NaN (0/0); ``input_size``: that ``edgewire.input_size`` text
    instead of the right one; ``dynamic``: the input's height and width left symbolic."""
    # Each digit's footage over a scene of its own (its seed): the centroids tell the
    # scenes apart, which is all a stand-in model for the run's machinery needs.
    centroids = np.stack(
        [_inputs(frames(d, count=count, size=FRAME, seed=d)).mean(0) for d in digits]
    )
    # -|x - c|² = 2 x·c - |c|² - |x|²; the last term is the same for every class.
    w = (2 * TEMPERATURE * centroids).astype(np.float32)
    b = (-TEMPERATURE * (centroids**2).sum(1)).astype(np.float32)
    width, height = SIZE
    dims: list[int | str] = ["batch", 3, "h", "w"] if dynamic else ["batch", 3, height, width]
    x = helper.make_tensor_value_info("input_0", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", len(digits)])
    if dynamic:  # any size: the mean colour of the frame, against the centroids' colours
        centroids = centroids.reshape(len(digits), 3, -1).mean(2)
        w = (2 * TEMPERATURE * centroids).astype(np.float32)
        b = (-TEMPERATURE * (centroids**2).sum(1)).astype(np.float32)
    flatten = (
        helper.make_node("ReduceMean", ["input_0"], ["flat"], axes=[2, 3], keepdims=0)
        if dynamic
        else helper.make_node("Flatten", ["input_0"], ["flat"], axis=1)
    )
    nodes = [
        flatten,
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    if nan:
        zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
        inits.append(zero)
        nodes += [
            helper.make_node("Mul", ["logits", "zero"], ["zeros"]),
            helper.make_node("Div", ["zeros", "zeros"], ["output_0"]),  # 0/0: NaN
        ]
    else:
        nodes.append(helper.make_node("Softmax", ["logits"], ["output_0"], axis=1))
    graph = helper.make_graph(nodes, "centroids", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "labels": json.dumps([str(d) for d in digits]),
        "preprocessing": json.dumps({"scale": 1 / 255, "mean": 0.0, "std": 1.0}),
        "edgewire.input_size": json.dumps([3, height, width]),
    }
    if input_size is not None:
        meta["edgewire.input_size"] = input_size
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def segments_video(path: Path, digits: Sequence[int], *, per_segment: int) -> Path:
    """The footage of each of ``digits`` for ``per_segment`` frames, one after another."""
    video = [f for d in digits for f in frames(d, count=per_segment, size=FRAME, seed=d)]
    return write_avi(path, video, fps=10.0)


#: A stand-in Jetson.GPIO that drives nothing and accepts every pin.
JETSON_OK = (
    "BOARD, OUT, LOW, HIGH = 10, 0, 0, 1\n"
    "def setwarnings(flag): pass\n"
    "def setmode(mode): pass\n"
    "def setup(channels, direction, initial=0): pass\n"
    "def output(channel, level): pass\n"
    "def cleanup(channels=None): pass\n"
)


def jetson_library(root: Path, body: str = JETSON_OK) -> None:
    """A stand-in Jetson.GPIO under ``root`` (put it on ``sys.path``): the real one's
    surface, none of its hardware, so a non-sim backend runs on any machine."""
    (root / "Jetson" / "GPIO").mkdir(parents=True)
    (root / "Jetson" / "__init__.py").write_text("")
    (root / "Jetson" / "GPIO" / "__init__.py").write_text(body)
