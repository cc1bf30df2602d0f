"""The agent's side of a streaming training run on the native port.

The host sends TRAIN_BEGIN; we answer TRAIN_READY with the batch to start from
and a window of credits. Each TRAIN_BATCH takes a credit; each TRAIN_FEEDBACK
gives one back, so at most ``window`` batches are ever queued here. Reading and
decoding overlap with training, which runs on the agent's training thread.

While the trainer is ahead (more than half the window queued), the answers to
a few batches go back together: one wake-up of the event loop and one write per
group rather than per batch, which on a one-core board is CPU the trainer gets
back. The first answer, and every answer once the queue runs low, goes at once,
so the host's credits come back before the trainer could run dry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgewire.agent.disk import CHECKPOINT_FACTOR
from edgewire.errors import BusyError, ConfigError, ProtocolError
from edgewire.train.session import BatchOutcome, RunPlan, RunState, apply_batch, finish_run
from edgewire.wire.frames import Frame, MsgType, encode_frame
from edgewire.wire.messages import Message, encode_message, require_finite
from edgewire.wire.stream import FramedStream

if TYPE_CHECKING:
    from edgewire.agent.context import PortContext

_END = None
#: How long a new stream waits for the old one of the same run to let go.
REATTACH_WAIT_S = 5.0
#: What a TRAIN_SUMMARY's meta may take beside the model it returns (bytes).
_SUMMARY_ROOM = 1024 * 1024
DEFAULT_WINDOW = 8


def batch_tensors(message: Message) -> tuple[int, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Check a TRAIN_BATCH message: (seq, images, labels)."""
    seq = message.meta.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError(f"TRAIN_BATCH needs a non-negative integer 'seq', got {seq!r}")
    if len(message.tensors) != 2:
        raise ProtocolError(f"TRAIN_BATCH carries {len(message.tensors)} tensors, expected 2")
    x, y = message.tensors
    if x.dtype not in (np.uint8, np.float32) or x.ndim != 4:
        raise ProtocolError(
            f"images must be uint8 or float32 N×C×H×W, got {x.dtype}{list(x.shape)}"
        )
    if y.dtype.kind not in "iu" or y.ndim != 1 or y.shape[0] != x.shape[0] or not len(y):
        raise ProtocolError(
            f"labels must be N integers matching the images, got {y.dtype}{list(y.shape)}"
        )
    require_finite(x, "images")
    return seq, x, y


async def serve_training(
    agent: PortContext, stream: FramedStream, begin: Frame, message: Message
) -> None:
    from edgewire.train.trainer import TrainSpec

    meta = message.meta
    run_id = meta.get("run_id")
    if not isinstance(run_id, str):
        raise ConfigError(f"TRAIN_BEGIN needs a string run_id, got {run_id!r}")
    spec = TrainSpec.from_dict(meta.get("spec") or {})
    plan = RunPlan.from_dict(meta.get("plan"))
    window = meta.get("window", DEFAULT_WINDOW)
    if not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be a positive integer, got {window!r}")
    window = min(window, agent.config.max_train_window)
    state, resumed = await _open_run(agent, run_id, spec, plan, resume=bool(meta.get("resume")))
    try:
        stream.send(
            MsgType.TRAIN_READY,
            {
                "run_id": run_id,
                "resumed": resumed,
                "next_seq": state.next_seq,
                "samples_seen": state.samples_seen,
                "window": window,
                "device": state.trainer.device,
                "total": plan.total,
            },
            request_id=begin.request_id,
        )
        await stream.drain(agent.config.idle_timeout)
        await _pump(agent, stream, state, window)
    finally:
        agent.runs.detach(state)


async def _open_run(
    agent: PortContext, run_id: str, spec: Any, plan: RunPlan, *, resume: bool
) -> tuple[RunState, bool]:
    """Attach to the run; a host that reconnects right after a drop may find its
    old connection not yet noticed as gone, so a busy run gets a few seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REATTACH_WAIT_S
    while True:
        try:
            return await loop.run_in_executor(
                agent.train_executor,
                functools.partial(
                    _open_checked, agent, run_id=run_id, spec=spec, plan=plan, resume=resume
                ),
            )
        except BusyError:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.05)


def _open_checked(
    agent: PortContext, *, run_id: str, spec: Any, plan: RunPlan, resume: bool
) -> tuple[RunState, bool]:
    """Open the run once the model's size and the disk allow it (blocking: training thread).

    The model is measured without allocating it, so a spec over
    ``max_train_model_bytes`` is refused before any memory or disk is spent.
    """
    from edgewire.train.trainer import check_model_size

    size = check_model_size(spec, agent.config.max_train_model_bytes)
    agent.disk.check(CHECKPOINT_FACTOR * size, f"training run {run_id!r}")
    opened = agent.runs.open(run_id=run_id, spec=spec, plan=plan, resume=resume)
    agent.disk.changed()
    return opened


def _finish(
    agent: PortContext, state: RunState, want_model: bool
) -> tuple[dict[str, Any], list[np.ndarray[Any, Any]]]:
    """The final checkpoint and ONNX model (its bytes too when the host asked and they fit
    in a frame), then the oldest finished runs beyond ``max_finished_runs`` go (blocking:
    training thread)."""
    tensors: list[np.ndarray[Any, Any]] = []
    try:
        summary = finish_run(state)
        if want_model:
            onnx = Path(summary["onnx"])
            room = agent.config.max_frame_bytes - _SUMMARY_ROOM
            if onnx.stat().st_size <= room:
                tensors.append(np.frombuffer(onnx.read_bytes(), dtype=np.uint8))
                summary["model_bytes"] = int(tensors[0].size)
            else:
                summary["model_not_sent"] = f"the model is over {room} bytes, a frame's room"
        return summary, tensors
    finally:
        agent.runs.prune_finished(agent.config.max_finished_runs)
        agent.disk.changed()


async def _pump(agent: PortContext, stream: FramedStream, state: RunState, window: int) -> None:
    loop = asyncio.get_running_loop()
    # The training thread takes batches straight from a thread-safe queue and
    # never waits for the event loop between steps: on a 2-core board a round
    # trip through a busy loop per batch would idle the trainer for most of a ms.
    jobs: queue.Queue[tuple[int, Any, Any] | None] = queue.Queue(maxsize=window)

    unanswered = 0  # batches received minus feedback sent: the credits in use

    def deliver(outcomes: list[BatchOutcome]) -> None:
        nonlocal unanswered
        unanswered -= len(outcomes)
        _send_feedback(agent, stream, outcomes)

    worker = loop.run_in_executor(
        agent.train_executor,
        _train_thread,
        state,
        jobs,
        lambda outcomes: loop.call_soon_threadsafe(deliver, outcomes),
        max(1, window // 2),
    )
    cfg = agent.config
    ended = want_model = False
    # One plain read per frame; a stop request or a failed training thread
    # interrupts the read by cancelling this task (cheaper per batch than
    # racing two fresh tasks with asyncio.wait, and the loop's time is the
    # trainer's time on a small board).
    this = asyncio.current_task()
    assert this is not None
    reading = False

    def interrupt(_: object) -> None:
        if reading and not this.done():
            this.cancel()

    stop_wait = asyncio.ensure_future(agent.stopping.wait())
    stop_wait.add_done_callback(interrupt)
    worker.add_done_callback(interrupt)
    try:
        while not ended:
            reading = True
            try:
                got = await stream.read_message(cfg.idle_timeout, frame_timeout=cfg.frame_timeout)
            except asyncio.CancelledError:
                if not (agent.stopping.is_set() or worker.done()):
                    raise  # cancelled from outside: not ours to swallow
                this.uncancel()
                if worker.done() and not worker.cancelled() and worker.exception() is not None:
                    worker.result()  # raises the training thread's error
                raise _Draining() from None
            finally:
                reading = False
            if got is None:
                return
            frame, message = got
            agent.metrics.frames[frame.type].inc()
            if frame.type is MsgType.TRAIN_BATCH:
                item = batch_tensors(message)
                unanswered += 1
                if unanswered > window:
                    raise ProtocolError(f"more than {window} batches in flight (credit exceeded)")
                jobs.put_nowait(item)  # cannot be full: it holds at most `window` batches
            elif frame.type is MsgType.TRAIN_END:
                ended = True
                want_model = message.meta.get("return_model") is True
            elif frame.type is MsgType.PING:
                stream.send(MsgType.PONG, message.meta, request_id=frame.request_id)
            else:
                raise ProtocolError(f"{frame.type.name} is not accepted during a training run")
        await asyncio.to_thread(jobs.put, _END)
        await worker
        summary, model = await loop.run_in_executor(
            agent.train_executor, _finish, agent, state, want_model
        )
        stream.send(MsgType.TRAIN_SUMMARY, summary, model)
        await stream.drain(cfg.idle_timeout)
    except _Draining:
        await _stop_worker(worker, jobs)
        await loop.run_in_executor(agent.train_executor, _checkpoint, state)
        stream.send_error("shutting_down", "the agent is shutting down; resume the run later")
    finally:
        stop_wait.cancel()
        await _stop_worker(worker, jobs)


class _Draining(Exception):
    pass


def _checkpoint(state: RunState) -> None:
    from edgewire.train.session import save_run_checkpoint

    if state.next_seq:
        save_run_checkpoint(state)


async def _stop_worker(worker: asyncio.Future[None], jobs: queue.Queue[Any]) -> None:
    """Let the step in progress finish (a thread cannot be interrupted), drop the rest."""
    if worker.done():
        return
    with contextlib.suppress(queue.Empty):
        while True:
            jobs.get_nowait()
    jobs.put_nowait(_END)
    with contextlib.suppress(Exception):
        await worker


def _train_thread(
    state: RunState,
    jobs: queue.Queue[Any],
    post: Callable[[list[BatchOutcome]], object],
    group: int,
) -> None:
    """Runs on the training thread for a whole stream: step, post the outcomes, repeat.

    Outcomes are posted in groups of up to ``group`` while at least ``group``
    batches wait; the first one, and each once fewer wait, is posted at once.
    """
    pending: list[BatchOutcome] = []
    first = True
    try:
        while True:
            item = jobs.get()
            if item is _END:
                return
            seq, x, y = item
            pending.append(apply_batch(state, seq=seq, x=x, y=y))
            if first or len(pending) >= group or jobs.qsize() < group:
                post(pending)
                pending, first = [], False
    finally:
        if pending:  # what was trained before an error is still answered
            post(pending)


def _send_feedback(agent: PortContext, stream: FramedStream, outcomes: list[BatchOutcome]) -> None:
    # Feedback is small and one per batch the host sent against its credits, so
    # the write buffer is bounded by the window without waiting on drain here.
    metrics = agent.metrics
    frames: list[bytes] = []
    for outcome in outcomes:
        if not outcome.duplicate:
            metrics.train_batches_total.labels(outcome.split).inc()
            if outcome.split == "train":
                metrics.train_samples_total.inc(outcome.count)
                metrics.train_step_seconds.observe(outcome.step_ms / 1000)
        frames.append(
            encode_frame(
                MsgType.TRAIN_FEEDBACK,
                encode_message(outcome.feedback()),
                request_id=outcome.seq % 2**32,
            )
        )
        if outcome.epoch_summary is not None:
            frames.append(encode_frame(MsgType.TRAIN_EPOCH, encode_message(outcome.epoch_summary)))
    if not stream.writer.is_closing():
        stream.writer.write(b"".join(frames))  # one write, one syscall, for the group
