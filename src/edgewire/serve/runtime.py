"""ONNX Runtime sessions: execution providers, warm-up on load, and atomic model swaps.

:func:`load_model` gives a :class:`LoadedModel` only once the file matched its
sha256, the session was created and every warm-up batch ran with outputs of the
right shape; anything less is a ModelError and nothing half-loaded escapes.
:class:`ModelHost` swaps the active model per name with one dict assignment, so
a request that already holds the old model finishes on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import ConfigError, DataError, ModelError
from edgewire.serve.store import ModelVersion, TensorInfo, verify_files

#: The providers we pick, best first, when they are present.
PROVIDER_ORDER = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
_SHORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

Array = npt.NDArray[Any]


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def pick_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """Providers for a session: TensorRT, CUDA, then CPU, those present.

    ``preferred`` (full names, or ``tensorrt``/``cuda``/``cpu``) picks and orders
    them instead; a name that is not available is a ConfigError.
    """
    available = available_providers()
    if preferred is None:
        return [p for p in PROVIDER_ORDER if p in available]
    picked: list[str] = []
    for raw in preferred:
        name = _SHORT_NAMES.get(raw.lower(), raw)
        if name not in available:
            raise ConfigError(
                f"execution provider {raw!r} is not available; available: {', '.join(available)}"
            )
        if name not in picked:
            picked.append(name)
    if not picked:
        raise ConfigError(f"no execution provider chosen; available: {', '.join(available)}")
    return picked


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """How sessions are built and warmed up."""

    #: Threads inside one operator (0: onnxruntime's default, one per core).
    intra_op_threads: int = 0
    #: Let ONNX Runtime's threads spin between calls (lowest latency on idle cores).
    spin: bool = False
    #: Threads across operators; sequential execution uses one.
    inter_op_threads: int = 1
    #: Execution providers; None picks TensorRT, CUDA, CPU by what is present.
    providers: tuple[str, ...] | None = None
    #: Batch sizes run once at load, so the first real request pays no set-up cost.
    warmup_batch_sizes: tuple[int, ...] = (1,)
    #: Largest batch :meth:`LoadedModel.run` accepts.
    max_batch_size: int = 64
    #: Where TensorRT keeps built engines (building one takes minutes on a Jetson).
    trt_cache_dir: Path | None = None

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


class LoadedModel:
    """A ready ONNX Runtime session for one model version. :meth:`run` is thread-safe."""

    def __init__(self, version: ModelVersion, session: Any, *, max_batch_size: int) -> None:
        self._version = version
        self._session = session
        self._max_batch = max_batch_size
        self._inputs = version.inputs
        self._outputs = version.outputs
        self._input_names = [t.name for t in version.inputs]
        self._output_names = [t.name for t in version.outputs]

    @property
    def version(self) -> ModelVersion:
        return self._version

    @property
    def input_names(self) -> list[str]:
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    @property
    def inputs(self) -> tuple[TensorInfo, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorInfo, ...]:
        return self._outputs

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (a missing library drops one)."""
        return list(self._session.get_providers())

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    def batch_dim_ok(self) -> bool:
        """Whether every input and output has a dynamic first dimension (can be batched)."""
        return all(t.shape and t.shape[0] is None for t in (*self._inputs, *self._outputs))

    def run(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run one (batched) call; DataError when ``inputs`` do not fit the model."""
        feed = self._check(inputs)
        try:
            values = self._session.run(self._output_names, feed)
        except Exception as exc:  # onnxruntime's own exception types are not public
            raise ModelError(f"inference failed: {_reason(exc, self._version)}") from None
        return dict(zip(self._output_names, values, strict=True))

    def _check(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        unknown = sorted(set(inputs) - set(self._input_names))
        if unknown:
            raise DataError(f"unknown input(s) {unknown}; the model takes {self._input_names}")
        feed: dict[str, Array] = {}
        for info in self._inputs:
            if info.name not in inputs:
                raise DataError(
                    f"input {info.name!r} is missing; the model takes {self._input_names}"
                )
            array = inputs[info.name]
            if not isinstance(array, np.ndarray):
                raise DataError(
                    f"input {info.name!r} must be a numpy array, got {type(array).__name__}"
                )
            if array.dtype != np.dtype(info.dtype):
                raise DataError(
                    f"input {info.name!r}: expected dtype {info.dtype}, got {array.dtype}"
                )
            if not _fits(array.shape, info.shape):
                raise DataError(
                    f"input {info.name!r}: expected shape {_show(info.shape)}, got {list(array.shape)}"
                )
            if info.shape[:1] == (None,) and array.shape[0] > self._max_batch:
                raise DataError(
                    f"input {info.name!r}: batch of {array.shape[0]} is over the maximum of {self._max_batch}"
                )
            feed[info.name] = array
        return feed


def load_model(version: ModelVersion, options: RuntimeOptions) -> LoadedModel:
    """Verify, open and warm up ``version``; ModelError with a one-line reason on any failure."""
    verify_files(version)
    providers = pick_providers(options.providers)
    try:
        session = _session(version, options, providers)
    except Exception as exc:
        raise ModelError(f"cannot load {_label(version)}: {_reason(exc, version)}") from None
    names = [i.name for i in session.get_inputs()]
    if sorted(names) != sorted(t.name for t in version.inputs):
        raise ModelError(
            f"{_label(version)}: the session's inputs {names} differ from its metadata"
        )
    loaded = LoadedModel(version, session, max_batch_size=options.max_batch_size)
    for batch in options.warmup_batch_sizes:
        _warm_up(loaded, batch)
    return loaded


def _session(version: ModelVersion, options: RuntimeOptions, providers: list[str]) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    if not options.spin:
        # Spinning worker threads burn the cores the event loop needs to feed them;
        # a server that shares its cores with its own I/O is faster without it.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    provider_options: list[dict[str, str]] = []
    for name in providers:
        opts: dict[str, str] = {}
        if name == "TensorrtExecutionProvider" and options.trt_cache_dir is not None:
            opts = {
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": str(options.trt_cache_dir),
            }
        provider_options.append(opts)
    return ort.InferenceSession(
        str(version.model_path), so, providers=providers, provider_options=provider_options
    )


#: A warm-up batch bigger than this is refused: no request that large could be served.
MAX_WARMUP_BYTES = 1 << 30


def _warm_up(loaded: LoadedModel, batch: int) -> None:
    """Run zeros of ``batch`` rows through the model and check what comes back."""
    version = loaded.version
    shapes = {t.name: (_warmup_shape(t.shape, batch), np.dtype(t.dtype)) for t in loaded.inputs}
    size = sum(math.prod(shape) * dtype.itemsize for shape, dtype in shapes.values())
    if size > MAX_WARMUP_BYTES:
        raise ModelError(
            f"{_label(version)}: a batch of {batch} takes {size} bytes of input, "
            f"over the limit of {MAX_WARMUP_BYTES}"
        )
    try:
        feed = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
        outputs = loaded.run(feed)
    except (ModelError, DataError, ValueError, MemoryError) as exc:
        raise ModelError(
            f"{_label(version)} failed its warm-up (batch {batch}): {_reason(exc, version)}"
        ) from None
    batched = loaded.batch_dim_ok()
    for info in loaded.outputs:
        value = outputs[info.name]
        want = _warmup_shape(info.shape, batch) if batched else None
        problem = None
        if not isinstance(value, np.ndarray) or value.dtype != np.dtype(info.dtype):
            problem = f"dtype {getattr(value, 'dtype', type(value).__name__)}, not {info.dtype}"
        elif not _fits(value.shape, info.shape):
            problem = f"shape {list(value.shape)}, not {_show(info.shape)}"
        elif want is not None and value.shape[0] != batch:
            problem = f"{value.shape[0]} rows for a batch of {batch}"
        if problem:
            raise ModelError(
                f"{_label(version)} failed its warm-up (batch {batch}): "
                f"output {info.name!r} has {problem}"
            )


def _warmup_shape(shape: tuple[int | None, ...], batch: int) -> tuple[int, ...]:
    first = () if not shape else (batch if shape[0] is None else shape[0],)
    return first + tuple(1 if d is None else d for d in shape[1:])


def _fits(got: tuple[int, ...], want: tuple[int | None, ...]) -> bool:
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def _show(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _label(version: ModelVersion) -> str:
    return f"model {version.name!r} version {version.version}"


def _reason(exc: BaseException, version: ModelVersion) -> str:
    """One line from an onnxruntime error, with the server's paths taken out."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    line = line.replace(str(version.path), f"{version.name}/{version.version}")
    return line if len(line) <= 300 else line[:297] + "..."


class ModelHost:
    """The active LoadedModel per model name; swaps are atomic and fail safe."""

    def __init__(self, options: RuntimeOptions | None = None) -> None:
        self.options = options or RuntimeOptions()
        self._active: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def activate(
        self,
        version: ModelVersion,
        *,
        executor: concurrent.futures.Executor | None = None,
        options: RuntimeOptions | None = None,
    ) -> LoadedModel:
        """Load ``version`` in ``executor`` and make it the active one for its name.

        Only a model that loaded and warmed up replaces the current one; on a
        ModelError the current one stays active and the error propagates.
        """
        # Serialised per name, so that the last activation asked for is the one left active.
        lock = self._locks.setdefault(version.name, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            loaded = await loop.run_in_executor(
                executor, load_model, version, options or self.options
            )
            self._active[version.name] = loaded
            return loaded

    def get(self, name: str) -> LoadedModel:
        try:
            return self._active[name]
        except KeyError:
            loaded = ", ".join(sorted(self._active)) or "none"
            raise ModelError(f"model {name!r} is not loaded (loaded: {loaded})") from None

    def names(self) -> list[str]:
        return sorted(self._active)

    def unload(self, name: str) -> None:
        """Stop serving ``name``; requests holding it finish, then the session is freed."""
        if self._active.pop(name, None) is None:
            raise ModelError(f"model {name!r} is not loaded")
