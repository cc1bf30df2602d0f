"""What the agent serves: the model store, the loaded models, one batcher per model.

Every protocol (native, MnistProt, KServe v2 HTTP) calls :meth:`Serving.infer`,
so requests from all of them are batched together. A request with more rows
than a batch holds (up to ``max_request_rows``) is split into batches and its
answers joined again in order.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import DataError, EdgewireError, FrameTooLarge, ModelError, ModelNotFound
from edgewire.serve.batcher import Batcher, BatchPolicy, InferResult
from edgewire.serve.model import ModelVersion, TensorInfo
from edgewire.serve.runtime import LoadedModel, ModelHost, RuntimeOptions
from edgewire.serve.store import ModelStore
from edgewire.wire.messages import require_finite

if TYPE_CHECKING:
    from edgewire.config import AgentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Served:
    """One answered request: the model version that answered and the batcher's result."""

    version: ModelVersion
    result: InferResult


class Serving:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = ModelStore(config.data_dir / "models")
        self.policy = BatchPolicy(
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue=config.max_queue,
        )
        self.runtime = RuntimeOptions(
            intra_op_threads=config.intra_op_threads,
            max_batch_size=config.max_batch_size,
            warmup_batch_sizes=(1, config.max_batch_size),
        )
        self.host = ModelHost(self.runtime)
        # One thread runs the models: ONNX Runtime parallelises inside a call.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="edgewire-infer")
        # Loading and warming up a model (a TensorRT engine build can take minutes)
        # runs beside the serving thread, so the old version answers meanwhile.
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="edgewire-load")
        self._batchers: dict[str, Batcher] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Load the served version of every stored model; a bad one is logged, not fatal."""
        names = await asyncio.to_thread(self.store.names)
        for name in names:
            try:
                await self.activate(name)
            except EdgewireError as exc:
                log.warning("model %r not served: %s", name, exc)
            except Exception:  # a broken model must never keep the agent down
                log.exception("model %r not served", name)

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop(drain_timeout=self.config.drain_timeout)
        self.executor.shutdown(wait=True)
        self.loader.shutdown(wait=True)

    async def activate(self, name: str, ref: str | int | None = None) -> ModelVersion:
        """Load ``name`` at ``ref`` (alias or version) and serve it; the old one serves until then."""
        async with self._lock:
            version = await asyncio.to_thread(self.store.resolve, name, ref)
            loaded = await self.host.activate(version, executor=self.loader)
            batcher = self._batchers.get(name)
            if batcher is None:
                policy = self.policy
                if not loaded.batch_dim_ok():
                    policy = BatchPolicy(
                        max_batch_size=1, max_queue_delay_ms=0.0, max_queue=self.policy.max_queue
                    )
                batcher = Batcher(loaded.run, policy=policy, executor=self.executor, name=name)
                await batcher.start()
                self._batchers[name] = batcher
            else:
                batcher.set_run(loaded.run)
            log.info("serving %s version %s", name, version.version)
            return version

    async def unload(self, name: str) -> None:
        async with self._lock:
            batcher = self._batchers.pop(name, None)
            if batcher is not None:
                await batcher.stop(drain_timeout=self.config.drain_timeout)
            self.host.unload(name)

    def names(self) -> list[str]:
        return sorted(self._batchers)

    def loaded(self, name: str) -> LoadedModel:
        if name not in self._batchers:
            served = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"model {name!r} is not served (served: {served})")
        return self.host.get(name)

    def policy_of(self, name: str) -> BatchPolicy:
        """How requests for ``name`` are batched (max batch 1 for a model that cannot batch)."""
        self.loaded(name)
        return self._batchers[name].policy

    def default_model(self) -> str:
        """The model legacy protocols use: the configured one, else the only one."""
        if self.config.legacy_mnistprot_model:
            return self.config.legacy_mnistprot_model
        names = self.names()
        if len(names) == 1:
            return names[0]
        raise ModelError(
            f"{len(names)} models are served ({', '.join(names) or 'none'}); "
            "choose one with --legacy-mnistprot-model"
        )

    async def infer(
        self,
        name: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
        *,
        deadline_ms: float | None = None,
    ) -> Served:
        loaded = self.loaded(name)
        batcher = self._batchers[name]
        limit = self.config.max_request_rows
        named = check_inputs(loaded.inputs, inputs, max_rows=None)
        rows = next(iter(named.values())).shape[0]
        if rows > limit:
            raise FrameTooLarge(
                f"the request has {rows} rows, over max_request_rows={limit}; send fewer at once"
            )
        deadline = None
        if deadline_ms is not None:
            deadline = asyncio.get_running_loop().time() + deadline_ms / 1000
        step = batcher.policy.max_batch_size
        if rows <= step:
            return Served(
                version=loaded.version, result=await batcher.submit(named, deadline=deadline)
            )
        if not splittable(loaded.inputs):
            raise DataError(f"model {name!r} takes {step} row(s) at a time, got {rows}")
        parts = [
            asyncio.ensure_future(
                batcher.submit({k: v[i : i + step] for k, v in named.items()}, deadline=deadline)
            )
            for i in range(0, rows, step)
        ]
        try:
            results = await asyncio.gather(*parts)
        except BaseException:
            for part in parts:
                part.cancel()
            raise
        return Served(version=loaded.version, result=join_results(results))

    def model_status(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            loaded = self.host.get(name)
            out.append(
                {
                    "name": name,
                    "version": loaded.version.version,
                    "format": loaded.version.format,
                    "platform": loaded.platform,
                    "providers": list(loaded.providers),
                }
            )
        return out


def check_inputs(
    expected: Sequence[TensorInfo],
    inputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
    *,
    max_rows: int | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """One request's tensors against the model's inputs, before it can spoil a batch
    or wait in the queue. Flat rows (N × 784 for an N × 1 × 28 × 28 input, as a
    microcontroller sends them) are taken as the model's shape."""
    if not isinstance(inputs, Mapping):
        if len(inputs) != len(expected):
            raise DataError(f"the model takes {len(expected)} inputs, got {len(inputs)} tensors")
        inputs = {info.name: array for info, array in zip(expected, inputs, strict=True)}
    wanted = {info.name for info in expected}
    unknown = set(inputs) - wanted
    if unknown:
        raise DataError(f"unknown input(s) {sorted(unknown)}; the model takes {sorted(wanted)}")
    named: dict[str, npt.NDArray[Any]] = {}
    for info in expected:
        if info.name not in inputs:
            raise DataError(f"input {info.name!r} is missing")
        array = inputs[info.name]
        if array.dtype != np.dtype(info.dtype):
            raise DataError(f"input {info.name!r} must be {info.dtype}, got {array.dtype}")
        array = _unflatten(info, array)
        if array.ndim != len(info.shape) or array.ndim == 0:
            raise DataError(
                f"input {info.name!r} must have shape {_shape(info)}, got {list(array.shape)}"
            )
        for got, want in zip(array.shape[1:], info.shape[1:], strict=True):
            if want is not None and got != want:
                raise DataError(
                    f"input {info.name!r} must have shape {_shape(info)}, got {list(array.shape)}"
                )
        if array.shape[0] < 1:
            raise DataError(f"input {info.name!r} has an empty batch")
        if max_rows is not None and array.shape[0] > max_rows:
            raise DataError(
                f"input {info.name!r}: {array.shape[0]} rows is over the maximum of {max_rows}"
            )
        require_finite(array, f"input {info.name!r}")
        named[info.name] = array
    return named


def splittable(expected: Sequence[TensorInfo]) -> bool:
    """Whether a request's first dimension is a batch axis it can be cut along."""
    return all(len(t.shape) >= 2 and t.shape[0] in (None, 1) for t in expected)


def join_results(results: Sequence[InferResult]) -> InferResult:
    """The answers to the parts of one split request, as one answer in row order."""
    names = list(results[0].outputs)
    return InferResult(
        outputs={n: np.concatenate([r.outputs[n] for r in results]) for n in names},
        queue_ms=max(r.queue_ms for r in results),
        compute_ms=sum(r.compute_ms for r in results),
        batch_size=max(r.batch_size for r in results),
    )


def _unflatten(info: TensorInfo, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array`` as ``info``'s shape if it is N flat rows of exactly that many values."""
    dims = info.shape[1:]
    if array.ndim != 2 or len(dims) < 2 or any(d is None for d in dims):
        return array
    if math.prod(d for d in dims if d is not None) != array.shape[1]:
        return array
    return array.reshape((array.shape[0], *(d for d in dims if d is not None)))


def _shape(info: TensorInfo) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in info.shape) + "]"


def reshape_flat(info: TensorInfo, flat: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A flat vector (e.g. MnistProt's 784 floats) as one row of ``info``'s shape."""
    dims = [d for d in info.shape[1:]]
    if any(d is None for d in dims) or math.prod(d for d in dims if d is not None) != flat.size:
        raise DataError(f"{flat.size} values do not fit the model input {_shape(info)}")
    return flat.reshape((1, *[d for d in dims if d is not None]))
