"""The async worker of the job queue: claims a job, runs its kind's handler, renews the
lease while it runs, and records the result.

A handler is ``async def handler(job, ctx) -> dict | None``; ``ctx.log(line)`` adds to the
job's bounded log tail, which reaches the database with each renewal and at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edgewire.automation.jobs import DEFAULT_LEASE_S, Job, JobQueue
from edgewire.errors import EdgewireError, ProtocolError, one_line

log = logging.getLogger("edgewire.automation")


class JobContext:
    """What a handler gets besides its job: a bounded log that reaches the job's row."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._lines: deque[str] = deque(maxlen=200)
        for line in job.log_tail.splitlines()[-50:]:
            self._lines.append(line)

    def log(self, line: str) -> None:
        self._lines.append(line.replace("\n", " ")[:500])

    def tail(self) -> str:
        return "\n".join(self._lines)


Handler = Callable[[Job, JobContext], Awaitable[Mapping[str, Any] | None]]


class Worker:
    """Claims jobs from ``queue`` and runs each with the handler for its kind.

    While a handler runs its lease is renewed every ``lease_s / 3``; if a renewal fails or
    cannot happen before the lease ends, the handler is cancelled and its result dropped.
    A handler error whose class means the request itself is wrong (an edgewire error with
    a 4xx status) fails the job for good; any other error is retried with backoff.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        owner: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = 1.0,
    ) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look for work now (call after an enqueue)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run jobs one at a time until ``stop`` is set; the job in hand is finished first."""
        while not stop.is_set():
            try:
                job = await self.run_once()
            except sqlite3.Error as exc:  # a locked or full disk: try again in a while
                log.warning("job queue: %s", one_line(exc))
                job = None
            if job is not None:
                continue
            self._wake.clear()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
            try:
                await asyncio.wait(
                    waiters, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def run_once(self) -> Job | None:
        """Claim one ready job and run it; the job as claimed, or None when none was ready."""
        job = await asyncio.to_thread(self.queue.claim, self.owner, self.lease_s)
        if job is None:
            return None
        ctx = JobContext(job)
        handler = self.handlers.get(job.kind)
        if handler is None:
            await asyncio.to_thread(
                self.queue.fail, job.id, self.owner, f"no handler for job kind {job.kind!r}",
                retry=False,
            )  # fmt: skip
            return job
        task = asyncio.ensure_future(handler(job, ctx))
        try:
            held = await self._hold_lease(job, ctx, task)
        except asyncio.CancelledError:
            # The agent is stopping: stop the handler and give the job back for a later run.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            self.queue.fail(
                job.id, self.owner, "interrupted: the agent stopped", log_tail=ctx.tail()
            )
            raise
        if not held:
            log.warning("job %d: lost its lease; its handler was stopped", job.id)
            return job
        exc = task.exception() if not task.cancelled() else asyncio.CancelledError()
        if exc is None:
            try:
                await asyncio.to_thread(
                    self.queue.succeed, job.id, self.owner, task.result(), log_tail=ctx.tail()
                )
                return job
            except ProtocolError as refused:  # a result that is not a plain JSON object
                exc = refused
        if exc is not None:
            retry = not (isinstance(exc, EdgewireError) and 400 <= exc.http_status < 500)
            await asyncio.to_thread(
                self.queue.fail, job.id, self.owner, one_line(exc), retry=retry,
                log_tail=ctx.tail(),
            )  # fmt: skip
        return job

    async def _hold_lease(
        self, job: Job, ctx: JobContext, task: asyncio.Future[Mapping[str, Any] | None]
    ) -> bool:
        """Renew the lease until ``task`` ends; False (task cancelled) once the lease is lost."""
        interval = self.lease_s / 3
        held_until = time.monotonic() + self.lease_s
        while True:
            timeout = max(0.0, min(interval, held_until - time.monotonic() - interval / 2))
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if done:
                return True
            try:
                renewed = await asyncio.wait_for(
                    asyncio.to_thread(
                        self.queue.renew, job.id, self.owner, self.lease_s, log_tail=ctx.tail()
                    ),
                    timeout=max(held_until - time.monotonic() - interval / 2, 0.001),
                )
            except (TimeoutError, sqlite3.Error) as exc:
                log.warning("job %d: cannot renew its lease: %s", job.id, one_line(exc))
                renewed = held_until - time.monotonic() > interval / 2
                if renewed:
                    continue
            if not renewed:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                return False
            held_until = time.monotonic() + self.lease_s
