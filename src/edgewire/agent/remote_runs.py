"""Training runs that a remote client started over HTTP (``POST /api/train``).

A run trains an uploaded data set with ``train_folder`` on the agent's one
training thread. Its events go into a bounded ring, each encoded once as a
server-sent-events frame, so that any number of followers (and a follower that
reconnects with ``after=N``) read the same bytes without loss within the ring.
The training thread wakes the event loop at most every ``WAKE_S`` for per-batch
feedback (followers also look every ``POLL_S``): the progress path costs the
training next to nothing.

Runs live in memory: an agent that restarts forgets them and removes their
folders at start-up (the client is told the run is gone).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import shutil
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgewire.agent.blobs import REMOTE, BlobStore
from edgewire.agent.context import PortContext
from edgewire.agent.disk import CHECKPOINT_FACTOR
from edgewire.data.manifest import Entry
from edgewire.errors import BusyError, ConfigError, EdgewireError, TrainError
from edgewire.fsutil import sha256_file
from edgewire.jsonsafe import finite
from edgewire.train.folder import RESULT_FILES, FolderOptions
from edgewire.train.memory import check_data_size
from edgewire.wire import sse

__all__ = ["FINAL", "POLL_S", "RESULT_FILES", "RemoteRun", "RemoteRuns"]
#: Seconds between wake-ups of the loop for per-batch feedback (other events: at once).
WAKE_S = 0.05
POLL_S = 0.25
FINAL = ("summary", "error")
SPLITS = ("train", "val", "test")
#: What a remote run's checkpoints and errors call its data set: the client's workspace
#: folder (``project.workspace.DATASET``, not imported: it loads PIL), which ``export``
#: resolves against the workspace the run folder lands in.
DATASET = "dataset"
#: What a failed run says when the error is not one of edgewire's (the log has it).
INTERNAL = "training failed on the agent with an internal error; the agent's log has the details"
#: The remote runs of each agent's context, for the agent's stop to close.
_OPEN: weakref.WeakValueDictionary[int, RemoteRuns] = weakref.WeakValueDictionary()

log = logging.getLogger(__name__)


class EventRing:
    """The last ``cap`` events of a run, as SSE frames; thread-safe, numbered from 1."""

    def __init__(self, cap: int) -> None:
        self._frames: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=cap)
        self._lock = threading.Lock()
        self.last_seq = 0
        self.last: tuple[str, dict[str, Any]] | None = None

    def append(self, kind: str, data: dict[str, Any]) -> int:
        with self._lock:
            self.last_seq += 1
            self._frames.append((self.last_seq, sse.encode(kind, data, seq=self.last_seq)))
            self.last = (kind, data)
            return self.last_seq

    def after(self, seq: int) -> tuple[bytes, int, int]:
        """The frames after event ``seq`` joined, the last seq in them, and how many
        events after ``seq`` the ring no longer holds."""
        with self._lock:
            if not self._frames or self._frames[-1][0] <= seq:
                return b"", seq, 0
            first = self._frames[0][0]
            missed = max(first - seq - 1, 0)
            start = max(seq + 1 - first, 0)
            frames = [f for _, f in itertools.islice(self._frames, start, None)]
            return b"".join(frames), self.last_seq, missed


@dataclass(eq=False)
class RemoteRun:
    run_id: str
    dataset: str
    options: FolderOptions
    ring: EventRing
    out: Path
    train_files: int = 0
    state: str = "queued"  # running, succeeded, failed, stopped
    created: float = field(default_factory=time.time)
    finished: float | None = None
    summary: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.finished is not None

    def status(self) -> dict[str, Any]:
        last = self.ring.last
        return {
            "run_id": self.run_id, "state": self.state, "dataset": self.dataset,
            "options": self.options.to_dict(), "created": self.created,
            "finished": self.finished, "events": self.ring.last_seq,
            "last_event": None if last is None else {"event": last[0], **finite(last[1])},
            "summary": self.summary, "error": self.error, "files": self.files,
        }  # fmt: skip


class RemoteRuns:
    """The remote runs of one agent: at most one trains at a time."""

    def __init__(self, ctx: PortContext, store: BlobStore) -> None:
        self.ctx = ctx
        self.store = store
        self.root = ctx.config.data_dir / REMOTE / "runs"
        self.runs: collections.OrderedDict[str, RemoteRun] = collections.OrderedDict()
        self.active: RemoteRun | None = None
        self._starting = False
        self._tasks: set[asyncio.Task[None]] = set()
        # What a previous agent process left: its runs are not known any more.
        for folder in (self.root, store.work):
            shutil.rmtree(folder, ignore_errors=True)
        _OPEN[id(ctx)] = self

    @staticmethod
    def of(ctx: PortContext) -> RemoteRuns | None:
        """The remote runs serving ``ctx``'s agent, if its HTTP port made them."""
        return _OPEN.get(id(ctx))

    async def close(self) -> None:
        """Wait for the runs' tasks, at most ``drain_timeout``: a run the stopping agent
        ends skips its report, so this is about one batch (the agent's stop calls it)."""
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=self.ctx.config.drain_timeout)

    def get(self, run_id: str) -> RemoteRun | None:
        return self.runs.get(run_id)

    def in_use(self) -> set[str]:
        return {r.dataset for r in self.runs.values() if not r.done}

    async def start(
        self, run_id: str, dataset: str, options: FolderOptions, init: str | None
    ) -> RemoteRun:
        if self.ctx.stopping.is_set():
            raise BusyError("the agent is stopping; start the run on it once it is back")
        if self._starting or (self.active is not None and not self.active.done):
            busy = "another run" if self.active is None else repr(self.active.run_id)
            raise BusyError(
                f"the agent is training run {busy}; wait for it to end or stop it "
                "(POST /api/train/RUN_ID/stop), then start again"
            )
        if run_id in self.runs:
            raise ConfigError(f"the agent has a run {run_id!r} already; choose another run id")
        self._starting = True  # held across the awaits below: a second start is busy
        try:
            return await self._start(run_id, dataset, options, init)
        finally:
            self._starting = False

    async def _start(
        self, run_id: str, dataset: str, options: FolderOptions, init: str | None
    ) -> RemoteRun:
        cfg = self.ctx.config
        manifest = await asyncio.to_thread(
            self.store.manifest, dataset,
            max_files=cfg.max_dataset_files, max_bytes=cfg.max_dataset_bytes,
        )  # fmt: skip
        init_path = None
        if init is not None:
            init_path = self.store.blob(init)
            if not await asyncio.to_thread(init_path.is_file):
                raise ConfigError(f"init {init[:12]}... is not on the agent; upload it first")
        model_size = await asyncio.to_thread(_check_sizes, manifest.files, options,
                                             cfg.max_train_data_bytes, cfg.max_train_model_bytes)  # fmt: skip
        # Two checkpoints (weights and the optimizer's state each) and the ONNX model.
        await asyncio.to_thread(self.ctx.disk.check, (2 * CHECKPOINT_FACTOR + 1) * model_size,
                                "a training run")  # fmt: skip
        folder = await asyncio.to_thread(self.store.materialise, manifest, run_id)
        run = RemoteRun(
            run_id=run_id, dataset=dataset, options=options,
            ring=EventRing(cfg.max_train_events), out=self.root / run_id,
            train_files=sum(1 for e in manifest.files if e.path.startswith("train/")),
        )  # fmt: skip
        self.runs[run_id] = run
        self.active = run
        self._prune()
        task = asyncio.create_task(self._run(run, folder, init_path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("remote training run %s: %d files, %s", run_id, len(manifest.files),
                 options.model)  # fmt: skip
        return run

    async def _run(self, run: RemoteRun, folder: Path, init: Path | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            summary = await loop.run_in_executor(
                self.ctx.train_executor, self._train, run, folder, init, loop
            )
        except Exception as exc:
            if isinstance(exc, EdgewireError):
                run.error = {"error": self._without_paths(exc.message, run.run_id),
                             "code": exc.code}  # fmt: skip
            else:
                log.exception("remote training run %s failed", run.run_id)
                run.error = {"error": INTERNAL, "code": "train"}
            run.state = "failed"
            run.ring.append("error", {"state": run.state, **run.error})
        else:
            run.summary = summary
            run.state = "stopped" if summary.get("stopped") else "succeeded"
            run.ring.append("summary", {"state": run.state, "summary": summary,
                                        "files": run.files})  # fmt: skip
        finally:
            run.finished = time.time()
            await asyncio.to_thread(self.store.remove_work, run.run_id)
            self.ctx.disk.changed()
            self._wake(run)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.store.sweep, in_use=self.in_use())

    def _train(
        self, run: RemoteRun, folder: Path, init: Path | None, loop: asyncio.AbstractEventLoop
    ) -> dict[str, Any]:
        """On the training thread."""
        from edgewire.train.folder import train_folder

        if run.stop.is_set() or self.ctx.stopping.is_set():
            raise BusyError("the run was stopped before it began")
        run.state = "running"
        last_wake = 0.0

        def on_event(kind: str, data: dict[str, Any]) -> None:
            nonlocal last_wake
            if kind == "init":  # names the agent's path of the checkpoint
                data = {k: v for k, v in data.items() if k != "path"}
            run.ring.append(kind, data)
            now = time.monotonic()
            if kind != "feedback" or now - last_wake >= WAKE_S:
                last_wake = now
                loop.call_soon_threadsafe(self._wake, run)

        def should_stop() -> bool:
            if self.ctx.stopping.is_set():
                # No val pass, report or export: the agent's stop waits for this thread.
                raise BusyError(f"the agent stopped during run {run.run_id!r}; start it again")
            return run.stop.is_set()

        on_event("ready", {"run_id": run.run_id, "next_seq": 0, "resumed": False,
                          "train_files": run.train_files})  # fmt: skip
        shutil.rmtree(run.out, ignore_errors=True)
        summary = train_folder(
            folder, run.out, run.options, init=init, on_event=on_event,
            should_stop=should_stop, recorded_as=DATASET,
        )  # fmt: skip
        # The agent's paths stay here: the client learns the file names only.
        summary["files"] = {key: Path(path).name for key, path in summary["files"].items()}
        summary.pop("notes", None)
        for name in RESULT_FILES:
            path = run.out / name
            if path.is_file():
                run.files[name] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        return summary

    def _without_paths(self, message: str, run_id: str) -> str:
        """``message`` with the run's data set folder as "dataset" (the client's name for
        it) and the data dir as "<data dir>": no path of the agent goes to the peer."""
        work = self.store.work / run_id
        data = self.ctx.config.data_dir
        for folder, shown in ((work, DATASET), (data, "<data dir>")):
            for form in {str(folder.resolve()), str(folder.absolute()), str(folder)}:
                message = message.replace(form, shown)
        return message

    def _wake(self, run: RemoteRun) -> None:
        run.changed.set()
        run.changed = asyncio.Event()

    def _prune(self) -> None:
        """Keep the newest ``max_finished_runs`` finished runs (and their files)."""
        finished = [r for r in self.runs.values() if r.done]
        for old in finished[: max(len(finished) - self.ctx.config.max_finished_runs, 0)]:
            del self.runs[old.run_id]
            shutil.rmtree(old.out, ignore_errors=True)


def _check_sizes(
    files: Sequence[Entry], options: FolderOptions, max_data: int, max_model: int
) -> int:
    """Refuse a run whose images or model would not fit the agent's caps before anything
    is loaded (counted from the manifest: images at three channels); the model's bytes."""
    from edgewire.train.trainer import TrainSpec, check_model_size

    paths = [e.path for e in files]
    check_data_size(sum(1 for p in paths if p.split("/", 1)[0] in SPLITS),
                    options.image_size, max_data)  # fmt: skip
    classes = {p.split("/")[1] for p in paths if p.startswith("train/") and p.count("/") >= 2}
    size = options.image_size
    spec = TrainSpec(model=options.model, in_channels=3, height=size, width=size,
                     num_classes=max(len(classes), 2))  # fmt: skip
    try:
        return check_model_size(spec, max_model)
    except TrainError as exc:  # the peer's options: its request is what is wrong
        raise ConfigError(exc.message) from None
