"""A worker process for test_jobs_kill.py: ``job_worker.py DATA_DIR OWNER MODE LEASE_S RECORD``.

MODE ``hang``: each job's handler records its start and then sleeps (to be SIGKILLed).
MODE ``finish``: each handler records its start, holds an exclusive marker file for the
job for a moment (a second runner of the same job at the same time records an overlap),
and returns; the process exits when no job is queued or running.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from edgewire.automation.jobs import Backoff, Job, JobQueue, JobState
from edgewire.automation.worker import JobContext, Worker


def record(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


async def main(data_dir: Path, owner: str, mode: str, lease_s: float, log: Path) -> None:
    queue = JobQueue(data_dir, backoff=Backoff(base_s=0.2, cap_s=0.2))

    async def work(job: Job, ctx: JobContext) -> None:
        record(log, f"start {owner} {job.id} {job.attempts} {time.time():.6f}")
        if mode == "hang":
            await asyncio.sleep(600)
        marker = log.parent / f"running-{job.id}"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            record(log, f"overlap {owner} {job.id}")
            return
        os.close(fd)
        await asyncio.sleep(0.03)
        marker.unlink()
        record(log, f"end {owner} {job.id}")

    queue.recover()
    worker = Worker(queue, {"work": work}, owner=owner, lease_s=lease_s)
    while True:
        if await worker.run_once() is None:
            counts = queue.counts()
            if counts[JobState.QUEUED] + counts[JobState.RUNNING] == 0:
                break
            await asyncio.sleep(0.02)
    queue.close()


if __name__ == "__main__":
    data, who, how, lease, out = sys.argv[1:6]
    asyncio.run(main(Path(data), who, how, float(lease), Path(out)))
