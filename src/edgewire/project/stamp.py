"""A training run's ``model.onnx`` made ready to serve, as ``edgewire export`` would have
it: scores (a softmax on the logits) and the metadata the agent and its gate read
(class names, input size, preprocessing), with no torch needed.

A run's file is the bare network: logits, float32 N×C×H×W in 0..1, no metadata. The
dashboard's deploy stamps it with the run's class names (its report) before it is sent.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgewire import fsutil
from edgewire.errors import ConfigError, ModelError
from edgewire.project.export import LABELS_KEY, PREPROCESSING_KEY

INPUT_SIZE_KEY = "edgewire.input_size"
_LOGITS = "edgewire_logits"


def stamp_model(source: Path, dest: Path, *, labels: list[str]) -> None:
    """Write ``source`` to ``dest`` ending in a softmax (unless it does already) and
    carrying ``labels`` (one per output), its input size and the 1/255 scaling."""
    import onnx
    from onnx import helper

    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise ConfigError("the run names no classes; train it again")
    try:
        proto = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # onnx raises its own and protobuf's errors
        raise ModelError(f"the run's model is not readable ONNX: {type(exc).__name__}") from None
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(inputs) != 1 or len(graph.output) != 1 or len(dims) != 4 or min(dims[1:]) < 1:
        raise ModelError("the run's model is not one N×C×H×W image input and one output")
    out_dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) == 2 and out_dims[1] and out_dims[1] != len(labels):
        raise ConfigError(f"the run's model has {out_dims[1]} outputs for {len(labels)} classes")
    last = graph.node[-1] if graph.node else None
    if last is None or last.op_type != "Softmax":
        output = graph.output[0].name
        for node in graph.node:
            node.output[:] = [_LOGITS if o == output else o for o in node.output]
        graph.node.append(helper.make_node("Softmax", [_LOGITS], [output], axis=1))
    channels = dims[1]
    props = {
        LABELS_KEY: json.dumps(list(labels)),
        PREPROCESSING_KEY: json.dumps(
            {"scale": 1 / 255, "mean": [0.0] * channels, "std": [1.0] * channels}
        ),
        INPUT_SIZE_KEY: json.dumps(dims[1:]),
    }
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in props}
    del proto.metadata_props[:]
    helper.set_model_props(proto, {**kept, **props})
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelError(
            f"the stamped model is invalid: {' '.join(str(exc).split())[:200]}"
        ) from None

    def write(tmp: Path) -> None:
        onnx.save(proto, str(tmp))

    fsutil.atomic_write(dest, write, what="prepare the model")
