"""The durable job queue: one SQLite table in the agent's data dir, with leases and retries.

Power can fail and the agent can be SIGKILLed at any point, so every state change is
one transaction on a WAL database with ``synchronous=FULL``: what :meth:`JobQueue.enqueue`
returned is on disk. A job moves ``queued -> running -> succeeded | failed``; a failed
attempt goes back to ``queued`` with exponential backoff and jitter until its attempts
are spent. A running job holds a lease (owner, expiry) that its worker renews; a lease
that expires (the worker died) puts the job back in the queue, or fails it when its
attempts are spent, but only after it expired, so that two workers never run one job
at once. The worker (:mod:`edgewire.automation.worker`) that cannot renew in time
stops its handler itself.

The idempotency key is UNIQUE: enqueueing the same key twice gives the same job, which
runs once. Payloads are JSON objects (never pickle), results too; the log tail is bounded.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import json
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgewire.errors import BusyError, ConfigError, ProtocolError, one_line
from edgewire.jsonsafe import loads_strict

log = logging.getLogger("edgewire.automation")

#: The file of the queue inside the folder it is given.
DB_NAME = "jobs.sqlite3"
DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_ATTEMPTS = 5
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_LOG_CHARS = 8 * 1024
MAX_ERROR_CHARS = 500

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS automation_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL,
    idempotency_key  TEXT    NOT NULL UNIQUE,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    next_run_at      REAL    NOT NULL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    error            TEXT,
    result           TEXT,
    log_tail         TEXT    NOT NULL DEFAULT '',
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS automation_jobs_ready ON automation_jobs (state, next_run_at);
"""


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class Job:
    id: int
    kind: str
    key: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    max_attempts: int
    next_run_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    error: str | None
    result: dict[str, Any] | None
    log_tail: str
    created_at: float
    updated_at: float
    finished_at: float | None


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` failed: ``base * 2**(n-1)`` up to ``cap``,
    scaled by a random factor in ``[1 - jitter, 1]`` so that retries do not march in step."""

    base_s: float = 5.0
    cap_s: float = 600.0
    jitter: float = 0.5

    def delay(self, attempts: int, rng: random.Random) -> float:
        raw = min(self.cap_s, self.base_s * 2.0 ** max(attempts - 1, 0))
        return raw * (1.0 - self.jitter * rng.random())


def _dumps(value: Mapping[str, Any], *, what: str) -> str:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"a job's {what} must be a JSON object")
    try:
        text = json.dumps(dict(value), allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"a job's {what} is not plain JSON: {one_line(exc)}") from None
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"a job's {what} is over {MAX_PAYLOAD_BYTES} bytes")
    return text


def _object(text: str | None, *, what: str) -> dict[str, Any] | None:
    if text is None:
        return None
    value = loads_strict(text, what=what)
    if not isinstance(value, dict):
        raise ProtocolError(f"stored job {what} is not a JSON object")
    return value


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        kind=row["kind"],
        key=row["idempotency_key"],
        payload=_object(row["payload"], what="payload") or {},
        state=JobState(row["state"]),
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        next_run_at=row["next_run_at"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
        error=row["error"],
        result=_object(row["result"], what="result"),
        log_tail=row["log_tail"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
    )


class JobQueue:
    """The queue in ``folder/jobs.sqlite3``. Thread-safe; each call is one transaction.

    ``max_queued`` bounds the jobs waiting or running (BusyError past it); ``keep_finished``
    bounds the finished ones kept (oldest pruned), and with them how long a key dedupes.
    ``clock`` is wall-clock seconds, as times outlive the process.
    """

    def __init__(
        self,
        folder: Path,
        *,
        max_queued: int = 1000,
        keep_finished: int = 10_000,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_queued < 1 or keep_finished < 1:
            raise ConfigError("max_queued and keep_finished must be at least 1")
        self.path = Path(folder) / DB_NAME
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        self._db.row_factory = sqlite3.Row
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"the job queue needs WAL journaling; {self.path.name} is in {mode}")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise ConfigError(f"{self.path.name} has schema {version}; this edgewire knows 1")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start (BEGIN IMMEDIATE) so that two processes
        serialize on it rather than fail half-way."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- producers -------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        payload: Mapping[str, Any],
        key: str,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        delay_s: float = 0.0,
    ) -> tuple[int, bool]:
        """``(job id, created)``: a new queued job, or the one that already has ``key``."""
        if not kind or not key or len(key) > 512:
            raise ProtocolError("a job needs a kind and a key of at most 512 characters")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {max_attempts!r}")
        text = _dumps(payload, what="payload")
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM automation_jobs WHERE idempotency_key = ?", (key,)
            ).fetchone()
            if row is not None:
                return int(row["id"]), False
            waiting = db.execute(
                "SELECT count(*) FROM automation_jobs WHERE state IN ('queued', 'running')"
            ).fetchone()[0]
            if waiting >= self.max_queued:
                raise BusyError(f"the job queue is full ({waiting} jobs waiting); retry later")
            cursor = db.execute(
                "INSERT INTO automation_jobs (kind, idempotency_key, payload, state, "
                "max_attempts, next_run_at, created_at, updated_at) "
                "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
                (kind, key, text, max_attempts, now + delay_s, now, now),
            )
            self._prune(db)
            job_id = cursor.lastrowid
        assert job_id is not None
        return job_id, True

    def _prune(self, db: sqlite3.Connection) -> None:
        db.execute(
            "DELETE FROM automation_jobs WHERE state IN ('succeeded', 'failed') AND id NOT IN "
            "(SELECT id FROM automation_jobs WHERE state IN ('succeeded', 'failed') "
            "ORDER BY finished_at DESC, id DESC LIMIT ?)",
            (self.keep_finished,),
        )

    # -- workers ---------------------------------------------------------------------

    def claim(self, owner: str, lease_s: float = DEFAULT_LEASE_S) -> Job | None:
        """The next ready job, now running under ``owner``'s lease; None when none is ready.

        Expired leases are dealt with first (as :meth:`recover` does), in the same transaction.
        """
        if not lease_s > 0:
            raise ConfigError(f"lease_s must be positive, not {lease_s!r}")
        now = self._clock()
        with self._tx() as db:
            self._expire(db, now)
            row = db.execute(
                "SELECT id FROM automation_jobs WHERE state = 'queued' AND next_run_at <= ? "
                "ORDER BY next_run_at, id LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE automation_jobs SET state = 'running', attempts = attempts + 1, "
                "lease_owner = ?, lease_expires_at = ?, updated_at = ? WHERE id = ?",
                (owner, now + lease_s, now, row["id"]),
            )
            claimed = db.execute(
                "SELECT * FROM automation_jobs WHERE id = ?", (row["id"],)
            ).fetchone()
        return _job(claimed)

    def renew(
        self,
        job_id: int,
        owner: str,
        lease_s: float = DEFAULT_LEASE_S,
        *,
        log_tail: str | None = None,
    ) -> bool:
        """Extend ``owner``'s lease; False when it no longer holds the job (stop working on it)."""
        now = self._clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE automation_jobs SET lease_expires_at = ?, updated_at = ?, "
                "log_tail = coalesce(?, log_tail) "
                "WHERE id = ? AND state = 'running' AND lease_owner = ? AND lease_expires_at > ?",
                (now + lease_s, now, _tail(log_tail), job_id, owner, now),
            )
            return cursor.rowcount == 1

    def succeed(
        self,
        job_id: int,
        owner: str,
        result: Mapping[str, Any] | None = None,
        *,
        log_tail: str | None = None,
    ) -> bool:
        """Mark the job done; False (and no change) when ``owner`` no longer holds it."""
        text = None if result is None else _dumps(result, what="result")
        now = self._clock()
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE automation_jobs SET state = 'succeeded', result = ?, error = NULL, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ?, finished_at = ?, "
                "log_tail = coalesce(?, log_tail) "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (text, now, now, _tail(log_tail), job_id, owner),
            )
            return cursor.rowcount == 1

    def fail(
        self,
        job_id: int,
        owner: str,
        error: str,
        *,
        retry: bool = True,
        log_tail: str | None = None,
    ) -> bool:
        """Record a failed attempt: queued again after a backoff while attempts are left and
        ``retry``, else failed for good. False when ``owner`` no longer holds the job."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT attempts, max_attempts FROM automation_jobs "
                "WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (job_id, owner),
            ).fetchone()
            if row is None:
                return False
            self._end_attempt(
                db, job_id, row["attempts"], row["max_attempts"], error, retry=retry, now=now,
                log_tail=log_tail,
            )  # fmt: skip
            return True

    def _end_attempt(
        self,
        db: sqlite3.Connection,
        job_id: int,
        attempts: int,
        max_attempts: int,
        error: str,
        *,
        retry: bool,
        now: float,
        log_tail: str | None = None,
    ) -> None:
        error = error[:MAX_ERROR_CHARS]
        if retry and attempts < max_attempts:
            db.execute(
                "UPDATE automation_jobs SET state = 'queued', error = ?, next_run_at = ?, "
                "lease_owner = NULL, lease_expires_at = NULL, updated_at = ?, "
                "log_tail = coalesce(?, log_tail) WHERE id = ?",
                (error, now + self.backoff.delay(attempts, self._rng), now, _tail(log_tail),
                 job_id),
            )  # fmt: skip
        else:
            db.execute(
                "UPDATE automation_jobs SET state = 'failed', error = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, updated_at = ?, finished_at = ?, "
                "log_tail = coalesce(?, log_tail) WHERE id = ?",
                (error, now, now, _tail(log_tail), job_id),
            )

    def _expire(self, db: sqlite3.Connection, now: float) -> int:
        rows = db.execute(
            "SELECT id, attempts, max_attempts, lease_owner FROM automation_jobs "
            "WHERE state = 'running' AND lease_expires_at <= ?",
            (now,),
        ).fetchall()
        for row in rows:
            log.warning("job %d: the lease of %s expired; its worker died or hung",
                        row["id"], row["lease_owner"])  # fmt: skip
            self._end_attempt(
                db, row["id"], row["attempts"], row["max_attempts"],
                f"interrupted: the worker's lease expired during attempt {row['attempts']}",
                retry=True, now=now,
            )  # fmt: skip
        return len(rows)

    def recover(self) -> int:
        """At start-up: jobs whose lease expired go back to the queue (or fail when their
        attempts are spent); how many. Leases still running are left to expire first."""
        with self._tx() as db:
            return self._expire(db, self._clock())

    # -- readers ---------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM automation_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return None if row is None else _job(row)

    def list(self, limit: int = 50) -> builtins.list[Job]:
        """The newest ``limit`` jobs, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM automation_jobs ORDER BY id DESC LIMIT ?", (max(limit, 0),)
            ).fetchall()
        return [_job(row) for row in rows]

    def counts(self) -> dict[JobState, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, count(*) AS n FROM automation_jobs GROUP BY state"
            ).fetchall()
        found = {JobState(row["state"]): int(row["n"]) for row in rows}
        return {state: found.get(state, 0) for state in JobState}


def _tail(text: str | None) -> str | None:
    return None if text is None else text[-MAX_LOG_CHARS:]
