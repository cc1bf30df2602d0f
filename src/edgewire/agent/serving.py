"""What the agent serves: the model store, the loaded models, one batcher per model.

Every protocol (native, MnistProt, KServe v2 HTTP) calls :meth:`Serving.infer`,
so requests from all of them are batched together. A request with more rows
than a batch holds (up to ``max_request_rows``) is split into batches and its
answers joined again in order.

Removing models also goes through here, under the same lock as activations, so
that what is served and what the store holds stay in step: a served version is
deleted only once another one serves (the one a restart would serve), and unused
versions are pruned at start and then hourly, never a served or aliased one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import DataError, EdgewireError, FrameTooLarge, ModelError, ModelNotFound
from edgewire.serve.batcher import Batcher, BatchPolicy, InferResult, Reply, RunFn
from edgewire.serve.model import ModelVersion, TensorInfo
from edgewire.serve.runtime import LoadedModel, ModelHost, RuntimeOptions, load_model
from edgewire.serve.store import DEFAULT_ALIAS, ModelStore
from edgewire.wire.messages import require_finite

if TYPE_CHECKING:
    from edgewire.config import AgentConfig

log = logging.getLogger(__name__)
#: How long default_model trusts its look-up of the ``production`` aliases.
_ALIAS_CACHE_S = 1.0

#: Seconds between two prunes of unused model versions.
PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Served:
    """One answered request: the model version that answered and the batcher's result."""

    version: ModelVersion
    result: InferResult


def _trt_cache_dir(config: AgentConfig) -> Path | None:
    """Where TensorRT engines are cached, when ONNX Runtime offers TensorRT (said once if not)."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    from edgewire.serve.backends.onnx import available_providers
    from edgewire.serve.backends.trt_cache import tensorrt_present, usable_cache_root

    if not tensorrt_present(available_providers()):
        return None
    return usable_cache_root(config.data_dir / "trt")


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
            trt_cache_dir=_trt_cache_dir(config),
        )
        self.host = ModelHost(self.runtime)
        # One thread runs the models: ONNX Runtime parallelises inside a call.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="edgewire-infer")
        # Loading and warming up a model (a TensorRT engine build can take minutes)
        # runs beside the serving thread, so the old version answers meanwhile.
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="edgewire-load")
        self._batchers: dict[str, Batcher] = {}
        self._lock = asyncio.Lock()
        # default_model: the served set it last warned about, and its alias look-up.
        self._unchosen: tuple[str, ...] | None = None
        self._alias_cache: tuple[tuple[str, ...], float, tuple[str, ...]] | None = None
        self._pruner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the served version of every stored model (a bad one is logged, not fatal),
        then prune unused versions, and again every hour."""
        names = await asyncio.to_thread(self.store.names)
        for name in names:
            try:
                await self.activate(name)
            except EdgewireError as exc:
                log.warning("model %r not served: %s", name, exc)
            except Exception:  # a broken model must never keep the agent down
                log.exception("model %r not served", name)
        await self._prune_logged()
        self._pruner = asyncio.create_task(self._prune_hourly(), name="edgewire-prune")

    async def stop(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        for batcher in self._batchers.values():
            await batcher.stop(drain_timeout=self.config.drain_timeout)
        self.executor.shutdown(wait=True)
        self.loader.shutdown(wait=True)

    async def activate(self, name: str, ref: str | int | None = None) -> ModelVersion:
        """Load ``name`` at ``ref`` (alias or version) and serve it; the old one serves until then."""
        async with self._lock:
            return await self._activate(name, ref)

    async def _activate(self, name: str, ref: str | int | None) -> ModelVersion:
        version = await asyncio.to_thread(self.store.resolve, name, ref)
        loaded = await self.host.activate(version, executor=self.loader)
        batcher = self._batchers.get(name)
        if batcher is None:
            policy = self.policy
            if not loaded.batch_dim_ok():
                policy = BatchPolicy(
                    max_batch_size=1, max_queue_delay_ms=0.0, max_queue=self.policy.max_queue
                )
            batcher = Batcher(
                self._run_of(loaded),
                policy=policy,
                executor=self.executor,
                name=name,
                refuse_nonfinite=True,  # once per batch, not per request (check_inputs)
            )
            await batcher.start()
            self._batchers[name] = batcher
        else:
            batcher.set_run(self._run_of(loaded))
        log.info("serving %s version %s", name, version.version)
        return version

    async def verify(self, name: str, version: int) -> ModelVersion:
        """Load and warm up ``name`` at ``version`` as :meth:`activate` would, then let it go:
        a version whose alias is not the one served is checked without being served."""
        found = await asyncio.to_thread(self.store.get, name, version)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.loader, load_model, found, self.runtime)
        return found

    def _run_of(self, loaded: LoadedModel) -> RunFn:
        slowdown = self.config.emulate_slowdown
        if slowdown <= 1.0:
            return loaded.run

        def stretched(inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
            # Sleeping in the model thread holds it as a slower processor would.
            start = time.perf_counter()
            out = loaded.run(inputs)
            time.sleep((slowdown - 1.0) * (time.perf_counter() - start))
            return out

        return stretched

    async def unload(self, name: str) -> None:
        async with self._lock:
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        batcher = self._batchers.pop(name, None)
        if batcher is not None:
            await batcher.stop(drain_timeout=self.config.drain_timeout)
        self.host.unload(name)

    def served_version(self, name: str) -> int | None:
        """The version of ``name`` being served, or None."""
        return self.host.get(name).version.version if name in self._batchers else None

    # -- removal -----------------------------------------------------------------------

    async def delete_version(self, name: str, version: int, *, force: bool = False) -> int | None:
        """Delete ``version`` of ``name``; with ``force`` the aliases pointing at it go too.

        The served version is deleted only with ``force``, and only once the version a
        restart would then serve has loaded and serves in its place (refused, with
        nothing changed, when there is none or it does not load). Returns the version
        that now serves instead, or None when what is served did not change.
        """
        async with self._lock:
            if self.served_version(name) != version:
                await asyncio.to_thread(self.store.delete, name, version, force=force)
                log.info("deleted %s version %s", name, version)
                return None
            if not force:
                raise ModelError(
                    f"model {name!r} version {version} is being served; activate another "
                    "version first, or delete with force to serve the next one"
                )
            nxt = await asyncio.to_thread(self.store.default_after, name, deleting=version)
            if nxt is None:
                raise ModelError(
                    f"model {name!r} version {version} is its only version and is being "
                    "served; delete the whole model instead"
                )
            try:
                await self._activate(name, nxt.version)
            except EdgewireError as exc:
                raise ModelError(
                    f"model {name!r} version {version} is being served and version "
                    f"{nxt.version}, which would serve next, does not load ({exc}); "
                    "nothing was deleted"
                ) from exc
            await asyncio.to_thread(self.store.delete, name, version, force=True)
            log.info("deleted %s version %s; version %s serves instead", name, version, nxt.version)
            return nxt.version

    async def remove_alias(self, name: str, alias: str) -> int:
        """Remove ``alias`` of ``name``; the version it pointed at.

        What is served does not change. Refused for ``production`` while it chooses
        the served version and a restart without it would serve another one.
        """
        async with self._lock:
            served = self.served_version(name)
            if alias == DEFAULT_ALIAS and served is not None:
                target = (await asyncio.to_thread(self.store.aliases, name)).get(alias)
                nxt = await asyncio.to_thread(self.store.default_after, name, removing=alias)
                if target == served and nxt is not None and nxt.version != served:
                    raise ModelError(
                        f"alias {alias!r} of model {name!r} chooses the version served "
                        f"({served}); without it a restart would serve version {nxt.version}. "
                        "Activate another version with it instead, or delete the model"
                    )
            target = await asyncio.to_thread(self.store.remove_alias, name, alias)
            log.info("removed alias %s of %s (was version %s)", alias, name, target)
            return target

    async def delete_model(self, name: str) -> list[int]:
        """Remove every version of ``name`` from the store, then stop serving it.

        The store goes first, in one rename: if that fails, the model still serves.
        """
        async with self._lock:
            numbers = await asyncio.to_thread(self.store.delete_model, name)
            await self._unload(name)
            log.info("deleted model %s (versions %s)", name, ", ".join(map(str, numbers)))
            return numbers

    async def prune(self) -> list[tuple[str, int]]:
        """Delete versions unused for ``unused_version_ttl_s`` (see ``ModelStore.prune``),
        keeping for each model the version served, or the one a restart would serve."""
        async with self._lock:
            keep = {}
            for name in await asyncio.to_thread(self.store.names):
                served = self.served_version(name)
                if served is None:
                    with contextlib.suppress(EdgewireError):
                        served = (await asyncio.to_thread(self.store.resolve, name)).version
                if served is not None:
                    keep[name] = served
            pruned = await asyncio.to_thread(
                self.store.prune, unused_for=self.config.unused_version_ttl_s, keep=keep
            )
            await asyncio.to_thread(self._prune_engines)
        for name, version in pruned:
            log.info("pruned %s version %s: no alias pointed at it for %.0f s", name, version,
                     self.config.unused_version_ttl_s)  # fmt: skip
        return pruned

    def _prune_engines(self) -> None:
        """Remove TensorRT engines of models no stored version is (trt_cache.prune_engines)."""
        from edgewire.serve.backends.trt_cache import prune_engines

        try:
            models = {v.sha256 for name in self.store.names() for v in self.store.versions(name)}
        except EdgewireError:  # a version it cannot read may be one whose engines these are
            return
        caches = {self.config.data_dir / "trt", self.runtime.trt_cache_dir or Path()} - {Path()}
        for cache in sorted(caches):
            for folder in prune_engines(cache, models=models, min_age_s=PRUNE_EVERY_S):
                log.info("pruned TensorRT engines %s: no stored version has that model", folder)

    async def _prune_logged(self) -> None:
        try:
            await self.prune()
        except Exception:  # pruning is housekeeping: it never takes serving down
            log.exception("pruning unused model versions failed")

    async def _prune_hourly(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_EVERY_S)
            await self._prune_logged()

    def names(self) -> list[str]:
        return sorted(self._batchers)

    def batcher_stats(self) -> dict[str, dict[str, float]]:
        """Each served model's batcher counters (``Batcher.stats``)."""
        return {name: batcher.stats for name, batcher in self._batchers.items()}

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
        """The model legacy protocols use: the configured one, else the only one served,
        else the one served model that has a ``production`` alias.

        When none of these picks one, ModelNotFound, and one WARNING per served set
        that says which models there are and how to choose.
        """
        if self.config.legacy_mnistprot_model:
            return self.config.legacy_mnistprot_model
        names = tuple(self.names())
        if len(names) == 1:
            return names[0]
        production = self._with_default_alias(names)
        if len(production) == 1:
            self._unchosen = None
            return production[0]
        served = ", ".join(names) or "none"
        if not names:
            reason = "no model is served"
        elif production:
            reason = (
                f"{len(names)} models are served ({served}) and {len(production)} of them have "
                f"a {DEFAULT_ALIAS!r} alias ({', '.join(production)})"
            )
        else:
            reason = (
                f"{len(names)} models are served ({served}), none with a {DEFAULT_ALIAS!r} alias"
            )
        how = (
            "choose one with --legacy-mnistprot-model NAME (config legacy_mnistprot_model, "
            "env EDGEWIRE_LEGACY_MNISTPROT_MODEL)"
        )
        if self._unchosen != names:
            self._unchosen = names
            log.warning("MnistProt requests are refused: %s; %s", reason, how)
        raise ModelNotFound(f"no model for MnistProt requests: {reason}; {how}")

    def _with_default_alias(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The served models with a ``production`` alias, read from the store at most once
        a second: legacy requests ask on every request, and aliases move rarely."""
        now = time.monotonic()
        cached = self._alias_cache
        if cached is not None and cached[0] == names and now - cached[1] < _ALIAS_CACHE_S:
            return cached[2]
        with_alias = []
        for name in names:
            try:
                if DEFAULT_ALIAS in self.store.aliases(name):
                    with_alias.append(name)
            except EdgewireError as exc:  # an unreadable aliases file: not the production one
                log.debug("aliases of %r unreadable: %s", name, exc)
        found = tuple(with_alias)
        self._alias_cache = (names, now, found)
        return found

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
        named = check_inputs(loaded.inputs, inputs, max_rows=None, finite=False)
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

    def submit_nowait(
        self,
        name: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
        reply: Reply,
        *,
        deadline_ms: float | None = None,
    ) -> ModelVersion | None:
        """:meth:`infer` for a caller that answers from ``reply`` (see ``Batcher.submit_nowait``).

        Returns the version that will answer, or None (nothing queued) when the request
        has more rows than one batch holds: the caller then awaits :meth:`infer`.
        Refusals raise here, before anything is queued.
        """
        if name not in self._batchers:
            self.loaded(name)  # raises ModelNotFound
        loaded = self.host.get(name)
        batcher = self._batchers[name]
        named = check_inputs(loaded.inputs, inputs, max_rows=None, finite=False)
        rows = next(iter(named.values())).shape[0]
        limit = self.config.max_request_rows
        if rows > limit:
            raise FrameTooLarge(
                f"the request has {rows} rows, over max_request_rows={limit}; send fewer at once"
            )
        if rows > batcher.policy.max_batch_size:
            return None
        deadline = None
        if deadline_ms is not None:
            deadline = asyncio.get_running_loop().time() + deadline_ms / 1000
        batcher.submit_nowait(named, reply, deadline=deadline)
        return loaded.version

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
    finite: bool = True,
) -> dict[str, npt.NDArray[Any]]:
    """One request's tensors against the model's inputs, before it can spoil a batch
    or wait in the queue. Flat rows (N × 784 for an N × 1 × 28 × 28 input, as a
    microcontroller sends them) are taken as the model's shape. ``finite``: refuse
    NaN and Inf here (Serving leaves that to its batchers, which check a whole
    batch at once)."""
    if type(inputs) is list and len(inputs) == 1 == len(expected):
        fast = _one_input(expected[0], inputs[0], max_rows)
        if fast is not None:
            if finite:
                require_finite(fast, f"input {expected[0].name!r}", error=DataError)
            return {expected[0].name: fast}
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
        if finite:
            require_finite(array, f"input {info.name!r}", error=DataError)
        named[info.name] = array
    return named


def _one_input(
    info: TensorInfo, array: npt.NDArray[Any], max_rows: int | None
) -> npt.NDArray[Any] | None:
    """The common request, checked in few steps: one array of the model's dtype and
    exact shape (or its flat rows). None: let the general checks say what is wrong."""
    if type(array) is not np.ndarray or array.dtype != info.dtype:
        return None
    shape = array.shape
    want = info.shape
    if not want:  # a model input without a batch axis: the general checks say it
        return None
    if len(shape) != len(want):
        array = _unflatten(info, array)
        shape = array.shape
        if len(shape) != len(want):
            return None
    rows = shape[0]
    if rows < 1 or (max_rows is not None and rows > max_rows):
        return None
    for got, dim in zip(shape[1:], want[1:], strict=True):
        if dim is not None and got != dim:
            return None
    return array


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
