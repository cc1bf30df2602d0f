"""``edgewire deploy --gate-data``: the samples a gated deploy is scored on, packed as .npz.

``--gate-data`` is a workspace (its ``dataset/test``), a train/val/test folder (its
``test``) or a plain image folder, resized to the model's input size (its
``edgewire.input_size`` metadata, else its input shape).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from edgewire.errors import ConfigError, DataError

#: Samples sent at most (the agent refuses more); a class-balanced subset beyond.
MAX_SAMPLES = 5000


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


def pack_gate_data(source: Path, model: Path) -> tuple[bytes, int]:
    """(the .npz bytes, how many samples) for ``source`` at ``model``'s input size."""
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
    if len(data) > MAX_SAMPLES:
        data = data.subset(MAX_SAMPLES)
    x = data.x
    if x.shape[1] != c:
        if c == 1 and x.shape[1] == 3:  # the model is grey: as training converts colour
            x = x.astype(np.float32).mean(axis=1, keepdims=True).round().astype(np.uint8)
        else:
            raise DataError(
                f"--gate-data images have {x.shape[1]} channels; {model.name} takes {c}"
            )
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ascontiguousarray(x), y=data.y.astype(np.int64),
             classes=np.array(data.classes, dtype=str))  # fmt: skip
    return buffer.getvalue(), len(data)
