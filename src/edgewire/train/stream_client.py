"""Host side of a streaming training run: send batches, keep a window in flight.

Credit-based backpressure: the agent grants ``window`` credits in TRAIN_READY;
sending a batch spends one, each TRAIN_FEEDBACK returns one. The sender never
waits for a round trip per batch (the seed's stop-and-wait did), yet the agent
never holds more than ``window`` batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgewire.errors import AuthError, ConnectError, ProtocolError, RemoteError
from edgewire.wire.frames import MsgType, encode_frame
from edgewire.wire.messages import encode_message
from edgewire.wire.stream import FramedStream, open_framed

if TYPE_CHECKING:
    from edgewire.data.datasets import Dataset

#: (kind, data): kind is "ready", "feedback", "epoch" or "summary".
EventHandler = Callable[[str, dict[str, Any]], None]
READY_TIMEOUT = 120.0
#: Where the token comes from when StreamOptions gives none.
TOKEN_ENV = "EDGEWIRE_TOKEN"  # noqa: S105 -- the name of a variable, not a secret


@dataclass(frozen=True, kw_only=True)
class StreamOptions:
    run_id: str
    spec: dict[str, Any]
    epochs: int = 1
    batch_size: int = 32
    checkpoint_every: int = 0
    window: int = 8
    resume: bool = False
    seed: int = 0
    #: Seconds to wait for any word from the agent while batches are in flight.
    timeout: float = 300.0
    #: The agent's token, sent in a HELLO before TRAIN_BEGIN (default: ``EDGEWIRE_TOKEN``).
    token: str | None = field(default=None, repr=False)
    #: Ask for the trained ONNX model's bytes in the summary (``summary["model"]``).
    return_model: bool = False


def spec_for(
    data: Dataset, *, model: str, optimizer: str = "adam", lr: float = 1e-3, seed: int = 0
) -> dict[str, Any]:
    """The model spec (as TRAIN_BEGIN carries it) for training ``model`` on ``data``."""
    channels, height, width = data.shape
    return {
        "model": model, "in_channels": channels, "height": height, "width": width,
        "num_classes": data.num_classes, "optimizer": optimizer, "lr": lr, "seed": seed,
    }  # fmt: skip


def plan_for(train: Dataset, val: Dataset | None, options: StreamOptions) -> dict[str, int]:
    return {
        "epochs": options.epochs,
        "train_batches": math.ceil(len(train) / options.batch_size),
        "val_batches": math.ceil(len(val) / options.batch_size) if val is not None else 0,
        "checkpoint_every": options.checkpoint_every,
    }


class _Batches:
    """Batch ``seq`` of the run, computed the same way on every (re)start."""

    def __init__(
        self, train: Dataset, val: Dataset | None, plan: dict[str, int], options: StreamOptions
    ):
        self.train, self.val, self.plan, self.options = train, val, plan, options
        self._epoch = -1
        self._order: list[np.ndarray[Any, Any]] = []

    def get(self, seq: int) -> tuple[int, str, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        from edgewire.data.datasets import batch_order

        per_epoch = self.plan["train_batches"] + self.plan["val_batches"]
        epoch, pos = divmod(seq, per_epoch)
        bs = self.options.batch_size
        if pos < self.plan["train_batches"]:
            if epoch != self._epoch:
                self._order = batch_order(
                    len(self.train), batch_size=bs, epoch=epoch, seed=self.options.seed
                )
                self._epoch = epoch
            idx = self._order[pos]
            return epoch, "train", self.train.x[idx], self.train.y[idx]
        assert self.val is not None
        start = (pos - self.plan["train_batches"]) * bs
        return epoch, "val", self.val.x[start : start + bs], self.val.y[start : start + bs]


async def stream_training(
    host: str,
    port: int,
    train: Dataset,
    val: Dataset | None,
    options: StreamOptions,
    *,
    on_event: EventHandler | None = None,
) -> dict[str, Any]:
    """Stream a whole run to the agent; returns the agent's TRAIN_SUMMARY.

    A refused token is an AuthError; an agent that goes away mid-run a ConnectError
    (the run waits at its last checkpoint for a resume).
    """
    try:
        return await _stream_training(host, port, train, val, options, on_event=on_event)
    except RemoteError as exc:
        if exc.remote_code == AuthError.code:
            raise AuthError(exc.message.removesuffix(f" [{AuthError.code}]")) from exc
        raise


async def _stream_training(
    host: str,
    port: int,
    train: Dataset,
    val: Dataset | None,
    options: StreamOptions,
    *,
    on_event: EventHandler | None,
) -> dict[str, Any]:
    emit = on_event or (lambda kind, data: None)
    plan = plan_for(train, val, options)
    token = options.token or os.environ.get(TOKEN_ENV) or None
    stream = await open_framed(host, port)
    try:
        if token:
            await _hello(stream, token, options.timeout)
        stream.send(
            MsgType.TRAIN_BEGIN,
            {
                "run_id": options.run_id,
                "spec": options.spec,
                "plan": plan,
                "window": options.window,
                "resume": options.resume,
            },
        )
        await stream.drain(options.timeout)
        got = await stream.read_message(READY_TIMEOUT)
        if got is None:
            raise ConnectError("the agent closed the connection before TRAIN_READY")
        if got[0].type is not MsgType.TRAIN_READY:
            raise ProtocolError("the agent did not answer TRAIN_BEGIN with TRAIN_READY")
        ready = got[1].meta
        emit("ready", ready)
        window = int(ready["window"])
        credits = asyncio.Semaphore(window)
        total = plan["epochs"] * (plan["train_batches"] + plan["val_batches"])
        sender = asyncio.create_task(
            _send_all(
                stream,
                _Batches(train, val, plan, options),
                int(ready["next_seq"]),
                total,
                credits,
                options,
            )
        )
        try:
            return await _receive(stream, credits, emit, sender, options)
        except ProtocolError as exc:
            if stream.reader.at_eof():  # cut off mid-frame: the agent went away
                raise ConnectError(
                    "the agent closed the connection in the middle of a frame"
                ) from exc
            raise
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    finally:
        await stream.close()


async def _hello(stream: FramedStream, token: str, timeout: float) -> None:
    """Say hello with the token; a wrong one comes back as an ERROR (RemoteError)."""
    stream.send(MsgType.HELLO, {"client": "edgewire-train", "token": token}, request_id=1)
    await stream.drain(timeout)
    got = await stream.read_message(READY_TIMEOUT)
    if got is None:
        raise ConnectError("the agent closed the connection after HELLO")
    if got[0].type is not MsgType.CAPABILITIES:
        raise ProtocolError(f"the agent answered HELLO with {got[0].type.name}")


def _batch_frame(batches: _Batches, seq: int) -> bytes:
    epoch, split, x, y = batches.get(seq)
    payload = encode_message(
        {"seq": seq, "epoch": epoch, "split": split},
        [np.ascontiguousarray(x), y.astype(np.int64, copy=False)],
    )
    return encode_frame(MsgType.TRAIN_BATCH, payload, request_id=seq % 2**32)


async def _send_all(
    stream: FramedStream,
    batches: _Batches,
    start: int,
    total: int,
    credits: asyncio.Semaphore,
    options: StreamOptions,
) -> None:
    seq = start
    while seq < total:
        await credits.acquire()
        frames = [_batch_frame(batches, seq)]
        seq += 1
        # Credits that came back together go out together: one write, and on the
        # agent one wake-up, for the group (the agent answers in groups too).
        while seq < total and not credits.locked():
            await credits.acquire()  # free: it does not wait
            frames.append(_batch_frame(batches, seq))
            seq += 1
        stream.writer.writelines(frames)
        await stream.drain(options.timeout)
    stream.send(MsgType.TRAIN_END, {"return_model": True} if options.return_model else {})
    await stream.drain(options.timeout)


async def _receive(
    stream: FramedStream,
    credits: asyncio.Semaphore,
    emit: EventHandler,
    sender: asyncio.Task[None],
    options: StreamOptions,
) -> dict[str, Any]:
    # One plain read per frame (frames already buffered come without a trip
    # through the event loop); a failed sender interrupts it by cancelling this
    # task, and its failure is the real error.
    this = asyncio.current_task()
    assert this is not None
    reading = [True]  # a callback already scheduled when the read ends must not cancel

    def interrupt(task: asyncio.Task[None]) -> None:
        failed = not task.cancelled() and task.exception() is not None
        if failed and reading[0] and not this.done():
            this.cancel()

    sender.add_done_callback(interrupt)
    try:
        return await _read_replies(stream, credits, emit, options)
    except asyncio.CancelledError:
        failure = sender.exception() if sender.done() and not sender.cancelled() else None
        if failure is None or this.uncancel():
            raise  # cancelled from outside: not ours to swallow
        raise failure from None
    finally:
        reading[0] = False
        sender.remove_done_callback(interrupt)


async def _read_replies(
    stream: FramedStream, credits: asyncio.Semaphore, emit: EventHandler, options: StreamOptions
) -> dict[str, Any]:
    while True:
        got = await stream.read_message(options.timeout)
        if got is None:
            # The agent went away (it died, or its host did): a connection lost, not
            # a malformed stream; the run waits at its last checkpoint.
            raise ConnectError("the agent closed the connection before the run summary")
        frame, message = got
        if frame.type is MsgType.TRAIN_FEEDBACK:
            credits.release()
            emit("feedback", message.meta)
        elif frame.type is MsgType.TRAIN_EPOCH:
            emit("epoch", message.meta)
        elif frame.type is MsgType.TRAIN_SUMMARY:
            emit("summary", message.meta)
            summary = dict(message.meta)
            if options.return_model and message.tensors:
                model = message.tensors[0]
                if model.dtype != np.uint8 or model.ndim != 1:
                    raise ProtocolError("the summary's model is not a 1-D uint8 tensor")
                summary["model"] = model.tobytes()
            return summary
        elif frame.type is not MsgType.PONG:
            raise ProtocolError(f"unexpected {frame.type.name} during a training run")
