"""Dynamic batching: many small inference requests become few model calls.

Every protocol of the agent submits its requests to one :class:`Batcher` per
model. One asyncio task collects waiting requests into a batch (up to
``max_batch_size`` rows, or until ``max_queue_delay_ms`` after the first one
arrived), runs the blocking model call in an executor and hands each caller its
own rows back. While one batch computes the next one is collected; once full it
is queued behind the running one (so the model thread never waits for a busy
event loop between batches), otherwise it is launched before the finished
batch's callers resume, so their Python work overlaps the next model call. Each batch is its own executor job: batchers of
several models sharing one model thread take turns.

The hot path is kept small on purpose: a submit is a few attribute updates, one
future and one deque append; the collector is only woken when a batch could be
full, not once per request; concatenation, the NaN/Inf check (once per batch,
not per request), the model call and splitting run in the executor thread, so
the event loop only sets each caller's result. A caller that does not want to
await (a connection answering from a callback) passes its own :class:`Reply`
to :meth:`Batcher.submit_nowait` instead of a future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from edgewire.errors import (
    BusyError,
    ConfigError,
    DataError,
    EdgewireError,
    ModelError,
    PeerTimeout,
    one_line,
)

__all__ = ["BatchPolicy", "Batcher", "InferResult", "Reply", "RunFn"]

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]
RunFn = Callable[[dict[str, Array]], dict[str, Array]]
"""A blocking model call: named input batches in, named output batches out."""

_Signature = tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]

#: Batches launched at once: one computing and one full batch queued behind it.
MAX_INFLIGHT_BATCHES = 2


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """How a batcher trades latency for throughput."""

    max_batch_size: int = 32
    """Rows (samples) per model call; a larger single request still runs, alone."""
    max_queue_delay_ms: float = 2.0
    """How long the first request of a batch may wait for company."""
    max_queue: int = 4096
    """Requests waiting for a batch; one more is refused with BusyError at once."""

    def __post_init__(self) -> None:
        for field in ("max_batch_size", "max_queue"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        delay = self.max_queue_delay_ms
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise ConfigError(f"max_queue_delay_ms must be a finite number >= 0, got {delay!r}")


class InferResult(NamedTuple):
    """One request's answer and where its time went (a named tuple: one is made per
    request on the hot path)."""

    outputs: dict[str, Array]
    """This request's rows only (views into the batch's output arrays)."""
    queue_ms: float
    """From submit to the start of its batch's model call."""
    compute_ms: float
    """The model call of its batch."""
    batch_size: int
    """Rows in that model call."""


class Reply(Protocol):
    """Where a request's answer goes: an asyncio future, or a caller's own object with
    the same three methods, called on the event loop (:meth:`Batcher.submit_nowait`)."""

    def done(self) -> bool:
        """True once answered, or when the caller no longer wants the answer."""
        ...

    def set_result(self, result: InferResult, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Request:
    __slots__ = ("deadline", "fut", "inputs", "rows", "sig", "t0", "waiting")

    def __init__(
        self,
        inputs: dict[str, Array],
        rows: int,
        sig: _Signature,
        fut: Reply,
        deadline: float | None,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.sig = sig
        self.fut = fut
        self.deadline = deadline
        self.t0 = time.perf_counter()
        # True while counted in the queue depth: until its batch starts, it expires,
        # its caller goes away, or the batcher shuts down.
        self.waiting = True


class Batcher:
    """Collects concurrent requests for one model into batched model calls.

    Up to two batches are launched at once (one computing, one full batch queued
    behind it). With a one-thread executor, as the agent uses, they run one
    after the other; with a wider one they may overlap, so ``run`` must then be
    thread-safe (ONNX Runtime sessions are).
    """

    def __init__(
        self,
        run: RunFn,
        *,
        policy: BatchPolicy,
        executor: concurrent.futures.Executor | None = None,
        name: str = "model",
        refuse_nonfinite: bool = False,
    ) -> None:
        """``refuse_nonfinite``: a request whose floating inputs hold NaN or Inf gets
        DataError (checked once per batch, in the executor); the others still run."""
        self._run = run
        self._refuse_nonfinite = refuse_nonfinite
        self.policy = policy
        self.name = name
        self._executor = executor
        self._max_rows = policy.max_batch_size
        self._max_queue = policy.max_queue
        self._delay_s = policy.max_queue_delay_ms / 1000.0
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0  # rows in _queue, cancelled ones included
        self._depth = 0  # requests waiting, in _queue or in the batch being collected
        self._forming: list[_Request] = []
        self._deferred: list[_Request] = []  # other signatures, skipped by _forming
        # Launched batches, running or queued in the executor, with their requests.
        self._inflight: dict[asyncio.Future[_Computed], list[_Request]] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._wake_rows: float = 1  # queued rows at which a submit wakes the collector
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._batches = 0
        self._requests = 0
        self._rows = 0
        self._rejected = 0
        self._expired = 0
        self._failed = 0
        self._model_cpu_s = 0.0  # CPU time of the model calls (their thread's clock)
        self._model_s = 0.0  # their wall time

    # -- public API -------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching task on the running loop (idempotent)."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._collect_loop(), name=f"batcher:{self.name}")
        self._task.add_done_callback(self._on_loop_exit)

    async def submit(
        self, inputs: dict[str, Array], *, deadline: float | None = None
    ) -> InferResult:
        """Run ``inputs`` (all with the same leading row count) in some batch.

        ``deadline`` is a ``loop.time()`` value: a request still waiting then is
        dropped with PeerTimeout. A full queue or a stopping batcher raises
        BusyError at once, without waiting.
        """
        loop = self._loop
        if loop is None:
            raise BusyError(f"the batcher of model {self.name!r} is not started")
        fut: asyncio.Future[InferResult] = loop.create_future()
        req = self._enqueue(inputs, fut, deadline)
        try:
            return await fut
        finally:
            if req.waiting:  # the caller went away before its batch started
                req.waiting = False
                self._depth -= 1

    def submit_nowait(
        self, inputs: dict[str, Array], reply: Reply, *, deadline: float | None = None
    ) -> None:
        """Queue ``inputs``; their answer (or error) goes to ``reply``, on the loop.

        Refusals (a full queue, a stopping batcher, malformed inputs) raise here, as
        :meth:`submit` does. A ``reply`` that says it is done before its batch starts
        is dropped from the queue.
        """
        if self._loop is None:
            raise BusyError(f"the batcher of model {self.name!r} is not started")
        self._enqueue(inputs, reply, deadline)

    def _enqueue(self, inputs: dict[str, Array], fut: Reply, deadline: float | None) -> _Request:
        if self._closing:
            self._rejected += 1
            raise BusyError(f"model {self.name!r} is shutting down")
        if self._depth >= self._max_queue:
            self._rejected += 1
            raise BusyError(
                f"model {self.name!r} has {self._depth} requests waiting "
                f"(max_queue {self._max_queue}); retry later"
            )
        rows, sig = _describe(inputs)
        req = _Request(inputs, rows, sig, fut, deadline)
        self._queue.append(req)
        self._queued_rows += rows
        self._depth += 1
        if self._waiter is not None and self._queued_rows >= self._wake_rows:
            self._wake()
        return req

    def _drop(self, req: _Request) -> None:
        """Forget a request whose caller went away (a Reply that says it is done)."""
        if req.waiting:
            req.waiting = False
            self._depth -= 1

    async def stop(self, *, drain_timeout: float = 10.0) -> None:
        """Finish queued work (for at most ``drain_timeout`` s), then refuse new submits.

        Requests still unfinished after the timeout get BusyError; a model call
        still running in its thread is left to finish, its results unread.
        """
        self._closing = True
        task = self._task
        if task is None:
            return
        self._wake()
        done, _ = await asyncio.wait({task}, timeout=drain_timeout)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        self._fail_all(BusyError(f"model {self.name!r} is shutting down"))

    @property
    def queue_depth(self) -> int:
        """Requests waiting for their batch to start."""
        return self._depth

    @property
    def stats(self) -> dict[str, float]:
        """Counters since start: batches, requests and rows run, rejections, expiries."""
        return {
            "batches": float(self._batches),
            "requests": float(self._requests),
            "rows": float(self._rows),
            "mean_batch_size": self._rows / self._batches if self._batches else 0.0,
            "rejected": float(self._rejected),
            "expired": float(self._expired),
            "failed_batches": float(self._failed),
            "queue_depth": float(self._depth),
            "model_cpu_seconds": self._model_cpu_s,
            "model_seconds": self._model_s,
        }

    def set_run(self, run: RunFn) -> None:
        """Swap the model: a batch already started finishes on the old one."""
        self._run = run

    # -- the collector ------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _sleep(self, *, wake_rows: float, until: float | None) -> None:
        """Wait for enough queued rows, ``until`` (loop time), a finished batch or stop."""
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        self._wake_rows = wake_rows
        timer = loop.call_at(until, self._wake) if until is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def _collect_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        max_rows = self._max_rows
        while True:
            first = self._pop_live()
            if first is None:
                if self._closing and not self._inflight:
                    return
                await self._sleep(wake_rows=1, until=None)
                continue
            batch = self._forming = [first]
            rows = first.rows
            # The delay counts from the first request's arrival, not from now.
            close_at = loop.time() + self._delay_s - (time.perf_counter() - first.t0)
            deferred = self._deferred
            while True:
                rows, full = self._fill(batch, rows, deferred)
                ready = full or self._closing or loop.time() >= close_at
                inflight = len(self._inflight)
                if ready and (inflight == 0 or (full and inflight < MAX_INFLIGHT_BATCHES)):
                    break
                # Ready while the previous batch still computes: a batch that is not
                # full keeps collecting (a fuller batch costs nothing) until it
                # finishes; a full one queues behind it, so the model thread goes
                # from batch to batch without waiting for the event loop.
                await self._sleep(
                    wake_rows=math.inf if full else max_rows - rows,
                    until=None if ready else close_at,
                )
            if deferred:  # other shapes wait for a later batch, in their order
                self._queue.extendleft(reversed(deferred))
                self._queued_rows += sum(r.rows for r in deferred)
                deferred.clear()
            self._forming = []
            self._launch(batch)

    def _pop_live(self) -> _Request | None:
        """The oldest request whose caller still waits, removed from the queue."""
        queue = self._queue
        while queue:
            req = queue.popleft()
            self._queued_rows -= req.rows
            if not req.fut.done():
                return req
            self._drop(req)
        return None

    def _fill(self, batch: list[_Request], rows: int, deferred: list[_Request]) -> tuple[int, bool]:
        """Move fitting requests of the batch's signature from the queue into ``batch``."""
        queue, max_rows, sig = self._queue, self._max_rows, batch[0].sig
        while rows < max_rows and queue:
            req = queue[0]
            if req.fut.done():  # cancelled caller
                queue.popleft()
                self._queued_rows -= req.rows
                self._drop(req)
            elif req.sig != sig:
                queue.popleft()
                self._queued_rows -= req.rows
                deferred.append(req)
            elif rows + req.rows > max_rows:
                return rows, True  # never split a request; it starts the next batch
            else:
                queue.popleft()
                self._queued_rows -= req.rows
                batch.append(req)
                rows += req.rows
        return rows, rows >= max_rows

    def _launch(self, batch: list[_Request]) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        live: list[_Request] = []
        for req in batch:
            if req.fut.done():  # cancelled
                self._drop(req)
                continue
            req.waiting = False
            self._depth -= 1
            if req.deadline is not None and req.deadline <= now:
                self._expired += 1
                waited_ms = (time.perf_counter() - req.t0) * 1000.0
                self._answer(
                    req,
                    PeerTimeout(
                        f"deadline exceeded after {waited_ms:.1f} ms waiting for model {self.name!r}"
                    ),
                )
                continue
            live.append(req)
        if not live:
            return
        try:
            busy = loop.run_in_executor(
                self._executor, _compute, self._run, live, self._refuse_nonfinite
            )
        except RuntimeError as exc:  # the executor was shut down under us
            self._failed += 1
            error = ModelError(f"model {self.name!r} cannot run: {_one_line(exc)}")
            for req in live:
                self._answer(req, error)
            return
        self._inflight[busy] = live
        busy.add_done_callback(functools.partial(self._on_done, live))

    def _on_done(self, batch: list[_Request], busy: asyncio.Future[_Computed]) -> None:
        self._inflight.pop(busy, None)
        if busy.cancelled():  # given up at shutdown before it started; callers were failed
            self._wake()
            return
        exc = busy.exception()
        results = busy.result()[0] if exc is None else None
        # Count what reached the model: requests refused for NaN/Inf never did.
        ran = batch if results is None else [
            req for req, r in zip(batch, results, strict=True) if isinstance(r, InferResult)
        ]  # fmt: skip
        if ran:
            self._batches += 1
            self._requests += len(ran)
            self._rows += sum(r.rows for r in ran)
        # Wake the collector before the callers: callbacks run in order, so the next
        # batch starts computing before the callers' tasks resume and resubmit, and
        # their Python work overlaps the model call instead of preceding it.
        self._wake()
        if results is not None:
            _, cpu_s, wall_s = busy.result()
            self._model_cpu_s += cpu_s
            self._model_s += wall_s
            for req, result in zip(batch, results, strict=True):
                self._answer(req, result)
        else:
            assert exc is not None
            self._failed += 1
            error = self._as_edgewire(exc)
            for req in batch:
                self._answer(req, error)

    def _answer(self, req: _Request, result: InferResult | BaseException) -> None:
        """Give ``req`` its answer or error, unless its caller went away. A Reply that
        raises is logged: one caller's reply must not cost the others theirs."""
        if req.fut.done():
            return
        try:
            if isinstance(result, InferResult):
                req.fut.set_result(result)
            else:
                req.fut.set_exception(result)
        except Exception:
            log.exception("answering a request of model %r failed", self.name)

    def _as_edgewire(self, exc: BaseException) -> EdgewireError:
        if isinstance(exc, EdgewireError):
            return exc
        # The peer sees one line; the traceback stays in the server's log.
        log.error("model %r failed", self.name, exc_info=exc)
        error = ModelError(f"model {self.name!r} failed: {_one_line(exc)}")
        error.__cause__ = exc
        return error

    def _fail_all(self, error: EdgewireError) -> None:
        running = [req for batch in self._inflight.values() for req in batch]
        pending = [*self._queue, *self._forming, *self._deferred, *running]
        self._queue.clear()
        self._queued_rows = 0
        self._deferred.clear()
        self._forming = []
        for busy in self._inflight:
            busy.cancel()  # a batch still queued behind the running one never starts
        self._inflight.clear()
        for req in pending:
            if req.waiting:
                req.waiting = False
                self._depth -= 1
            self._answer(req, error)

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the collector must not leave callers hanging forever.
        log.error("batcher of model %r stopped", self.name, exc_info=task.exception())
        self._closing = True
        self._fail_all(ModelError(f"the batcher of model {self.name!r} stopped unexpectedly"))


def _describe(inputs: dict[str, Array]) -> tuple[int, _Signature]:
    """Row count and batching signature of one request; DataError when malformed."""
    rows = -1
    sig = []
    for key, arr in inputs.items():
        if not isinstance(arr, np.ndarray) or arr.ndim == 0:
            raise DataError(f"input {key!r} must be an array with a leading batch dimension")
        shape = arr.shape
        if rows < 0:
            rows = shape[0]
        elif shape[0] != rows:
            shapes = {k: tuple(v.shape) for k, v in inputs.items()}
            raise DataError(
                f"inputs of one request must share the leading batch dimension: {shapes}"
            )
        sig.append((key, arr.dtype, shape[1:]))
    if rows < 1:
        raise DataError("a request needs at least one input with at least one row")
    return rows, tuple(sig)


#: A computed batch: each request's answer (or refusal), the model call's CPU and wall seconds.
_Computed = tuple[list[InferResult | DataError], float, float]


def _compute(run: RunFn, batch: list[_Request], refuse_nonfinite: bool = False) -> _Computed:
    """Concatenate, check, run and split one batch (in the executor thread)."""
    if len(batch) == 1:
        inputs = batch[0].inputs
    else:
        inputs = {k: np.concatenate([r.inputs[k] for r in batch]) for k in batch[0].inputs}
    if refuse_nonfinite:
        refused = _nonfinite(inputs, batch)
        if refused:  # rare: run the others without them
            live = [req for i, req in enumerate(batch) if i not in refused]
            answers, cpu_s, wall_s = _compute(run, live) if live else ([], 0.0, 0.0)
            each = iter(answers)
            return (
                [refused[i] if i in refused else next(each) for i in range(len(batch))],
                cpu_s,
                wall_s,
            )
    total = sum(r.rows for r in batch)
    cpu0 = time.thread_time()
    start = time.perf_counter()
    outputs = run(inputs)
    wall_s = time.perf_counter() - start
    cpu_s = time.thread_time() - cpu0
    compute_ms = wall_s * 1000.0
    if not isinstance(outputs, dict) or not outputs:
        raise ModelError(f"model returned {type(outputs).__name__}, expected a dict of arrays")
    for key, arr in outputs.items():
        got = arr.shape[0] if isinstance(arr, np.ndarray) and arr.ndim > 0 else 0
        if got != total:
            raise ModelError(f"model returned {got} rows for {total} inputs (output {key!r})")
    results: list[InferResult | DataError] = []
    offset = 0
    for req in batch:
        end = offset + req.rows
        own = outputs if len(batch) == 1 else {k: v[offset:end] for k, v in outputs.items()}
        queue_ms = (start - req.t0) * 1000.0
        results.append(InferResult(own, queue_ms, compute_ms, total))
        offset = end
    return results, cpu_s, wall_s


def _nonfinite(inputs: dict[str, Array], batch: list[_Request]) -> dict[int, DataError]:
    """The requests of ``batch`` whose floating inputs hold NaN or Inf, by position.

    One ``isfinite`` over each whole batch input; only when that finds something
    are the requests looked at one by one.
    """
    refused: dict[int, DataError] = {}
    for key, arr in inputs.items():
        if arr.dtype.kind != "f" or np.isfinite(arr).all():
            continue
        for i, req in enumerate(batch):
            if i not in refused and not np.isfinite(req.inputs[key]).all():
                refused[i] = DataError(f"input {key!r} contains NaN or Inf values")
    return refused


def _one_line(exc: BaseException) -> str:
    # With the type name: "KeyError: 'x'" says more than "'x'".
    name = type(exc).__name__
    return f"{name}: {one_line(exc, limit=198 - len(name))}" if str(exc).strip() else name
