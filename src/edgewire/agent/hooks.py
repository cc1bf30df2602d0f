"""Automation on the agent: ``POST /hooks/{name}``, the job queue with its worker and
poller, and the jobs they run.

A delivery is answered at once: the hook's rate limit, a body capped before it is read,
the signature checked on the raw bytes, a strict parse, the allow-list and the rules;
then a ``resolve`` job is queued and the answer is 202 with its id. The worker resolves
the artifact at the source and queues the action under a key of the version found there
(``deploy`` or ``retrain_then_deploy``), so that one version is acted on once however
many deliveries or polls report it; the poller, for devices behind NAT, queues that
action itself when an alias it polls names a new version.

A deploy downloads into a private folder and goes through
:func:`~edgewire.agent.management.add_and_serve`, as an upload does. A retrain trains in
the agent's training thread and deploys only if the new model is at least as accurate as
the served one on the same held-out data (both run by their serving backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import math
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgewire.agent.context import PortContext
from edgewire.agent.fdlimits import RateLimit
from edgewire.agent.http_common import Endpoint, error_response, holding, read_body
from edgewire.agent.jobs_api import job_routes
from edgewire.agent.management import UPLOADS, add_and_serve
from edgewire.agent.retrain import retrain, score_both
from edgewire.automation.config import AutomationConfig, HookConfig
from edgewire.automation.events import parse_event
from edgewire.automation.jobs import Backoff, Job, JobQueue, JobState
from edgewire.automation.poll import Poller
from edgewire.automation.rules import Action, ActionKind, job_key, match
from edgewire.automation.signatures import verify
from edgewire.automation.sources import Resolved
from edgewire.automation.worker import Handler, JobContext, Worker
from edgewire.errors import (
    BusyError,
    DataError,
    EdgewireError,
    ModelError,
    ModelNotFound,
    one_line,
)
from edgewire.fsutil import sha256_file
from edgewire.serve.model import ModelVersion
from edgewire.serve.store import DEFAULT_ALIAS

log = logging.getLogger(__name__)

#: The queue's folder inside the data dir.
JOBS_DIR = "automation"


class TokenBucket:
    """``rate`` requests a second on average, ``burst`` at once; :meth:`take` says how long
    to wait (0: go ahead)."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, float(burst), clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class _ReportingWorker(Worker):
    """The queue's worker, which also logs and counts how each attempt ended."""

    def __init__(self, automation: Automation, handlers: Mapping[str, Handler]) -> None:
        cfg = automation.config
        assert automation.queue is not None
        super().__init__(automation.queue, handlers, lease_s=cfg.lease_s)
        self._automation = automation

    async def run_once(self) -> Job | None:
        job = await super().run_once()
        if job is not None:
            await self._automation.attempt_ended(job)
        return job


class Automation:
    """The agent's webhooks, job queue, worker and poller (see the module docstring)."""

    def __init__(self, ctx: PortContext, config: AutomationConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.source = config.source.build(config.rules.allow.urls)
        self.queue: JobQueue | None = None
        self.worker: Worker | None = None
        self._buckets = {h.name: TokenBucket(h.rate_per_s, h.burst) for h in config.hooks}
        self._refusals = RateLimit(10.0)
        # The agent's own: the worker takes no new job, and a training halts, as soon as
        # the agent begins to stop (before its HTTP side has drained).
        self._stop = ctx.stopping
        self._tasks: list[asyncio.Task[None]] = []
        self._halts: set[threading.Event] = set()
        data_dir = ctx.config.data_dir
        # What job errors must not show (they reach /api/jobs and the log), longest first.
        hidden = {str(data_dir): "<data_dir>", str(data_dir.resolve()): "<data_dir>"}
        root = config.source.root
        if root is not None:
            hidden |= {str(root): "<source>", str(root.resolve()): "<source>"}
        self._hidden = sorted(hidden.items(), key=lambda item: len(item[0]), reverse=True)

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        backoff = Backoff(base_s=cfg.retry_base_s, cap_s=cfg.retry_cap_s)
        self.queue = await asyncio.to_thread(
            JobQueue,
            self.ctx.config.data_dir / JOBS_DIR,
            max_queued=cfg.max_queued,
            keep_finished=cfg.keep_finished,
            backoff=backoff,
        )
        recovered = await asyncio.to_thread(self.queue.recover)
        if recovered:
            log.warning("automation: %d job(s) interrupted by a crash went back to the queue",
                        recovered)  # fmt: skip
        handlers = {
            "resolve": self._guarded(self._resolve),
            str(ActionKind.DEPLOY): self._guarded(self._deploy),
            str(ActionKind.RETRAIN_THEN_DEPLOY): self._guarded(self._retrain_then_deploy),
        }
        self.worker = _ReportingWorker(self, handlers)
        self._tasks.append(asyncio.create_task(self.worker.run(self._stop), name="edgewire-jobs"))
        self._tasks.append(asyncio.create_task(self._halt_when_stopping(), name="edgewire-halt"))
        if cfg.poll is not None:
            poller = Poller(self.source, cfg.rules, self._polled, settings=cfg.poll)
            self._tasks.append(asyncio.create_task(poller.run(self._stop), name="edgewire-poll"))
        self.ctx.features.add("automation")
        await self._count_states()
        counts = await asyncio.to_thread(self.queue.counts)
        log.info("automation: hooks %s, %d rule(s), polling %s; jobs %s",
                 [f"/hooks/{h.name}" for h in cfg.hooks], len(cfg.rules.rules),
                 "on" if cfg.poll else "off", {str(k): v for k, v in counts.items()})  # fmt: skip

    async def _halt_when_stopping(self) -> None:
        await self._stop.wait()
        for halt in list(self._halts):
            halt.set()

    async def stop(self) -> None:
        """Stop taking jobs; the job in hand gets ``drain_timeout`` (a training is halted at
        its next batch), then it is cancelled and goes back to the queue for the next start."""
        self._stop.set()
        for halt in list(self._halts):
            halt.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.ctx.config.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("automation task %s failed: %s", task.get_name(),
                          one_line(task.exception() or Exception()))  # fmt: skip
        self._tasks.clear()
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    # -- webhooks ------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, Endpoint, list[str]]]:
        """One ``POST /hooks/{name}`` per configured hook (any other name is a plain 404),
        and the jobs API."""
        hooks = [(f"/hooks/{h.name}", self._endpoint(h), ["POST"]) for h in self.config.hooks]
        return [*hooks, *job_routes(self.ctx, lambda: self.queue)]

    def _endpoint(self, hook: HookConfig) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            wait = self._buckets[hook.name].take()
            if wait > 0:
                self._refused(hook, request, "rate_limited", "over the hook's rate limit")
                return JSONResponse(
                    {"error": f"hook {hook.name!r} takes at most {hook.rate_per_s:g} deliveries "
                              f"a second; retry later", "code": "rate_limited"},
                    status_code=429,
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )  # fmt: skip
            try:
                found = await self._receive(hook, request)
            except EdgewireError as exc:
                self._refused(hook, request, exc.code, one_line(exc))
                return error_response(exc)
            if found is None:
                self._count_delivery(hook, "ignored")
                return JSONResponse({"job": None, "status": "ignored"})
            job_id, created = found
            self._count_delivery(hook, "accepted" if created else "duplicate")
            if created:
                return JSONResponse({"job": job_id, "status": "queued"}, status_code=202)
            return JSONResponse({"job": job_id, "status": "duplicate"})

        return endpoint

    async def _receive(self, hook: HookConfig, request: Request) -> tuple[int, bool] | None:
        """Read, verify, parse and match one delivery; its resolve job, or None if no rule
        matched. The body is capped before it is read and verified before it is parsed."""
        cfg = self.ctx.config
        with holding(self.ctx.frame_budget) as hold:
            body = await read_body(
                request,
                cap=hook.auth.max_body_bytes,
                timeout=cfg.body_timeout,
                total=cfg.frame_timeout,
                hold=hold,
            )
        delivery = verify(hook.auth, dict(request.headers.items()), body)
        event = parse_event(delivery.body, allow=self.config.rules.allow)
        action = match(event, self.config.rules, hook=hook.name)
        if action is None:
            log.info("hook %s: %s on %s matches no rule", hook.name,
                     sorted(event.triggers), event.artifact_path)  # fmt: skip
            return None
        # W&B sends no delivery id: each delivery resolves, and the action it finds is
        # keyed by the version, so a redelivery still acts once.
        delivery_id = delivery.idempotency_key or f"wandb-{secrets.token_hex(12)}"
        payload = {**self._action_payload(action), "hook": hook.name}
        return await self._enqueue("resolve", payload, f"hook:{hook.name}:{delivery_id}")

    def _refused(self, hook: HookConfig, request: Request, code: str, why: str) -> None:
        self._count_delivery(hook, code)
        if self._refusals.due(f"{hook.name}:{code}", time.monotonic()):
            peer = request.client.host if request.client else "?"
            log.warning("hook %s: refused a delivery from %s (%s): %s (further ones like it "
                        "are counted in edgewire_hook_deliveries_total, logged every 10 s)",
                        hook.name, peer, code, why)  # fmt: skip

    def _count_delivery(self, hook: HookConfig, outcome: str) -> None:
        self.ctx.metrics.hook_deliveries_total.labels(hook.name, outcome).inc()

    def _action_payload(self, action: Action) -> dict[str, Any]:
        options = self.config.options_for(action.rule)
        payload = {**action.payload(), "alias": options.alias or DEFAULT_ALIAS}
        if action.kind is ActionKind.RETRAIN_THEN_DEPLOY:
            payload["train"] = options.train_payload()
        elif options.holdout:
            payload["gate"] = {"holdout": options.holdout}
        return payload

    async def _enqueue(self, kind: str, payload: dict[str, Any], key: str) -> tuple[int, bool]:
        queue, worker = self.queue, self.worker
        if queue is None or worker is None:
            raise BusyError("automation is not running; retry later")
        try:
            job_id, created = await asyncio.to_thread(
                queue.enqueue, kind, payload, key, max_attempts=self.config.max_attempts
            )
        except sqlite3.Error as exc:
            raise BusyError(f"the job queue cannot take the job now ({one_line(exc)}); "
                            "retry later") from None  # fmt: skip
        if created:
            log.info("job %d queued: %s %s", job_id, kind, payload.get("ref"))
            worker.wake()
            await self._count_states()
        return job_id, created

    async def _polled(self, action: Action, resolved: Resolved) -> None:
        """The poller saw a new version: queue its action, keyed as a hook's would be."""
        payload = {**self._action_payload(action), "hook": None,
                   "version_id": resolved.version_id}  # fmt: skip
        job_id, created = await self._enqueue(
            str(action.kind), payload, action.job_key(resolved.version_id)
        )
        if created:
            log.info("poll: %s names %s; job %d acts on it", action.ref, resolved.version_id,
                     job_id)  # fmt: skip

    # -- jobs: bookkeeping ---------------------------------------------------------------

    async def attempt_ended(self, job: Job) -> None:
        assert self.queue is not None
        after = await asyncio.to_thread(self.queue.get, job.id)
        if after is None:
            return
        if after.state is JobState.SUCCEEDED:
            outcome = "succeeded"
            log.info("job %d (%s) succeeded: %s", job.id, job.kind, after.result)
        elif after.state is JobState.FAILED:
            outcome = "failed"
            log.warning("job %d (%s) failed after %d attempt(s): %s", job.id, job.kind,
                        after.attempts, after.error)  # fmt: skip
        elif after.state is JobState.QUEUED:
            outcome = "retrying"
            log.warning("job %d (%s) attempt %d failed, retrying in %.0f s: %s", job.id,
                        job.kind, after.attempts, max(after.next_run_at - time.time(), 0),
                        after.error)  # fmt: skip
        else:
            outcome = "lost_lease"
        self.ctx.metrics.jobs_total.labels(job.kind, outcome).inc()
        await self._count_states()

    async def _count_states(self) -> None:
        if self.queue is None:
            return
        counts = await asyncio.to_thread(self.queue.counts)
        for state, n in counts.items():
            self.ctx.metrics.jobs.labels(str(state)).set(n)

    def _guarded(self, run: Callable[[Job, JobContext], Any]) -> Callable[[Job, JobContext], Any]:
        """``run`` with a log line at its start and errors that show no local path."""

        async def handler(job: Job, ctx: JobContext) -> Any:
            log.info("job %d (%s %s): attempt %d of %d", job.id, job.kind,
                     job.payload.get("ref"), job.attempts, job.max_attempts)  # fmt: skip
            ctx.log(f"attempt {job.attempts} of {job.max_attempts}")
            try:
                return await run(job, ctx)
            except EdgewireError as exc:
                exc.args = (self._scrub(one_line(exc)),)
                ctx.log(f"error ({exc.code}): {exc.args[0]}")
                raise
            except Exception as exc:  # a bug or an OS error: retried, shown without paths
                message = self._scrub(f"{type(exc).__name__}: {one_line(exc)}")
                ctx.log(f"error: {message}")
                raise EdgewireError(message) from None

        return handler

    def _scrub(self, text: str) -> str:
        for private, shown in self._hidden:
            text = text.replace(private, shown)
        return text

    # -- jobs: the handlers --------------------------------------------------------------

    async def _resolve(self, job: Job, ctx: JobContext) -> dict[str, Any]:
        """What the delivery's ref names now at the source, and the action on that version."""
        payload = job.payload
        resolved = await self.source.resolve(payload["ref"])
        ctx.log(f"{payload['ref']} is {resolved.version_id}")
        kind = payload["action"]
        action_id, created = await self._enqueue(
            kind,
            {**payload, "version_id": resolved.version_id},
            job_key(kind, payload["collection"], resolved.version_id),
        )
        ctx.log(f"{kind} is job {action_id}" + ("" if created else
                " (made before: each version is acted on once)"))  # fmt: skip
        return {"job": action_id, "created": created, "version_id": resolved.version_id}

    async def _still_current(self, job: Job, ctx: JobContext) -> Resolved | None:
        """The job's version as the source has it now; None when the alias has moved on
        (then the new version's own job is queued, and this one has nothing to do)."""
        payload = job.payload
        resolved = await self.source.resolve(payload["ref"])
        if resolved.version_id == payload["version_id"]:
            return resolved
        kind = payload["action"]
        newer, _ = await self._enqueue(
            kind,
            {**payload, "version_id": resolved.version_id},
            job_key(kind, payload["collection"], resolved.version_id),
        )
        ctx.log(f"{payload['ref']} moved on to {resolved.version_id}; job {newer} acts on it")
        return None

    @contextlib.asynccontextmanager
    async def _downloaded(self, job: Job, resolved: Resolved) -> AsyncIterator[Path]:
        """The artifact in a private folder of the data dir, removed afterwards (and at
        the next start, if the agent dies meanwhile: it lies under ``uploads``)."""
        disk = self.ctx.disk
        need = 2 * max(resolved.total_size, 1)  # the download, then the stored copy
        await asyncio.to_thread(disk.check, need, f"the artifact {resolved.ref}")
        private = self.ctx.config.data_dir / UPLOADS / f"job{job.id}-{secrets.token_hex(6)}"
        await asyncio.to_thread(private.mkdir, parents=True)
        try:
            await self.source.download(resolved, private / "artifact")
            disk.changed()
            yield private / "artifact"
        finally:
            await asyncio.to_thread(shutil.rmtree, private, True)
            disk.changed()

    async def _deploy(self, job: Job, ctx: JobContext) -> dict[str, Any]:
        payload = job.payload
        resolved = await self._still_current(job, ctx)
        if resolved is None:
            return {"deployed": False, "superseded": True}
        name, alias = payload["model"], payload["alias"]
        async with self._downloaded(job, resolved) as folder:
            model = _model_file(folder, resolved)
            ctx.log(f"downloaded {len(resolved.files)} file(s); the model is {model.name}")
            same = await asyncio.to_thread(_aliased_with_same_file, self.ctx, name, alias, model)
            if same is not None:
                # A re-run after a crash that came after the deploy: it is done already.
                ctx.log(f"{name} {alias!r} is version {same} with this file already")
                return {"deployed": False, "model": name, "version": same}
            gate = payload.get("gate")
            if gate is not None:
                current = await asyncio.to_thread(_aliased_version, self.ctx, name, alias)
                new, old = await asyncio.to_thread(score_both, model, current, gate["holdout"])
                shown = "nothing served yet" if old is None else f"served {old:.4f}"
                ctx.log(f"held-out accuracy: new {new:.4f}, {shown}")
                if old is not None and new < old:
                    ctx.log(f"not deployed: the new model is worse than {name} version "
                            f"{current.version if current else '?'}")  # fmt: skip
                    return {"deployed": False, "model": name, "new_accuracy": new,
                            "current_accuracy": old, "version_id": resolved.version_id}  # fmt: skip
            version = await _serve(self.ctx, name, model, alias=alias)
        ctx.log(f"deployed {name} version {version.version} as {alias!r}")
        return {"deployed": True, "model": name, "version": version.version,
                "version_id": resolved.version_id}  # fmt: skip

    async def _retrain_then_deploy(self, job: Job, ctx: JobContext) -> dict[str, Any]:
        payload = job.payload
        resolved = await self._still_current(job, ctx)
        if resolved is None:
            return {"deployed": False, "superseded": True}
        name, alias, train = payload["model"], payload["alias"], payload["train"]
        loop = asyncio.get_running_loop()

        def say(line: str) -> None:  # from the training thread
            loop.call_soon_threadsafe(ctx.log, line)

        async with self._downloaded(job, resolved) as folder:
            current = await asyncio.to_thread(_aliased_version, self.ctx, name, alias)
            out = folder.parent / "candidate.onnx"
            halt = threading.Event()
            work = functools.partial(
                retrain, _data_path(folder, resolved), train, current, out, halt=halt, say=say,
                max_model_bytes=self.ctx.config.max_train_model_bytes,
                run_id=_run_id(name, resolved.version_id, train),
            )  # fmt: skip
            self._halts.add(halt)
            if self._stop.is_set():
                halt.set()
            future = loop.run_in_executor(self.ctx.train_executor, work)
            try:
                scores = await asyncio.shield(future)
            except asyncio.CancelledError:
                halt.set()  # the lease is lost or the agent stops: end the training first
                await asyncio.wait([future])
                raise
            finally:
                self._halts.discard(halt)
            new, old = scores["new_accuracy"], scores["current_accuracy"]
            shown = "nothing served yet" if old is None else f"served {old:.4f}"
            ctx.log(f"held-out accuracy ({scores['holdout']} samples): new {new:.4f}, {shown}")
            result: dict[str, Any] = {**scores, "model": name, "version_id": resolved.version_id}
            if old is not None and new < old:
                ctx.log(f"not deployed: the new model is worse than {name} version "
                        f"{current.version if current else '?'}")  # fmt: skip
                log.warning("job %d: retrained %s is worse on the held-out split (%.4f < "
                            "%.4f); kept the served version", job.id, name, new, old)  # fmt: skip
                return {**result, "deployed": False}
            version = await _serve(self.ctx, name, out, alias=alias)
        ctx.log(f"deployed {name} version {version.version} as {alias!r}")
        return {**result, "deployed": True, "version": version.version}


# -- helpers of the handlers ---------------------------------------------------------------


def _run_id(model: str, version_id: str, train: Mapping[str, Any]) -> str:
    """The run a retrain on a training agent uses: the same for the same model, data
    version and settings, so a job tried again resumes it rather than starting over."""
    key = json.dumps([model, version_id, train], sort_keys=True, default=str)
    return "auto-" + hashlib.sha256(key.encode()).hexdigest()[:20]


async def _serve(ctx: PortContext, name: str, model: Path, *, alias: str) -> ModelVersion:
    """``add_and_serve``; a model the store or the runtime refuses fails the job for good
    (a DataError: the artifact is wrong, trying again would not help)."""
    try:
        return await add_and_serve(ctx, name, model, alias=alias, file_name=model.name)
    except ModelNotFound:
        raise
    except ModelError as exc:
        raise DataError(f"the artifact's model was refused: {one_line(exc)}") from None


def _model_file(folder: Path, resolved: Resolved) -> Path:
    """The one model file of a model artifact (``model.onnx`` when it has several)."""
    from edgewire.serve.backends import suffixes

    known = tuple(suffixes())
    models = [f.name for f in resolved.files if f.name.lower().endswith(known)]
    if len(models) == 1:
        return folder / models[0]
    for preferred in ("model.onnx", "model.tflite"):
        if preferred in models:
            return folder / preferred
    raise DataError(
        f"artifact {resolved.ref!r} holds {len(models)} model files ({', '.join(known)}); "
        "it needs one, or one named model.onnx"
    )


def _data_path(folder: Path, resolved: Resolved) -> Path:
    """What ``load_dataset`` reads: the artifact's one ``.npz`` file, else its folder
    (MNIST IDX files or a folder of class folders of images)."""
    if len(resolved.files) == 1 and resolved.files[0].name.lower().endswith(".npz"):
        return folder / resolved.files[0].name
    return folder


def _aliased_version(ctx: PortContext, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` of ``name`` names (None when there is none yet)."""
    store = ctx.serving.store
    try:
        number = store.aliases(name).get(alias)
        return None if number is None else store.get(name, number)
    except ModelNotFound:
        return None


def _aliased_with_same_file(ctx: PortContext, name: str, alias: str, model: Path) -> int | None:
    current = _aliased_version(ctx, name, alias)
    if current is None or current.sha256 != sha256_file(model):
        return None
    return current.version
