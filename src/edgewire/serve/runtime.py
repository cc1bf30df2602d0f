"""Loaded models, whatever their format: input checks, warm-up on load, atomic swaps.

:func:`load_model` gives a :class:`LoadedModel` only once the file matched its
sha256, its backend (``serve/backends/``) opened it and every warm-up batch ran
with outputs of the right shape; anything less is a ModelError and nothing
half-loaded escapes. :class:`ModelHost` swaps the active model per name with
one dict assignment, so a request that already holds the old model finishes on it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Mapping

import numpy as np

from edgewire.errors import DataError, EdgewireError, ModelError, ModelNotFound
from edgewire.serve.backends import backend
from edgewire.serve.model import (
    Array,
    ModelVersion,
    RuntimeOptions,
    Session,
    TensorInfo,
    reason,
    verify_files,
)

__all__ = ["LoadedModel", "ModelHost", "RuntimeOptions", "load_model"]


class LoadedModel:
    """A ready backend session for one model version, with its input checks."""

    def __init__(
        self, version: ModelVersion, session: Session, *, max_batch_size: int, platform: str
    ) -> None:
        self._version = version
        self._session = session
        self._max_batch = max_batch_size
        self._inputs = version.inputs
        self._outputs = version.outputs
        self._input_names = [t.name for t in version.inputs]
        self._output_names = [t.name for t in version.outputs]
        self.platform = platform

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
        """What the session really runs on (a missing library drops a provider)."""
        return self._session.runs_on

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
            return self._session.run(feed)
        except EdgewireError:
            raise
        except Exception as exc:  # runtimes' own exception types are not public
            raise ModelError(f"inference failed: {_reason(exc, self._version)}") from None

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
    chosen = backend(version.format)
    session = chosen.load(version, options)
    loaded = LoadedModel(
        version, session, max_batch_size=options.max_batch_size, platform=chosen.platform
    )
    for batch in options.warmup_batch_sizes:
        _warm_up(loaded, batch)
    return loaded


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
    return version.label


def _reason(exc: BaseException, version: ModelVersion) -> str:
    """One line from a runtime's error, with the server's paths taken out."""
    return reason(exc, version.path, shown_as=f"{version.name}/{version.version}")


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
            raise ModelNotFound(f"model {name!r} is not loaded (loaded: {loaded})") from None

    def names(self) -> list[str]:
        return sorted(self._active)

    def unload(self, name: str) -> None:
        """Stop serving ``name``; requests holding it finish, then the session is freed."""
        if self._active.pop(name, None) is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
