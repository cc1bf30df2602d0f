"""Tiny ONNX models with known weights, built with ``onnx.helper`` (no torch).

Every model takes ``input_0`` (float32, [batch, in_features]) and gives
``output_0`` (float32, [batch, out_features]), the names the seed's Nano
exports used. The batch dimension is dynamic.

- :func:`linear_model`: ``softmax(x @ W.T + b)``; :func:`expected` computes it.
- :func:`model_with_external_data`: the same model with ``W`` in a separate file.
- :func:`broken_model`: passes the ONNX checker, fails on its first run.
- :func:`image_model`: the linear model behind a [batch, 1, 28, 28] input.
- :func:`huge_input_model`: valid, but a row of input would take 4 TiB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "input_0"
OUTPUT = "output_0"
OPSET = 17

Array = npt.NDArray[np.float32]


def weights_for(
    *, in_features: int = 784, out_features: int = 10, seed: int = 0
) -> tuple[Array, Array]:
    """The (W [out, in], b [out]) that the models below use for ``seed``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.05, size=(out_features, in_features)).astype(np.float32)
    b = rng.normal(0.0, 0.1, size=(out_features,)).astype(np.float32)
    return w, b


def expected(x: npt.NDArray[np.floating], w: Array, b: Array) -> npt.NDArray[np.float64]:
    """What the linear model answers for ``x``: ``softmax(x @ W.T + b)`` in float64."""
    logits = x.astype(np.float64) @ w.T.astype(np.float64) + b.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _graph(in_features: int, out_features: int, initializers: list[TensorProto]) -> onnx.GraphProto:
    x = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", in_features])
    y = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", out_features])
    nodes = [
        helper.make_node("Gemm", [INPUT, "W", "b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1),
    ]
    return helper.make_graph(nodes, "linear", [x], [y], initializer=initializers)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    # Stay loadable by the installed onnxruntime whatever onnx's newest IR is.
    model.ir_version = 8
    return model


def linear_model(
    path: Path, *, in_features: int = 784, out_features: int = 10, seed: int = 0
) -> tuple[Array, Array]:
    """Write ``softmax(x @ W.T + b)`` to ``path``; returns (W, b)."""
    w, b = weights_for(in_features=in_features, out_features=out_features, seed=seed)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    model = _model(_graph(in_features, out_features, inits))
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())
    return w, b


def model_with_external_data(
    path: Path,
    location: str,
    *,
    write_data: bool = True,
    in_features: int = 784,
    out_features: int = 10,
    seed: int = 0,
) -> tuple[Array, Array]:
    """The linear model with ``W`` stored as external data at ``location``.

    ``location`` is written into the model as it is (hostile ones too); the raw
    little-endian bytes of ``W`` go to ``path.parent / location`` when
    ``write_data`` (folders created), else nowhere. Returns (W, b).
    """
    w, b = weights_for(in_features=in_features, out_features=out_features, seed=seed)
    raw = w.astype("<f4").tobytes()
    weight = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=w.shape)
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model = _model(_graph(in_features, out_features, [weight, numpy_helper.from_array(b, "b")]))
    path = Path(path)
    if write_data:
        data = path.parent / location
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(raw)
    path.write_bytes(model.SerializeToString())
    return w, b


def broken_model(path: Path, *, in_features: int = 784, out_features: int = 10) -> None:
    """Write a model that the ONNX checker accepts but that fails on every run.

    It gathers columns past the end of its input: shapes infer fine, and only
    running it finds the indices out of range.
    """
    x = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", in_features])
    y = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", out_features])
    indices = np.arange(in_features + 1000, in_features + 1000 + out_features, dtype=np.int64)
    graph = helper.make_graph(
        [helper.make_node("Gather", [INPUT, "idx"], [OUTPUT], axis=1)],
        "broken",
        [x],
        [y],
        initializer=[numpy_helper.from_array(indices, "idx")],
    )
    model = _model(graph)
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())


def image_model(path: Path, *, seed: int = 0) -> tuple[Array, Array]:
    """The linear model behind an image input: ``input_0`` is [batch, 1, 28, 28],
    flattened inside the graph, as the CNNs that edgewire trains take it."""
    w, b = weights_for(seed=seed)
    x = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 1, 28, 28])
    y = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 10])
    nodes = [
        helper.make_node("Flatten", [INPUT], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]
    model = _model(helper.make_graph(nodes, "image", [x], [y], initializer=inits))
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())
    return w, b


def huge_input_model(path: Path) -> None:
    """A valid model whose one row of input would take 4 TiB: it can never be served."""
    x = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 1 << 20, 1 << 20])
    y = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1 << 20, 1 << 20])
    graph = helper.make_graph([helper.make_node("Identity", [INPUT], [OUTPUT])], "huge", [x], [y])
    model = _model(graph)
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())


def value_dependent_model(path: Path, *, table: int = 10) -> None:
    """``output_0 = T[int(input_0)]`` for a table of ``table`` values: it loads and
    warms up (zeros are in range), and fails at run time on an index past the end."""
    x = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 1])
    y = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 1])
    values = np.arange(table, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Cast", [INPUT], ["idx"], to=TensorProto.INT64),
            helper.make_node("Gather", ["T", "idx"], [OUTPUT], axis=0),
        ],
        "lookup",
        [x],
        [y],
        initializer=[numpy_helper.from_array(values, "T")],
    )
    model = _model(graph)
    onnx.checker.check_model(model)
    Path(path).write_bytes(model.SerializeToString())
