"""The dynamic batcher with real asyncio and a numpy function as the model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from edgewire.errors import BusyError, ConfigError, DataError, ModelError, PeerTimeout
from edgewire.serve.batcher import Batcher, BatchPolicy, InferResult

Arrays = dict[str, np.ndarray[Any, Any]]


class Model:
    """``y = 2x + 1``, recording every call; optionally slow or blocked until released."""

    def __init__(self, *, sleep_s: float = 0.0, blocked: bool = False, offset: float = 1.0) -> None:
        self.calls: list[Arrays] = []
        self.threads: list[str] = []
        self.sleep_s = sleep_s
        self.offset = offset
        self.entered = threading.Event()
        self.release = threading.Event()
        if not blocked:
            self.release.set()

    def __call__(self, inputs: Arrays) -> Arrays:
        self.calls.append(inputs)
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.release.wait(10), "test never released the model"
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return {"y": inputs["x"] * 2 + self.offset}

    @property
    def batch_rows(self) -> list[int]:
        return [len(c["x"]) for c in self.calls]


@asynccontextmanager
async def running(model: Callable[[Arrays], Arrays], **policy: Any) -> AsyncIterator[Batcher]:
    batcher = Batcher(model, policy=BatchPolicy(**policy), name="digits")
    await batcher.start()
    try:
        yield batcher
    finally:
        if isinstance(model, Model):
            model.release.set()  # never leave an executor thread blocked
        await batcher.stop(drain_timeout=5)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.001)


def rows(n: int, start: float = 0.0, width: int = 3) -> np.ndarray[Any, Any]:
    return (np.arange(n * width, dtype=np.float32) + start).reshape(n, width)


# -- policy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_size", -3),
        ("max_batch_size", 2.5),
        ("max_queue", 0),
        ("max_queue", True),
        ("max_queue_delay_ms", -0.5),
        ("max_queue_delay_ms", float("nan")),
        ("max_queue_delay_ms", float("inf")),
    ],
)
def test_policy_rejects_bad_values_naming_them(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        BatchPolicy(**{field: value})  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


def test_policy_defaults_and_zero_delay_are_valid() -> None:
    assert BatchPolicy() == BatchPolicy(max_batch_size=32, max_queue_delay_ms=2.0, max_queue=4096)
    assert BatchPolicy(max_queue_delay_ms=0).max_queue_delay_ms == 0


# -- batching and results -------------------------------------------------------------


async def test_500_concurrent_mixed_row_submitters_each_get_their_own_rows() -> None:
    model = Model(sleep_s=0.001)
    async with running(model, max_batch_size=16, max_queue_delay_ms=1) as batcher:
        sizes = [1 + i % 5 for i in range(500)]
        starts = np.cumsum([0, *sizes])[:-1] * 10
        inputs = [rows(n, float(s)) for n, s in zip(sizes, starts, strict=True)]
        results = await asyncio.gather(*(batcher.submit({"x": x}) for x in inputs))
    for x, result in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], x * 2 + 1)
        assert result.outputs["y"].dtype == np.float32
        assert 1 <= result.batch_size <= 16
        assert result.queue_ms >= 0 and result.compute_ms >= 0
    assert max(model.batch_rows) <= 16
    assert sum(model.batch_rows) == sum(sizes)
    assert batcher.stats["requests"] == 500
    assert batcher.stats["rows"] == sum(sizes)
    assert batcher.stats["batches"] == len(model.calls)


async def test_a_slow_model_gets_real_batches() -> None:
    model = Model(sleep_s=0.005)
    async with running(model, max_batch_size=8, max_queue_delay_ms=2) as batcher:
        await asyncio.gather(*(batcher.submit({"x": rows(1, i)}) for i in range(64)))
    assert len(model.calls) < 64
    assert batcher.stats["mean_batch_size"] > 1
    assert batcher.stats["mean_batch_size"] == pytest.approx(64 / len(model.calls))


async def test_zero_delay_single_caller_does_not_wait_for_company() -> None:
    model = Model()
    async with running(model, max_batch_size=32, max_queue_delay_ms=0) as batcher:
        start = time.perf_counter()
        for i in range(50):
            result = await asyncio.wait_for(batcher.submit({"x": rows(1, i)}), 5)
            assert result.batch_size == 1
        elapsed = time.perf_counter() - start
    # Generous: 50 sequential calls of a trivial model, 100 ms each at worst.
    assert elapsed < 5.0
    assert model.batch_rows == [1] * 50


async def test_a_lone_request_waits_for_company_up_to_the_delay() -> None:
    async with running(Model(), max_batch_size=32, max_queue_delay_ms=100) as batcher:
        start = time.perf_counter()
        result = await asyncio.wait_for(batcher.submit({"x": rows(1)}), 10)
    assert time.perf_counter() - start >= 0.095
    assert result.queue_ms >= 95


async def test_a_full_batch_starts_without_waiting_for_the_delay() -> None:
    model = Model()
    async with running(model, max_batch_size=4, max_queue_delay_ms=60_000) as batcher:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit({"x": rows(1, i)}) for i in range(4))), 10
        )
    assert [r.batch_size for r in results] == [4, 4, 4, 4]
    assert model.batch_rows == [4]


async def test_a_request_larger_than_the_batch_runs_alone_unsplit() -> None:
    model = Model()
    async with running(model, max_batch_size=4, max_queue_delay_ms=5) as batcher:
        big = rows(10, 100)
        small, large, other = await asyncio.gather(
            batcher.submit({"x": rows(1)}),
            batcher.submit({"x": big}),
            batcher.submit({"x": rows(1, 50)}),
        )
    np.testing.assert_array_equal(large.outputs["y"], big * 2 + 1)
    assert large.batch_size == 10
    assert 10 in model.batch_rows
    assert sorted(model.batch_rows) == [1, 1, 10]
    assert small.batch_size == 1 and other.batch_size == 1


async def test_several_inputs_and_outputs_are_batched_and_split_together() -> None:
    def model(d: Arrays) -> Arrays:
        return {"sum": d["a"] + d["b"], "first": d["a"][:, :1].copy()}

    async with running(model, max_batch_size=8, max_queue_delay_ms=5) as batcher:
        pairs = [(rows(n, 10 * i), rows(n, -i)) for i, n in enumerate([1, 2, 3])]
        results = await asyncio.gather(*(batcher.submit({"a": a, "b": b}) for a, b in pairs))
    for (a, b), result in zip(pairs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["sum"], a + b)
        np.testing.assert_array_equal(result.outputs["first"], a[:, :1])
        assert result.batch_size == 6


async def test_a_dedicated_executor_runs_the_model() -> None:
    model = Model()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model-thread") as pool:
        batcher = Batcher(model, policy=BatchPolicy(max_queue_delay_ms=0), executor=pool)
        await batcher.start()
        await batcher.submit({"x": rows(1)})
        await batcher.stop()
    assert model.threads[0].startswith("model-thread")


async def test_a_full_batch_queues_behind_the_running_one_without_the_event_loop() -> None:
    model = Model(sleep_s=0.05)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        policy = BatchPolicy(max_batch_size=2, max_queue_delay_ms=0)
        batcher = Batcher(model, policy=policy, executor=pool)
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        await wait_until(model.entered.is_set)
        second = asyncio.ensure_future(batcher.submit({"x": rows(2, 1)}))  # a full batch
        partial = asyncio.ensure_future(batcher.submit({"x": rows(1, 7)}))  # not full
        await asyncio.sleep(0.01)  # the collector launches what it may
        time.sleep(0.2)  # noqa: ASYNC251 - a busy event loop: nothing runs on it now
        # The full batch went straight from the first call to the model; the
        # partial one waited for the loop (it may still gain company).
        assert model.batch_rows == [1, 2]
        await asyncio.gather(first, second, partial)
        assert model.batch_rows == [1, 2, 1]
        await batcher.stop()


# -- different signatures -------------------------------------------------------------


async def test_different_trailing_shapes_go_in_separate_batches_in_order() -> None:
    model = Model(blocked=True)
    async with running(model, max_batch_size=32, max_queue_delay_ms=1) as batcher:
        first = asyncio.ensure_future(batcher.submit({"x": rows(1, width=3)}))
        await wait_until(model.entered.is_set)
        xs = [rows(1, 10 * i, width=3 if i % 2 == 0 else 5) for i in range(6)]
        tasks = [asyncio.ensure_future(batcher.submit({"x": x})) for x in xs]
        await wait_until(lambda: batcher.queue_depth == 6)
        model.release.set()
        results = await asyncio.gather(*tasks)
        await first
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_array_equal(result.outputs["y"], x * 2 + 1)
    # The running batch, then the oldest shape's requests, then the other shape's.
    assert [c["x"].shape for c in model.calls] == [(1, 3), (3, 3), (3, 5)]
    np.testing.assert_array_equal(model.calls[1]["x"], np.concatenate(xs[0::2]))
    np.testing.assert_array_equal(model.calls[2]["x"], np.concatenate(xs[1::2]))


async def test_different_dtypes_are_never_mixed_in_one_batch() -> None:
    model = Model(sleep_s=0.002)
    async with running(model, max_batch_size=16, max_queue_delay_ms=5) as batcher:
        xs = [rows(1, i).astype(np.float64 if i % 3 == 0 else np.float32) for i in range(30)]
        results = await asyncio.gather(*(batcher.submit({"x": x}) for x in xs))
    for x, result in zip(xs, results, strict=True):
        assert result.outputs["y"].dtype == x.dtype
        np.testing.assert_array_equal(result.outputs["y"], x * 2 + 1)
    assert {c["x"].dtype for c in model.calls} == {np.dtype(np.float32), np.dtype(np.float64)}


# -- bad requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        {"a": np.zeros((2, 3)), "b": np.zeros((3, 3))},
        {"a": np.float32(1.0)},
        {"a": np.zeros((0, 3))},
        {"a": [[1.0, 2.0]]},
        {},
    ],
    ids=["rows-disagree", "scalar", "zero-rows", "not-an-array", "empty"],
)
async def test_malformed_requests_get_data_error_and_queue_nothing(inputs: Any) -> None:
    model = Model()
    async with running(model) as batcher:
        with pytest.raises(DataError):
            await batcher.submit(inputs)
        assert batcher.queue_depth == 0
        # The batcher still serves others.
        result = await batcher.submit({"x": rows(2)})
        assert result.batch_size == 2
    assert model.batch_rows == [2]


async def test_disagreeing_rows_error_shows_the_shapes() -> None:
    async with running(Model()) as batcher:
        with pytest.raises(DataError, match=r"\(2, 3\).*\(3, 3\)"):
            await batcher.submit({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})


# -- bounded queue --------------------------------------------------------------------


async def test_full_queue_rejects_at_once_and_recovers_after_draining() -> None:
    model = Model(blocked=True)
    async with running(model, max_batch_size=1, max_queue_delay_ms=0, max_queue=3) as batcher:
        running_one = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        await wait_until(model.entered.is_set)
        # One full batch queues behind the running one; the next three wait in the queue.
        queued = asyncio.ensure_future(batcher.submit({"x": rows(1, 5)}))
        await wait_until(lambda: len(model.calls) == 2)  # the default executor starts it
        waiting = [asyncio.ensure_future(batcher.submit({"x": rows(1, i)})) for i in (1, 2, 3)]
        await wait_until(lambda: batcher.queue_depth == 3)

        # The refusal happens in the coroutine's first step: it never suspends, so it
        # cannot be waiting for the (blocked) model.
        refused = batcher.submit({"x": rows(1, 9)})
        with pytest.raises(BusyError, match="max_queue 3"):
            refused.send(None)
        assert batcher.stats["rejected"] == 1
        assert not running_one.done() and not any(t.done() for t in [queued, *waiting])

        model.release.set()
        await asyncio.gather(running_one, queued, *waiting)
        assert batcher.queue_depth == 0
        result = await batcher.submit({"x": rows(1, 4)})
        np.testing.assert_array_equal(result.outputs["y"], rows(1, 4) * 2 + 1)
    assert batcher.stats["requests"] == 6


# -- deadlines and cancellation -------------------------------------------------------


async def test_an_expired_request_is_dropped_from_its_batch() -> None:
    model = Model(blocked=True)
    async with running(model, max_batch_size=8, max_queue_delay_ms=0) as batcher:
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        await wait_until(model.entered.is_set)
        late = asyncio.ensure_future(batcher.submit({"x": rows(1, 1)}, deadline=loop.time() + 0.02))
        fine = asyncio.ensure_future(batcher.submit({"x": rows(1, 2)}, deadline=loop.time() + 60))
        await asyncio.sleep(0.05)
        model.release.set()
        with pytest.raises(PeerTimeout, match="deadline exceeded"):
            await late
        assert (await fine).batch_size == 1
        await first
    assert model.batch_rows == [1, 1]
    assert batcher.stats["expired"] == 1


async def test_a_cancelled_caller_leaves_the_batch_undisturbed() -> None:
    model = Model(blocked=True)
    async with running(model, max_batch_size=8, max_queue_delay_ms=0) as batcher:
        first = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        await wait_until(model.entered.is_set)
        gone = asyncio.ensure_future(batcher.submit({"x": rows(1, 1)}))
        kept = asyncio.ensure_future(batcher.submit({"x": rows(1, 2)}))
        await wait_until(lambda: batcher.queue_depth == 2)
        gone.cancel()
        await wait_until(lambda: batcher.queue_depth == 1)
        model.release.set()
        result = await kept
        await first
    assert gone.cancelled()
    np.testing.assert_array_equal(result.outputs["y"], rows(1, 2) * 2 + 1)
    assert model.batch_rows == [1, 1]
    np.testing.assert_array_equal(model.calls[1]["x"], rows(1, 2))


async def test_a_caller_cancelled_during_compute_does_not_disturb_the_others() -> None:
    model = Model(blocked=True)
    async with running(model, max_batch_size=2, max_queue_delay_ms=10_000) as batcher:
        a = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        b = asyncio.ensure_future(batcher.submit({"x": rows(1, 1)}))
        await wait_until(model.entered.is_set)
        a.cancel()
        model.release.set()
        result = await b
        assert batcher.queue_depth == 0
    assert a.cancelled()
    np.testing.assert_array_equal(result.outputs["y"], rows(1, 1) * 2 + 1)
    assert result.batch_size == 2


# -- model failures -------------------------------------------------------------------


async def test_a_raising_model_fails_that_batch_only_with_a_one_line_model_error() -> None:
    calls = 0

    def flaky(d: Arrays) -> Arrays:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad weights\nsecond line that must not leak")
        return {"y": d["x"] * 2 + 1}

    async with running(flaky, max_batch_size=3, max_queue_delay_ms=60_000) as batcher:
        failed = await asyncio.gather(
            *(batcher.submit({"x": rows(1, i)}) for i in range(3)), return_exceptions=True
        )
        later = await asyncio.gather(*(batcher.submit({"x": rows(1, i)}) for i in range(3)))
    for error in failed:
        assert isinstance(error, ModelError)
        assert str(error) == "model 'digits' failed: ValueError: bad weights"
        assert isinstance(error.__cause__, ValueError)
    assert [r.batch_size for r in later] == [3, 3, 3]
    assert batcher.stats["failed_batches"] == 1


async def test_an_edgewire_error_from_the_model_passes_as_is() -> None:
    def picky(d: Arrays) -> Arrays:
        raise DataError("pixel values must be 0..255")

    async with running(picky, max_queue_delay_ms=0) as batcher:
        with pytest.raises(DataError, match=r"pixel values must be 0\.\.255"):
            await batcher.submit({"x": rows(1)})


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda d: {"y": d["x"][:1]}, "model returned 1 rows for 3 inputs"),
        (lambda d: {"y": np.float32(1.0)}, "model returned 0 rows for 3 inputs"),
        (lambda d: [d["x"]], "expected a dict of arrays"),
    ],
    ids=["too-few-rows", "scalar-output", "not-a-dict"],
)
async def test_a_model_returning_the_wrong_rows_fails_the_batch(
    model: Callable[[Arrays], Arrays], message: str
) -> None:
    async with running(model, max_batch_size=3, max_queue_delay_ms=60_000) as batcher:
        errors = await asyncio.gather(
            batcher.submit({"x": rows(2)}), batcher.submit({"x": rows(1)}), return_exceptions=True
        )
    assert all(isinstance(e, ModelError) and message in str(e) for e in errors)


# -- model swap and shutdown ----------------------------------------------------------


async def test_set_run_swaps_the_model_between_batches() -> None:
    old, new = Model(blocked=True), Model(offset=100.0)
    async with running(old, max_batch_size=8, max_queue_delay_ms=0) as batcher:
        before = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        await wait_until(old.entered.is_set)
        batcher.set_run(new)
        after = asyncio.ensure_future(batcher.submit({"x": rows(1)}))
        old.release.set()
        assert (await before).outputs["y"][0, 0] == 1.0
        assert (await after).outputs["y"][0, 0] == 100.0
    assert old.batch_rows == [1] and new.batch_rows == [1]


async def test_stop_drains_queued_work_then_rejects() -> None:
    model = Model(sleep_s=0.002)
    batcher = Batcher(model, policy=BatchPolicy(max_batch_size=4, max_queue_delay_ms=50))
    await batcher.start()
    tasks = [asyncio.ensure_future(batcher.submit({"x": rows(1, i)})) for i in range(40)]
    await asyncio.sleep(0)
    await batcher.stop()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert sum(model.batch_rows) == 40
    with pytest.raises(BusyError, match="shutting down"):
        await batcher.submit({"x": rows(1)})


async def test_stop_gives_up_after_the_drain_timeout() -> None:
    model = Model(blocked=True)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    policy = BatchPolicy(max_batch_size=1, max_queue_delay_ms=0)
    batcher = Batcher(model, policy=policy, executor=pool)
    await batcher.start()
    try:
        tasks = [asyncio.ensure_future(batcher.submit({"x": rows(1, i)})) for i in range(3)]
        await wait_until(model.entered.is_set)
        await batcher.stop(drain_timeout=0.05)
        for task in tasks:
            with pytest.raises(BusyError, match="shutting down"):
                await task
        assert batcher.queue_depth == 0
    finally:
        model.release.set()
        pool.shutdown(wait=True)
    # The running call finished; nothing queued was started after the give-up.
    assert model.batch_rows == [1]


async def test_submit_before_start_is_refused() -> None:
    batcher = Batcher(Model(), policy=BatchPolicy())
    with pytest.raises(BusyError, match="not started"):
        await batcher.submit({"x": rows(1)})


def test_infer_result_is_frozen() -> None:
    result = InferResult(outputs={}, queue_ms=0.0, compute_ms=0.0, batch_size=1)
    with pytest.raises(AttributeError):
        result.batch_size = 2  # type: ignore[misc]


# --- NaN/Inf once per batch; replies without futures; model time -------------------------


async def test_nan_or_inf_refuses_only_its_own_request_and_the_rest_run_together() -> None:
    model = Model(blocked=True)
    batcher = Batcher(model, policy=BatchPolicy(max_batch_size=8), refuse_nonfinite=True)
    await batcher.start()
    try:
        bad = rows(1, start=10.0)
        bad[0, 1] = np.nan
        worse = rows(1, start=20.0)
        worse[0, 0] = -np.inf
        calls = [
            asyncio.ensure_future(batcher.submit({"x": x}))
            for x in (rows(1), bad, rows(1, start=30.0), worse, rows(1, start=40.0))
        ]
        await asyncio.sleep(0.05)
        model.release.set()
        done = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        model.release.set()
        await batcher.stop(drain_timeout=5)
    for i in (1, 3):
        assert isinstance(done[i], DataError)
        assert "input 'x' contains NaN or Inf values" in str(done[i])
    answered = [d for i, d in enumerate(done) if i not in (1, 3)]
    assert all(isinstance(d, InferResult) for d in answered)
    starts = [0.0, 30.0, 40.0]
    for result, start in zip(answered, starts, strict=True):
        assert isinstance(result, InferResult)
        np.testing.assert_allclose(result.outputs["y"], rows(1, start=start) * 2 + 1)
    assert model.batch_rows == [3]  # one model call, without the refused rows
    assert batcher.stats["queue_depth"] == 0


class Reply:
    """A caller's own reply object (what a connection answering from a callback passes)."""

    def __init__(self) -> None:
        self.result: InferResult | None = None
        self.error: BaseException | None = None
        self.gone = False

    def done(self) -> bool:
        return self.gone or self.result is not None or self.error is not None

    def set_result(self, result: InferResult) -> None:
        self.result = result

    def set_exception(self, exc: BaseException) -> None:
        self.error = exc


async def test_submit_nowait_answers_the_reply_and_a_gone_reply_leaves_no_depth() -> None:
    model = Model(blocked=True)
    async with running(model, max_batch_size=2, max_queue_delay_ms=1000) as batcher:
        first = asyncio.ensure_future(batcher.submit({"x": rows(2)}))  # computes, blocked
        assert await asyncio.to_thread(model.entered.wait, 5)
        kept, gone = Reply(), Reply()
        batcher.submit_nowait({"x": rows(1, start=5.0)}, kept)
        batcher.submit_nowait({"x": rows(1, start=9.0)}, gone)
        assert batcher.queue_depth == 2
        gone.gone = True  # the connection went away before its batch started
        model.release.set()
        await first
        for _ in range(200):
            if kept.done():
                break
            await asyncio.sleep(0.01)
        assert kept.result is not None and kept.error is None
        np.testing.assert_allclose(kept.result.outputs["y"], rows(1, start=5.0) * 2 + 1)
        assert gone.result is None and gone.error is None
        assert batcher.queue_depth == 0
        assert model.batch_rows == [2, 1]


async def test_submit_nowait_refusals_raise_at_once() -> None:
    async with running(Model(), max_batch_size=2, max_queue=1) as batcher:
        with pytest.raises(DataError):
            batcher.submit_nowait({"x": np.zeros(())}, Reply())
    stopped = Batcher(Model(), policy=BatchPolicy())
    with pytest.raises(BusyError, match="not started"):
        stopped.submit_nowait({"x": rows(1)}, Reply())


async def test_model_time_is_counted_by_its_thread_clock() -> None:
    def busy(inputs: Arrays) -> Arrays:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:  # CPU, not sleep
            pass
        return {"y": inputs["x"]}

    async with running(busy, max_batch_size=4) as batcher:
        await batcher.submit({"x": rows(1)})
        stats = batcher.stats
    assert stats["model_cpu_seconds"] >= 0.045
    assert stats["model_seconds"] >= stats["model_cpu_seconds"] * 0.9


async def test_requests_refused_for_nan_are_not_counted_as_model_calls() -> None:
    model = Model()
    batcher = Batcher(model, policy=BatchPolicy(max_batch_size=4), refuse_nonfinite=True)
    await batcher.start()
    try:
        bad = rows(1)
        bad[0, 0] = np.nan
        with pytest.raises(DataError):
            await batcher.submit({"x": bad})
        await batcher.submit({"x": rows(2)})
    finally:
        await batcher.stop(drain_timeout=5)
    stats = batcher.stats
    assert model.batch_rows == [2]
    assert (stats["batches"], stats["requests"], stats["rows"]) == (1, 1, 2)
