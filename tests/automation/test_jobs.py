"""The durable job queue and its worker, in one process (SIGKILL: test_jobs_kill.py)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edgewire.automation.jobs import DB_NAME, MAX_LOG_CHARS, Backoff, Job, JobQueue, JobState
from edgewire.automation.worker import JobContext, Worker
from edgewire.errors import BusyError, ConfigError, DataError, ProtocolError


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Iterator[JobQueue]:
    q = JobQueue(tmp_path, clock=clock, rng=random.Random(0), backoff=Backoff(base_s=10, cap_s=100))
    yield q
    q.close()


def test_the_database_is_wal_with_full_sync(queue: JobQueue, tmp_path: Path) -> None:
    assert queue.path == tmp_path / DB_NAME
    assert queue._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(queue.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_same_key_twice_is_one_job_that_runs_once(queue: JobQueue) -> None:
    first = queue.enqueue("deploy", {"ref": "a/b/c:download"}, "wandb:a/b/c:v3")
    again = queue.enqueue("deploy", {"ref": "something else"}, "wandb:a/b/c:v3")
    assert first == (first[0], True) and again == (first[0], False)
    job = queue.claim("w1")
    assert job is not None and job.payload == {"ref": "a/b/c:download"}
    assert queue.claim("w2") is None
    assert queue.succeed(job.id, "w1", {"deployed": "v3"})
    assert queue.enqueue("deploy", {}, "wandb:a/b/c:v3") == (first[0], False)  # done, still deduped
    assert queue.claim("w1") is None
    assert queue.get(first[0]).state is JobState.SUCCEEDED  # type: ignore[union-attr]


def test_jobs_survive_a_reopen(tmp_path: Path, clock: Clock) -> None:
    q = JobQueue(tmp_path, clock=clock)
    job_id, _ = q.enqueue("deploy", {"n": 1, "nested": {"ok": [1, 2]}}, "k")
    q.close()
    q = JobQueue(tmp_path, clock=clock)
    try:
        job = q.get(job_id)
        assert job is not None and job.state is JobState.QUEUED
        assert job.payload == {"n": 1, "nested": {"ok": [1, 2]}}
    finally:
        q.close()


@pytest.mark.parametrize(
    "payload",
    [
        {"x": float("nan")},
        {"x": {1, 2}},
        {"x": b"bytes"},
        ["not", "an", "object"],
        {"x": "y" * 70_000},
    ],
)
def test_payloads_are_plain_json_objects(queue: JobQueue, payload: Any) -> None:
    with pytest.raises(ProtocolError):
        queue.enqueue("deploy", payload, "k")
    assert queue.list() == []


def test_claim_order_and_attempts_and_owner_checks(queue: JobQueue, clock: Clock) -> None:
    a, _ = queue.enqueue("deploy", {}, "a")
    clock.now += 1
    b, _ = queue.enqueue("deploy", {}, "b")
    first = queue.claim("w1", lease_s=10)
    assert first is not None and first.id == a and first.attempts == 1
    assert first.state is JobState.RUNNING and first.lease_owner == "w1"
    assert first.lease_expires_at == clock.now + 10
    assert not queue.renew(a, "w2") and not queue.succeed(a, "w2") and not queue.fail(a, "w2", "x")
    clock.now += 5
    assert queue.renew(a, "w1", lease_s=10)
    assert queue.get(a).lease_expires_at == clock.now + 10  # type: ignore[union-attr]
    second = queue.claim("w2")
    assert second is not None and second.id == b


def test_a_failure_backs_off_with_jitter_then_fails_for_good(queue: JobQueue, clock: Clock) -> None:
    job_id, _ = queue.enqueue("deploy", {}, "k", max_attempts=3)
    delays = []
    for attempt in (1, 2):
        job = queue.claim("w")
        assert job is not None and job.attempts == attempt
        assert queue.fail(job_id, "w", f"boom {attempt}")
        queued = queue.get(job_id)
        assert (
            queued is not None
            and queued.state is JobState.QUEUED
            and queued.error == f"boom {attempt}"
        )
        delay = queued.next_run_at - clock.now
        delays.append(delay)
        assert queue.claim("w") is None  # not before its time
        clock.now += delay
    assert 5 <= delays[0] <= 10 and 10 <= delays[1] <= 20  # base 10, doubling, jitter 0.5
    job = queue.claim("w")
    assert job is not None and job.attempts == 3
    assert queue.fail(job_id, "w", "boom 3")
    done = queue.get(job_id)
    assert done is not None and done.state is JobState.FAILED and done.finished_at == clock.now
    assert queue.claim("w") is None


def test_backoff_is_capped() -> None:
    backoff = Backoff(base_s=1, cap_s=8, jitter=0)
    assert [backoff.delay(n, random.Random(0)) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_fail_without_retry_is_final(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue("deploy", {}, "k", max_attempts=5)
    assert queue.claim("w") is not None
    assert queue.fail(job_id, "w", "refused", retry=False)
    assert queue.get(job_id).state is JobState.FAILED  # type: ignore[union-attr]


def test_an_expired_lease_is_requeued_only_after_it_expires(queue: JobQueue, clock: Clock) -> None:
    job_id, _ = queue.enqueue("deploy", {}, "k", max_attempts=2)
    assert queue.claim("dead", lease_s=10) is not None
    clock.now += 9.9
    assert queue.recover() == 0 and queue.claim("alive") is None  # still someone's
    clock.now += 0.2
    assert queue.recover() == 1
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.QUEUED and "lease expired" in str(job.error)
    clock.now += 1000
    again = queue.claim("alive", lease_s=10)
    assert again is not None and again.attempts == 2
    assert not queue.renew(job_id, "dead") and not queue.succeed(job_id, "dead")  # fenced off
    clock.now += 11
    assert queue.claim("third") is None  # attempts spent: the expiry fails it
    failed = queue.get(job_id)
    assert (
        failed is not None
        and failed.state is JobState.FAILED
        and "lease expired" in str(failed.error)
    )


def test_renewing_an_expired_lease_fails_even_before_anyone_else_claims(
    queue: JobQueue, clock: Clock
) -> None:
    job_id, _ = queue.enqueue("deploy", {}, "k")
    assert queue.claim("w", lease_s=5) is not None
    clock.now += 5
    assert not queue.renew(job_id, "w")


def test_the_queue_is_bounded(tmp_path: Path, clock: Clock) -> None:
    q = JobQueue(tmp_path, clock=clock, max_queued=2, keep_finished=2)
    try:
        q.enqueue("deploy", {}, "a")
        q.enqueue("deploy", {}, "b")
        with pytest.raises(BusyError):
            q.enqueue("deploy", {}, "c")
        assert q.enqueue("deploy", {}, "a")[1] is False  # a known key is still answered
        for key in "abcde":
            if key in "cde":
                q.enqueue("deploy", {}, key)
            job = q.claim("w")
            assert job is not None
            clock.now += 1
            q.succeed(job.id, "w")
        q.enqueue("deploy", {}, "f")
        assert q.counts() == {JobState.QUEUED: 1, JobState.RUNNING: 0, JobState.SUCCEEDED: 2,
                              JobState.FAILED: 0}  # fmt: skip
        assert [j.key for j in q.list(10)] == ["f", "e", "d"]
    finally:
        q.close()


def test_bad_arguments_are_refused(queue: JobQueue) -> None:
    with pytest.raises(ProtocolError):
        queue.enqueue("deploy", {}, "")
    with pytest.raises(ConfigError):
        queue.enqueue("deploy", {}, "k", max_attempts=0)
    with pytest.raises(ConfigError):
        queue.claim("w", lease_s=0)


def test_log_tail_is_bounded(queue: JobQueue) -> None:
    job_id, _ = queue.enqueue("deploy", {}, "k")
    assert queue.claim("w") is not None
    assert queue.succeed(job_id, "w", log_tail="x" * (MAX_LOG_CHARS * 3) + "end")
    tail = queue.get(job_id).log_tail  # type: ignore[union-attr]
    assert len(tail) == MAX_LOG_CHARS and tail.endswith("end")


def test_two_connections_claiming_at_once_never_share_a_job(tmp_path: Path) -> None:
    queues = [JobQueue(tmp_path) for _ in range(4)]
    try:
        for n in range(40):
            queues[0].enqueue("deploy", {"n": n}, f"k{n}")
        claimed: list[int] = []
        lock = threading.Lock()

        def drain(q: JobQueue, owner: str) -> None:
            while (job := q.claim(owner)) is not None:
                with lock:
                    claimed.append(job.id)
                q.succeed(job.id, owner)

        threads = [threading.Thread(target=drain, args=(q, f"w{i}")) for i, q in enumerate(queues)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 40
    finally:
        for q in queues:
            q.close()


# -- the worker -------------------------------------------------------------------------


@pytest.fixture
def real_queue(tmp_path: Path) -> Iterator[JobQueue]:
    q = JobQueue(tmp_path, backoff=Backoff(base_s=0.01, cap_s=0.01))
    yield q
    q.close()


async def test_worker_runs_a_job_and_records_its_result_and_log(real_queue: JobQueue) -> None:
    async def deploy(job: Job, ctx: JobContext) -> Mapping[str, Any]:
        ctx.log(f"deploying {job.payload['ref']}")
        return {"version": "v3"}

    job_id, _ = real_queue.enqueue("deploy", {"ref": "a/b/c:x"}, "k")
    worker = Worker(real_queue, {"deploy": deploy}, owner="w")
    assert (await worker.run_once()).id == job_id  # type: ignore[union-attr]
    job = real_queue.get(job_id)
    assert job is not None and job.state is JobState.SUCCEEDED
    assert job.result == {"version": "v3"} and job.log_tail == "deploying a/b/c:x"
    assert await worker.run_once() is None


async def test_worker_errors_retry_or_fail_by_class(real_queue: JobQueue) -> None:
    async def broken(job: Job, ctx: JobContext) -> None:
        raise RuntimeError("flaky\nsecond line")

    async def refused(job: Job, ctx: JobContext) -> None:
        raise DataError("the data set is malformed")

    flaky, _ = real_queue.enqueue("broken", {}, "a", max_attempts=2)
    bad, _ = real_queue.enqueue("refused", {}, "b", max_attempts=5)
    unknown, _ = real_queue.enqueue("nobody", {}, "c", max_attempts=5)
    worker = Worker(real_queue, {"broken": broken, "refused": refused}, owner="w")
    for _ in range(3):
        await worker.run_once()
    assert real_queue.get(flaky).state is JobState.QUEUED  # type: ignore[union-attr]
    assert real_queue.get(flaky).error == "flaky"  # type: ignore[union-attr]
    assert real_queue.get(bad).state is JobState.FAILED  # type: ignore[union-attr]
    assert real_queue.get(unknown).state is JobState.FAILED  # type: ignore[union-attr]
    assert "no handler" in str(real_queue.get(unknown).error)  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    await worker.run_once()
    assert real_queue.get(flaky).state is JobState.FAILED  # type: ignore[union-attr]


async def test_worker_renews_the_lease_of_a_job_longer_than_it(real_queue: JobQueue) -> None:
    async def slow(job: Job, ctx: JobContext) -> None:
        await asyncio.sleep(1.0)

    job_id, _ = real_queue.enqueue("slow", {}, "k")
    other = Worker(real_queue, {}, owner="other", lease_s=0.3)
    worker = Worker(real_queue, {"slow": slow}, owner="w", lease_s=0.3)
    task = asyncio.create_task(worker.run_once())
    await asyncio.sleep(0.6)
    assert await other.run_once() is None  # never expired, never given to another
    await task
    job = real_queue.get(job_id)
    assert job is not None and job.state is JobState.SUCCEEDED and job.attempts == 1


async def test_a_worker_that_loses_its_lease_stops_its_handler(real_queue: JobQueue) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()

    async def slow(job: Job, ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            stopped.set()
            raise

    job_id, _ = real_queue.enqueue("slow", {}, "k")
    worker = Worker(real_queue, {"slow": slow}, owner="w", lease_s=0.3)
    task = asyncio.create_task(worker.run_once())
    await started.wait()
    with sqlite3.connect(real_queue.path) as db:  # someone else took it over
        db.execute("UPDATE automation_jobs SET lease_owner = 'thief' WHERE id = ?", (job_id,))
    await asyncio.wait_for(task, 5)
    assert stopped.is_set()
    job = real_queue.get(job_id)
    assert job is not None and job.state is JobState.RUNNING and job.lease_owner == "thief"


async def test_run_loop_wakes_on_enqueue_and_a_stopped_agent_gives_the_job_back(
    real_queue: JobQueue,
) -> None:
    ran: list[int] = []
    hang = asyncio.Event()

    async def quick(job: Job, ctx: JobContext) -> None:
        ran.append(job.id)

    async def stuck(job: Job, ctx: JobContext) -> None:
        hang.set()
        await asyncio.sleep(60)

    worker = Worker(real_queue, {"quick": quick, "stuck": stuck}, owner="w", poll_s=30)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(worker.run(stop))
    await asyncio.sleep(0.05)
    job_id, _ = real_queue.enqueue("quick", {}, "a")
    worker.wake()
    for _ in range(100):
        if ran:
            break
        await asyncio.sleep(0.02)
    assert ran == [job_id]
    stuck_id, _ = real_queue.enqueue("stuck", {}, "b")
    worker.wake()
    await asyncio.wait_for(hang.wait(), 5)
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    job = real_queue.get(stuck_id)
    assert job is not None and job.state is JobState.QUEUED and "agent stopped" in str(job.error)
    stop.set()


async def test_a_result_that_is_not_json_fails_the_job(real_queue: JobQueue) -> None:
    async def odd(job: Job, ctx: JobContext) -> Mapping[str, Any]:
        return {"when": object()}

    job_id, _ = real_queue.enqueue("odd", {}, "k")
    await Worker(real_queue, {"odd": odd}, owner="w").run_once()
    job = real_queue.get(job_id)
    assert job is not None and job.state is JobState.FAILED and "not plain JSON" in str(job.error)
