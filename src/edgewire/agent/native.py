"""Connections on the native wire port: hello, ping, and handing off to features."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from edgewire import __version__
from edgewire.errors import ConnectError, EdgewireError, PeerTimeout, ProtocolError
from edgewire.wire.frames import VERSION, MsgType
from edgewire.wire.stream import FramedStream

if TYPE_CHECKING:
    from edgewire.agent.server import Agent

log = logging.getLogger(__name__)


async def handle_native(
    agent: Agent, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    cfg = agent.config
    stream = FramedStream(reader, writer, max_payload=cfg.max_frame_bytes)
    try:
        while not agent.stopping.is_set():
            got = await stream.read_message(cfg.idle_timeout, frame_timeout=cfg.frame_timeout)
            if got is None:
                return
            frame, message = got
            agent.metrics.frames_total.labels(frame.type.name).inc()
            if frame.type is MsgType.HELLO:
                stream.send(MsgType.CAPABILITIES, capabilities(agent), request_id=frame.request_id)
            elif frame.type is MsgType.PING:
                stream.send(MsgType.PONG, message.meta, request_id=frame.request_id)
            elif frame.type is MsgType.TRAIN_BEGIN:
                from edgewire.agent.train_stream import serve_training

                await serve_training(agent, stream, frame, message)
            else:
                raise ProtocolError(f"{frame.type.name} is not accepted here")
            await stream.drain(cfg.idle_timeout)
    except (PeerTimeout, ConnectError) as exc:
        agent.metrics.errors_total.labels("native", exc.code).inc()
        log.debug("native connection dropped: %s", exc)
    except EdgewireError as exc:
        # A clear error frame for the peer, then close: a byte stream that went
        # wrong cannot be trusted to be in sync any more.
        agent.metrics.errors_total.labels("native", exc.code).inc()
        stream.send_error(exc.code, exc.message)
        with contextlib.suppress(EdgewireError):
            await stream.drain(1.0)
    finally:
        await stream.close()


def capabilities(agent: Agent) -> dict[str, object]:
    cfg = agent.config
    return {
        "agent": "edgewire",
        "version": __version__,
        "protocol": VERSION,
        "max_frame_bytes": cfg.max_frame_bytes,
        "max_train_window": cfg.max_train_window,
        "features": sorted(agent.features),
    }
