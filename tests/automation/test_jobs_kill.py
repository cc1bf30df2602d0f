"""SIGKILL a worker process mid-job: after a restart the job runs again once its lease has
expired, or fails cleanly when its attempts are spent; two workers never run one job at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgewire.automation.jobs import JobQueue, JobState

SCRIPT = Path(__file__).with_name("job_worker.py")
ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 1.0


@contextmanager
def worker(
    data_dir: Path, owner: str, mode: str, record: Path
) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(data_dir), owner, mode, str(LEASE_S), str(record)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def lines(record: Path) -> list[list[str]]:
    return [line.split() for line in record.read_text().splitlines()] if record.exists() else []


def wait_for(record: Path, word: str, *, within: float = 20.0) -> list[str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for line in lines(record):
            if line[0] == word:
                return line
        time.sleep(0.02)
    raise AssertionError(f"no {word!r} in {lines(record)}")


def kill_mid_job(tmp_path: Path, *, max_attempts: int) -> tuple[JobQueue, int, float, Path]:
    """Enqueue one job, start worker A on it and SIGKILL A mid-job; the lease it held."""
    record = tmp_path / "record.txt"
    queue = JobQueue(tmp_path / "data")
    job_id, _ = queue.enqueue("work", {}, "k", max_attempts=max_attempts)
    with worker(tmp_path / "data", "A", "hang", record) as a:
        wait_for(record, "start")
        a.send_signal(signal.SIGKILL)
        assert a.wait(10) == -signal.SIGKILL
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.RUNNING and job.lease_owner == "A"
    assert job.lease_expires_at is not None
    return queue, job_id, job.lease_expires_at, record


def test_a_job_killed_mid_run_runs_again_after_its_lease_expires(tmp_path: Path) -> None:
    queue, job_id, lease_end, record = kill_mid_job(tmp_path, max_attempts=3)
    try:
        with worker(tmp_path / "data", "B", "finish", record) as b:  # the restarted agent
            _, stderr = b.communicate(timeout=30)
            assert b.returncode == 0, stderr.decode()
        starts = [line for line in lines(record) if line[0] == "start"]
        assert [(s[1], s[3]) for s in starts] == [("A", "1"), ("B", "2")]
        assert float(starts[1][4]) >= lease_end  # not before A's lease ran out
        job = queue.get(job_id)
        assert job is not None and job.state is JobState.SUCCEEDED and job.attempts == 2
    finally:
        queue.close()


def test_a_job_killed_on_its_last_attempt_fails_cleanly(tmp_path: Path) -> None:
    queue, job_id, _, record = kill_mid_job(tmp_path, max_attempts=1)
    try:
        with worker(tmp_path / "data", "B", "finish", record) as b:
            _, stderr = b.communicate(timeout=30)
            assert b.returncode == 0, stderr.decode()
        assert [line[1] for line in lines(record) if line[0] == "start"] == ["A"]
        job = queue.get(job_id)
        assert job is not None and job.state is JobState.FAILED
        assert "lease expired" in str(job.error) and job.lease_owner is None
    finally:
        queue.close()


def test_two_worker_processes_never_run_one_job_at_once(tmp_path: Path) -> None:
    jobs = 30
    record = tmp_path / "record.txt"
    queue = JobQueue(tmp_path / "data")
    try:
        for n in range(jobs):
            queue.enqueue("work", {"n": n}, f"job-{n}")
        with (
            worker(tmp_path / "data", "A", "finish", record) as a,
            worker(tmp_path / "data", "B", "finish", record) as b,
        ):
            for proc in (a, b):
                _, stderr = proc.communicate(timeout=60)
                assert proc.returncode == 0, stderr.decode()
        seen = lines(record)
        assert not [line for line in seen if line[0] == "overlap"]
        starts = sorted(int(line[2]) for line in seen if line[0] == "start")
        assert starts == sorted(j.id for j in queue.list(jobs))  # each job once
        assert queue.counts()[JobState.SUCCEEDED] == jobs
    finally:
        queue.close()
