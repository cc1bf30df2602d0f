"""The LiteRT backend: TensorFlow Lite flatbuffers (``.tflite``), the optional
extra ``edgewire[tflite]`` (``ai-edge-litert``).

Most TFLite files fix their batch size at 1 (the seed's MNIST model does). We
batch them anyway, in one of two ways (``RuntimeOptions.fixed_batch``):
``resize`` keeps one interpreter per batch size seen (the input resized, a few
cached), ``rows`` runs a batch-1 interpreter once per row.
``benchmarks/tflite_batching.py`` measures both; ``resize`` is the default.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgewire.errors import DependencyMissing, ModelError
from edgewire.serve.model import (
    Array,
    ModelInfo,
    ModelVersion,
    RuntimeOptions,
    TensorInfo,
    reason,
)

#: Bytes 4..8 of every TFLite flatbuffer: its file identifier.
MAGIC = b"TFL3"
#: Interpreters kept per model for distinct batch sizes (``resize``); the least
#: recently used goes when another size arrives.
MAX_SIZED = 4


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise DependencyMissing(
            "TFLite models need LiteRT; install it with: pip install 'edgewire[tflite]'"
        ) from None
    return Interpreter


def _open(path: Path, *, threads: int) -> Any:
    interpreter_class = _interpreter_class()
    try:
        interpreter = interpreter_class(
            model_path=str(path), num_threads=threads if threads > 0 else None
        )
        interpreter.allocate_tensors()  # unresolved custom ops fail here
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"not a usable TFLite model: {reason(exc, path.parent)}") from None
    return interpreter


def _fixed_batch(details: list[dict[str, Any]]) -> bool:
    """Whether every tensor has a first dimension fixed at 1 of rank >= 2 (a batch axis)."""
    return all(len(d["shape_signature"]) >= 2 and d["shape_signature"][0] == 1 for d in details)


def _dynamic_batch(inputs: list[dict[str, Any]]) -> bool:
    return all(len(d["shape_signature"]) >= 1 and d["shape_signature"][0] < 0 for d in inputs)


def _tensor_info(detail: dict[str, Any], *, batched: bool) -> TensorInfo:
    dims: list[int | None] = [None if int(d) < 0 else int(d) for d in detail["shape_signature"]]
    if batched:
        dims[0] = None
    return TensorInfo(
        name=str(detail["name"]), dtype=np.dtype(detail["dtype"]).name, shape=tuple(dims)
    )


class TfliteSession:
    """LiteRT interpreters for one model version. Interpreters are not thread-safe:
    one lock serialises calls (the agent runs models on one thread anyway)."""

    def __init__(self, path: Path, version: ModelVersion, options: RuntimeOptions) -> None:
        self._path = path
        self._threads = options.intra_op_threads
        self._mode = options.fixed_batch
        self._lock = threading.Lock()
        base = _open(path, threads=self._threads)
        inputs, outputs = base.get_input_details(), base.get_output_details()
        self._in = {str(d["name"]): int(d["index"]) for d in inputs}
        self._out = [(str(d["name"]), int(d["index"])) for d in outputs]
        if sorted(self._in) != sorted(t.name for t in version.inputs):
            raise ModelError(f"{version.label}: the interpreter's inputs differ from its metadata")
        self._emulated = _fixed_batch([*inputs, *outputs])
        self._batchable = self._emulated or _dynamic_batch(inputs)
        self._sized: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._sized[1] = base

    @property
    def runs_on(self) -> list[str]:
        return ["litert:cpu"]

    def run(self, feed: dict[str, Array]) -> dict[str, Array]:
        rows = next(iter(feed.values())).shape[0] if feed else 1
        with self._lock:
            if not self._batchable:
                return self._invoke(self._sized[1], feed)
            if self._mode == "rows" and self._emulated and rows > 1:
                one = self._sized[1]
                parts = [
                    self._invoke(one, {k: v[i : i + 1] for k, v in feed.items()})
                    for i in range(rows)
                ]
                return {name: np.concatenate([p[name] for p in parts]) for name, _ in self._out}
            return self._invoke(self._sized_for(rows), feed)

    def _sized_for(self, rows: int) -> Any:
        interpreter = self._sized.get(rows)
        if interpreter is not None:
            self._sized.move_to_end(rows)
            return interpreter
        interpreter = _open(self._path, threads=self._threads)
        for detail in interpreter.get_input_details():
            shape = [rows, *[int(d) for d in detail["shape"][1:]]]
            interpreter.resize_tensor_input(int(detail["index"]), shape)
        interpreter.allocate_tensors()
        self._sized[rows] = interpreter
        while len(self._sized) > MAX_SIZED + 1:  # the batch-1 one stays
            oldest = next(k for k in self._sized if k != 1)
            del self._sized[oldest]
        return interpreter

    def _invoke(self, interpreter: Any, feed: dict[str, Array]) -> dict[str, Array]:
        for name, index in self._in.items():
            interpreter.set_tensor(index, feed[name])
        interpreter.invoke()
        return {name: interpreter.get_tensor(index).copy() for name, index in self._out}


class TfliteBackend:
    name = "tflite"
    suffix = ".tflite"
    platform = "tensorflow_lite"
    extra: str | None = "tflite"

    def claims(self, head: bytes) -> bool:
        return head[4:8] == MAGIC

    def companions(self, path: Path, *, source_dir: Path) -> list[str]:
        return []  # a flatbuffer carries its weights inside

    def inspect(self, path: Path) -> ModelInfo:
        interpreter = _open(path, threads=1)
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if not inputs or not outputs:
            raise ModelError("the model has no inputs or no outputs")
        batched = _fixed_batch([*inputs, *outputs]) or _dynamic_batch(inputs)
        metadata: dict[str, str] = {}
        signatures = interpreter.get_signature_list()
        if signatures:
            metadata["signatures"] = ",".join(sorted(signatures))
        return ModelInfo(
            inputs=tuple(_tensor_info(d, batched=batched) for d in inputs),
            outputs=tuple(_tensor_info(d, batched=batched) for d in outputs),
            metadata=metadata,
        )

    def load(self, version: ModelVersion, options: RuntimeOptions) -> TfliteSession:
        return TfliteSession(version.model_path, version, options)
