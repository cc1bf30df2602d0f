"""``edgewire export``: a trained checkpoint as ONNX the agent needs nothing else for.

The graph ends in a softmax (scores, not logits), has a dynamic batch axis, and carries
in its ``metadata_props`` the class names (``labels``, JSON), the input size and the
preprocessing (``scale`` 1/255, ``mean`` 0, ``std`` 1: what training did). It is checked
with the ONNX checker and against PyTorch (max abs difference). ``--fp16`` converts the
weights to float16 (inputs and outputs stay float32, so clients do not change);
``--int8`` quantises statically with ONNX Runtime, calibrated on the held-out split.
Each variant's held-out accuracy, size and CPU latency are reported beside fp32's.

A workspace run (its meta names a ``dataset`` in the train/val/test layout, with
``splits``) calibrates on ``val`` and is measured on ``test``; an older checkpoint
(meta ``data`` and ``val_fraction``) on the part its training held out.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgewire import fsutil
from edgewire.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from edgewire.data.datasets import Dataset

LABELS_KEY, PREPROCESSING_KEY = "labels", "preprocessing"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    kind: str  # fp32, fp16, int8
    path: Path
    size: int
    accuracy: float
    latency_ms: float
    max_abs_diff: float
    #: What ``accuracy`` was measured on: "test" (a workspace run) or "held-out".
    measured_on: str = "held-out"


def _names(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ConfigError(f"--names is INPUT,OUTPUT such as input_0,output_0, got {text!r}")
    return parts[0], parts[1]


def export_model(
    source: Path,
    out: Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    opset: int = 17,
    names: str = "input_0,output_0",
    data: str | None = None,
    limit: int | None = None,
) -> list[Variant]:
    """Write ``out`` (fp32) and, when asked, ``<out>.fp16.onnx`` / ``<out>.int8.onnx``."""
    import onnx
    import torch

    from edgewire.split.build import load_teacher

    if not 13 <= opset <= 21:
        raise ConfigError(f"--opset must be in 13..21, got {opset}")
    input_name, output_name = _names(names)
    trainer, meta, path = load_teacher(source)
    spec = trainer.spec
    calibration, held, measured_on = _eval_data(meta, path, data=data, limit=limit)
    if held.shape != (spec.in_channels, spec.height, spec.width):
        raise ConfigError(
            f"data {held.name!r} is {held.shape}; the model takes {spec.in_channels}×{spec.height}×{spec.width}"
        )
    model = torch.nn.Sequential(trainer.model, torch.nn.Softmax(dim=1)).eval()
    x = held.x.astype(np.float32) / np.float32(255.0)
    props = {
        LABELS_KEY: json.dumps(list(held.classes)),
        PREPROCESSING_KEY: json.dumps(
            {"scale": 1 / 255, "mean": [0.0] * spec.in_channels, "std": [1.0] * spec.in_channels}
        ),
        "edgewire.input_size": json.dumps([spec.in_channels, spec.height, spec.width]),
        "edgewire.model": spec.model,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (torch.from_numpy(x[:1]),), str(tmp), input_names=[input_name],
                output_names=[output_name], opset_version=opset, dynamo=False,
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, props)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    try:
        fsutil.atomic_write(out, write, what="export the ONNX model")
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the exported ONNX model is invalid: {exc}") from None
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    on = measured_on
    variants = [_measure("fp32", out, x, held.y, reference, input_name, on)]
    if fp16:
        target = out.with_suffix(".fp16.onnx")
        _fp16(out, target)
        variants.append(_measure("fp16", target, x, held.y, reference, input_name, on))
    if int8:
        target = out.with_suffix(".int8.onnx")
        calib = x if calibration is None else calibration.x.astype(np.float32) / np.float32(255)
        _int8(out, target, calib, input_name)
        variants.append(_measure("int8", target, x, held.y, reference, input_name, on))
    return variants


def _eval_data(
    meta: dict[str, Any], path: Path, *, data: str | None, limit: int | None
) -> tuple[Dataset | None, Dataset, str]:
    """(calibration data or None for "the measured data", measured data, what it is)."""
    from edgewire.data.datasets import load_dataset

    size = meta.get("image_size") if isinstance(meta.get("image_size"), int) else None
    dataset = meta.get("dataset")
    if data is None and meta.get("splits") and isinstance(dataset, str):
        dataset = _run_dataset(dataset, path)
        if not Path(dataset, "test").is_dir():
            raise ConfigError(
                f"the run's dataset {dataset!r} has no test/ split any more; "
                "split the workspace again or give --data"
            )
        val = load_dataset(dataset, image_size=size, split="val", limit=limit)
        test = load_dataset(dataset, image_size=size, split="test", limit=limit)
        return val, test, "test"
    data_name = data or meta.get("data")
    if not isinstance(data_name, str):
        raise ConfigError(
            f"checkpoint {str(path)!r} does not say what it was trained on; give --data"
        )
    loaded = load_dataset(data_name, limit=limit or meta.get("limit"), image_size=size)
    # The held-out part the training run kept back (its meta says how it split).
    fraction = float(meta.get("val_fraction") or 0.1)
    _, held = loaded.split(val_fraction=fraction, seed=int(meta.get("seed") or 0))
    return None, held, "held-out"


def _run_dataset(dataset: str, checkpoint: Path) -> str:
    """The split folder a run trained on: its meta's, resolved against the workspace
    the run is in (``WS/runs/RUN/`` → ``WS``) when relative, as a remote run's is; or,
    when that folder is gone (the run came from another machine), the workspace's."""
    from edgewire.project.workspace import DATASET

    workspace = checkpoint.resolve().parent.parent.parent
    named = Path(dataset)
    if not named.is_absolute():
        named = workspace / named
    if named.is_dir() or not (workspace / DATASET).is_dir():
        return str(named)
    log.warning("the run's dataset %s is not here; using its workspace's %s",
                dataset, workspace / DATASET)  # fmt: skip
    return str(workspace / DATASET)


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    _sort_nodes(proto.graph)  # the converter appends its input casts after their users
    onnx.checker.check_model(proto)
    fsutil.atomic_write(dst, lambda tmp: onnx.save(proto, str(tmp)), what="write the fp16 model")


def _sort_nodes(graph: Any) -> None:
    """Order ``graph``'s nodes so that each comes after what produces its inputs."""
    ready = {t.name for t in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise ModelError("the fp16 graph has a node whose input nothing produces")
        for node in runnable:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if n not in runnable]
    del graph.node[:]
    graph.node.extend(ordered)


def _int8(src: Path, dst: Path, x: np.ndarray, input_name: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._rows = iter(x[i : i + 1] for i in range(min(len(x), 200)))

        def get_next(self) -> dict[str, Any] | None:
            row = next(self._rows, None)
            return None if row is None else {input_name: row}

    import onnx

    # The scores stay float: a softmax in uint8 steps no longer sums to 1.
    softmax = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Softmax"]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT's quantizer advises pre-processing on the root logger
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "int8.onnx"
        try:
            quantize_static(str(src), str(staged), Reader(), weight_type=QuantType.QInt8,
                            activation_type=QuantType.QUInt8, nodes_to_exclude=softmax)  # fmt: skip
        finally:
            root.setLevel(level)
        fsutil.atomic_write_bytes(dst, staged.read_bytes(), what="write the int8 model")


def _measure(
    kind: str, path: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
    input_name: str, measured_on: str,
) -> Variant:  # fmt: skip
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    scores = np.concatenate(
        [session.run(None, {input_name: x[i : i + 256]})[0] for i in range(0, len(x), 256)]
    )
    times = []
    for i in range(min(len(x), 50)):
        start = time.perf_counter()
        session.run(None, {input_name: x[i : i + 1]})
        times.append((time.perf_counter() - start) * 1000)
    return Variant(
        kind=kind, path=path, size=path.stat().st_size,
        accuracy=float((scores.argmax(1) == y).mean()), latency_ms=statistics.median(times),
        max_abs_diff=float(np.abs(scores.astype(np.float64) - reference).max()),
        measured_on=measured_on,
    )  # fmt: skip
