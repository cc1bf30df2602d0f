"""What every part of serving says about a model, whatever its format.

The leaf of ``serve/``: the store, the runtime and the backends all import it,
and it imports none of them. :class:`Backend` is the seam a model format plugs
into (``serve/backends/``); :class:`Session` is what a loaded model runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from edgewire.errors import ConfigError, ModelError, one_line
from edgewire.fsutil import sha256_file

Array = npt.NDArray[Any]

#: The format a version has when its metadata predates formats.
DEFAULT_FORMAT = "onnx"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One model input or output: name, numpy dtype name, shape (None = dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorInfo:
        shape = tuple(None if d is None else int(d) for d in data["shape"])
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=shape)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How models are loaded and warmed up, whatever their backend."""

    #: Threads inside one operator (0: the runtime's default, one per core).
    intra_op_threads: int = 0
    #: Let the runtime's threads spin between calls (lowest latency on idle cores).
    spin: bool = False
    #: Threads across operators; sequential execution uses one.
    inter_op_threads: int = 1
    #: Execution providers; None picks TensorRT, CUDA, CPU by what is present.
    providers: tuple[str, ...] | None = None
    #: Batch sizes run once at load, so the first real request pays no set-up cost.
    warmup_batch_sizes: tuple[int, ...] = (1,)
    #: Largest batch a loaded model runs.
    max_batch_size: int = 64
    #: Where TensorRT keeps built engines (building one takes minutes on a Jetson).
    trt_cache_dir: Path | None = None
    #: How a model whose batch size is fixed at 1 (most TFLite files) runs a batch:
    #: "resize" (one interpreter resized per batch size) or "rows" (one call per row).
    fixed_batch: str = "resize"

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError(
                f"thread counts must be >= 0, got intra={self.intra_op_threads} "
                f"inter={self.inter_op_threads}"
            )
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        bad = [b for b in self.warmup_batch_sizes if not 1 <= b <= self.max_batch_size]
        if bad:
            raise ConfigError(
                f"warm-up batch sizes {bad} are outside 1..max_batch_size={self.max_batch_size}"
            )
        if self.fixed_batch not in ("resize", "rows"):
            raise ConfigError(f"fixed_batch must be 'resize' or 'rows', got {self.fixed_batch!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What a backend reads from a model file: its tensors and embedded metadata.

    A first dimension of None in every input and output is the batch axis.
    """

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    #: Key/value metadata the file carries (ONNX metadata_props, TFLite signatures).
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One stored version of a model and what a server needs to know about it."""

    name: str
    version: int
    path: Path
    #: The backend that reads it (``onnx``, ``tflite``), chosen from the file's content.
    format: str = DEFAULT_FORMAT
    file: str = "model.onnx"
    sha256: str
    size: int
    created: float
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    labels: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    #: sha256 of each companion file (ONNX external data), by its location relative to ``path``.
    external: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.path / self.file

    @property
    def label(self) -> str:
        return f"model {self.name!r} version {self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; leaves out ``path`` so that no server path reaches a peer."""
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "created": self.created,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "labels": None if self.labels is None else list(self.labels),
            "preprocessing": dict(self.preprocessing),
            "metadata": dict(self.metadata),
            "external": dict(self.external),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: Path) -> ModelVersion:
        labels = data.get("labels")
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            path=Path(path),
            format=str(data.get("format", DEFAULT_FORMAT)),
            file=str(data.get("file", "model.onnx")),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            created=float(data["created"]),
            inputs=tuple(TensorInfo.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorInfo.from_dict(t) for t in data["outputs"]),
            labels=None if labels is None else tuple(str(x) for x in labels),
            preprocessing=dict(data.get("preprocessing") or {}),
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            external={str(k): str(v) for k, v in (data.get("external") or {}).items()},
        )


def reason(exc: BaseException, folder: Path, *, shown_as: str = "<model>") -> str:
    """One line from a runtime's error, with the server's ``folder`` taken out."""
    line = one_line(exc, limit=100_000)
    for form in {str(folder.resolve()), str(folder)}:  # a symlinked data dir has two
        line = line.replace(form, shown_as)
    return line if len(line) <= 300 else line[:297] + "..."


def verify_files(version: ModelVersion) -> None:
    """Recompute the sha256 of the model file (and its companions); ModelError on mismatch."""
    files = [(version.file, version.sha256), *version.external.items()]
    for rel, expected in files:
        path = version.path / rel
        try:
            got = sha256_file(path)
        except OSError as exc:
            raise ModelError(f"{version.label}: cannot read {rel}: {exc.strerror}") from None
        if got != expected:
            raise ModelError(
                f"{version.label}: sha256 mismatch in {rel}: expected {expected}, got {got}"
            )


class Session(Protocol):
    """A model loaded by a backend, ready to run batches."""

    def run(self, feed: dict[str, Array]) -> dict[str, Array]:
        """Named input batches in, named output batches out (blocking)."""
        ...

    @property
    def runs_on(self) -> list[str]:
        """What it really runs on (execution providers, delegates), best first."""
        ...


class Backend(Protocol):
    """One model format: recognise a file, read what it declares, load it."""

    #: Short name stored with each version (``onnx``, ``tflite``).
    name: str
    #: The file suffix a version of this format is stored under.
    suffix: str
    #: The KServe v2 / Triton platform name in model metadata.
    platform: str
    #: The optional extra that installs its runtime, for the install hint.
    extra: str | None

    def claims(self, head: bytes) -> bool:
        """Whether a file starting with ``head`` (its first bytes) is of this format."""
        ...

    def companions(self, path: Path, *, source_dir: Path) -> list[str]:
        """Files the model at ``path`` needs beside it (relative, checked to stay
        inside ``source_dir``); ModelError for an unsafe or missing one."""
        ...

    def inspect(self, path: Path) -> ModelInfo:
        """Parse and check the file (its companions beside it); ModelError if it is
        not a valid model of this format or uses what the runtime lacks."""
        ...

    def load(self, version: ModelVersion, options: RuntimeOptions) -> Session:
        """Open ``version`` for inference; ModelError on failure."""
        ...
