"""The automation jobs over HTTP, behind the management token like the other ``/api`` routes.

GET /api/jobs?limit=50   the newest jobs (newest first) and the count in each state
GET /api/jobs/{id}       one job: state, attempts, error, result and its log tail
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import Endpoint, not_found
from edgewire.agent.http_common import guarded as guard
from edgewire.automation.jobs import Job, JobQueue
from edgewire.errors import BusyError, ConfigError

MAX_LIST = 500


def job_summary(job: Job) -> dict[str, Any]:
    """What ``GET /api/jobs`` lists of a job."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": str(job.state),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "ref": job.payload.get("ref"),
        "model": job.payload.get("model"),
        "version_id": job.payload.get("version_id"),
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "finished_at": job.finished_at,
    }


def job_detail(job: Job) -> dict[str, Any]:
    """What ``GET /api/jobs/{id}`` shows: the summary, payload, result and log tail."""
    return {
        **job_summary(job),
        "key": job.key,
        "payload": job.payload,
        "result": job.result,
        "next_run_at": job.next_run_at,
        "lease_expires_at": job.lease_expires_at,
        "log_tail": job.log_tail,
    }


def job_routes(
    ctx: PortContext, queue_of: Callable[[], JobQueue | None]
) -> list[tuple[str, Endpoint, list[str]]]:
    """``queue_of()`` gives the open :class:`JobQueue` (None while the agent starts or stops)."""

    def queue() -> JobQueue:
        found = queue_of()
        if found is None:
            raise BusyError("the job queue is not open (the agent is starting or stopping)")
        return found

    def guarded(handler: Endpoint) -> Endpoint:
        return guard(ctx.config, handler)

    async def listing(request: Request) -> Response:
        raw = request.query_params.get("limit", "50")
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIST:
            raise ConfigError(f"limit must be a number from 1 to {MAX_LIST}, got {raw!r}")
        jobs = await asyncio.to_thread(queue().list, int(raw))
        counts = await asyncio.to_thread(queue().counts)
        return JSONResponse({
            "jobs": [job_summary(job) for job in jobs],
            "counts": {str(state): n for state, n in counts.items()},
        })  # fmt: skip

    async def detail(request: Request) -> Response:
        raw = str(request.path_params["id"])
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise ConfigError(f"a job id is a number, got {raw[:40]!r}")
        job = await asyncio.to_thread(queue().get, int(raw))
        if job is None:
            # No error class means "no such job"; the answer says it plainly.
            return not_found(f"no job {int(raw)} (finished jobs are pruned in time)",
                             "job_not_found")  # fmt: skip
        return JSONResponse(job_detail(job))

    return [
        ("/api/jobs", guarded(listing), ["GET"]),
        ("/api/jobs/{id}", guarded(detail), ["GET"]),
    ]
