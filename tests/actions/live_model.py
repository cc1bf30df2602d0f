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


def centroid_model(path: Path, digits: Sequence[int] = (0, 1, 2), *, count: int = 12) -> Path:
    # Each digit's footage over a scene of its own (its seed): the centroids tell the
    # scenes apart, which is all a stand-in model for the run's machinery needs.
    centroids = np.stack(
        [_inputs(frames(d, count=count, size=FRAME, seed=d)).mean(0) for d in digits]
    )
    # -|x - c|² = 2 x·c - |c|² - |x|²; the last term is the same for every class.
    w = (2 * TEMPERATURE * centroids).astype(np.float32)
    b = (-TEMPERATURE * (centroids**2).sum(1)).astype(np.float32)
    width, height = SIZE
    x = helper.make_tensor_value_info("input_0", TensorProto.FLOAT, ["batch", 3, height, width])
    y = helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", len(digits)])
    nodes = [
        helper.make_node("Flatten", ["input_0"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["output_0"], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph(nodes, "centroids", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "labels": json.dumps([str(d) for d in digits]),
        "preprocessing": json.dumps({"scale": 1 / 255, "mean": 0.0, "std": 1.0}),
        "edgewire.input_size": json.dumps([3, height, width]),
    }
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def segments_video(path: Path, digits: Sequence[int], *, per_segment: int) -> Path:
    """The footage of each of ``digits`` for ``per_segment`` frames, one after another."""
    video = [f for d in digits for f in frames(d, count=per_segment, size=FRAME, seed=d)]
    return write_avi(path, video, fps=10.0)
