"""The opt-in JettyLink port: the seed's BTS0 batch stream, byte for byte.

Each connection trains a fresh MNIST CNN on the batches it sends, answers each
batch with the seed's text line and ``OK``, and when the sender hangs up saves a
checkpoint and an ONNX model under ``<data-dir>/runs/bts0-<time>``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgewire.agent.context import Handler, PortContext
from edgewire.agent.disk import CHECKPOINT_FACTOR
from edgewire.agent.legacy import read_chunk
from edgewire.errors import BusyError, ConnectError, EdgewireError, PeerTimeout
from edgewire.wire.bts0 import ERR_REPLY, Bts0Batch, Bts0Decoder, format_reply
from edgewire.wire.stream import TimedReads, linger_close

if TYPE_CHECKING:
    from edgewire.train.trainer import Trainer

log = logging.getLogger(__name__)
READ_CHUNK = 256 * 1024
#: BTS0 senders training at once; the protocol has no token, so each is a model in
#: memory that anyone on the network can ask for. More get the seed's ERR reply.
MAX_SESSIONS = 2


@dataclass
class _Sessions:
    """BTS0 senders training now on one agent (each holds a model in memory)."""

    active: int = 0


def handler(ctx: PortContext) -> Handler:
    """The BTS0 port's connection handler (``edgewire.ports`` names it)."""
    sessions = _Sessions()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_bts0(ctx, sessions, reader, writer)

    return handle


async def handle_bts0(
    agent: PortContext,
    sessions: _Sessions,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    loop = asyncio.get_running_loop()
    cfg = agent.config
    decoder = Bts0Decoder()
    reads = TimedReads(reader)
    trainer: Trainer | None = None
    model_size = 0
    batches = 0
    refused = False
    counted = False
    try:
        while not agent.stopping.is_set():
            chunk = await read_chunk(
                reads, cfg, mid_message=bool(decoder.buffered), size=READ_CHUNK, what="BTS0 sender"
            )
            if not chunk:
                decoder.flush()
                return
            for batch in decoder.feed(chunk):
                if trainer is None:
                    if sessions.active >= MAX_SESSIONS:
                        raise BusyError(f"{MAX_SESSIONS} BTS0 senders are training already")
                    sessions.active += 1
                    counted = True
                    fresh, model_size = await loop.run_in_executor(
                        agent.train_executor, _new_trainer, agent
                    )
                    trainer = fresh
                reply = await loop.run_in_executor(agent.train_executor, _train, trainer, batch)
                agent.metrics.train_batches_total.labels("train").inc()
                agent.metrics.train_samples_total.inc(len(batch.labels))
                batches += 1
                writer.write(reply)
                async with asyncio.timeout(cfg.idle_timeout):
                    await writer.drain()
    except (PeerTimeout, ConnectError, TimeoutError) as exc:
        agent.metrics.errors_total.labels("bts0", "timeout").inc()
        log.debug("BTS0 connection dropped: %s", exc)
    except EdgewireError as exc:
        agent.metrics.errors_total.labels("bts0", exc.code).inc()
        log.info("BTS0 sender refused: %s", exc)
        writer.write(ERR_REPLY)
        refused = True
    finally:
        reads.cancel()
        if refused:
            await linger_close(reader, writer)
        else:
            writer.close()
        try:
            if trainer is not None and batches:
                await loop.run_in_executor(
                    agent.train_executor, _save, agent, trainer, batches, model_size
                )
        finally:
            if counted:
                sessions.active -= 1


def _new_trainer(agent: PortContext) -> tuple[Trainer, int]:
    """A fresh trainer and its model's size, once the size cap and the disk allow it."""
    from edgewire.train.trainer import Trainer, TrainSpec, check_model_size

    spec = TrainSpec(
        model=agent.config.bts0_model, in_channels=1, height=28, width=28, num_classes=10
    )
    size = check_model_size(spec, agent.config.max_train_model_bytes)
    agent.disk.check(CHECKPOINT_FACTOR * size, "a BTS0 training session")
    return Trainer(spec), size


def _train(trainer: Trainer, batch: Bts0Batch) -> bytes:
    import numpy as np

    step = trainer.train_step(np.array(batch.images), batch.labels.astype(np.int64))
    return format_reply(batch.header.batch_index, step.loss, step.correct / max(step.count, 1))


def _save(agent: PortContext, trainer: Trainer, batches: int, model_size: int) -> None:
    """Keep the session as ``runs/bts0-<time>``: a finished run, pruned like the others."""
    from edgewire.train.checkpoint import save_checkpoint
    from edgewire.train.session import CHECKPOINT_NAME, ONNX_NAME

    try:
        agent.disk.check(CHECKPOINT_FACTOR * model_size, "saving a BTS0 run")
    except EdgewireError as exc:
        log.warning("not saving the BTS0 run: %s", exc)
        return
    name = time.strftime("bts0-%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    run_dir = agent.runs.root / name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(trainer, run_dir / CHECKPOINT_NAME, meta={"batches": batches})
        trainer.export_onnx(run_dir / ONNX_NAME)
    except (EdgewireError, OSError) as exc:
        log.warning("could not save the BTS0 run: %s", exc)
    finally:
        agent.runs.prune_finished(agent.config.max_finished_runs)
        agent.disk.changed()
