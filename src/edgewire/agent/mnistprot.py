"""The opt-in ESP8266 port: the seed's MnistProt flatbuffers protocol, byte for byte.

A request is any valid ``Commands`` buffer with 784 floats (the firmware's is
3180 bytes; the framer cuts each where its own offsets say it ends), the answer
exactly 96 bytes (10 scores and the server's compute time in ``timer_ms``). The
seed served one request per connection; several in a row on one connection work
too. Requests go to :meth:`Serving.default_model`. Anything malformed, or a
request no model can be chosen for, closes that connection (the protocol has no
error message), is counted in ``edgewire_infer_errors_total{protocol="mnistprot"}``,
and nobody else notices.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from edgewire.agent.context import Handler, PortContext
from edgewire.agent.legacy import read_chunk
from edgewire.agent.serving import reshape_flat
from edgewire.errors import ConnectError, EdgewireError, PeerTimeout, ProtocolError
from edgewire.wire.mnistprot import (
    CMD_INFERENCE_INPUT,
    OUTPUT_LEN,
    RequestFramer,
    decode_request,
    encode_response,
)

log = logging.getLogger(__name__)
READ_CHUNK = 16 * 1024


def handler(ctx: PortContext) -> Handler:
    """The MnistProt port's connection handler (``edgewire.ports`` names it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_mnistprot(ctx, reader, writer)

    return handle


async def handle_mnistprot(
    agent: PortContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    cfg = agent.config
    framer = RequestFramer()
    try:
        while not agent.stopping.is_set():
            chunk = await read_chunk(
                reader,
                cfg,
                mid_message=bool(framer.buffered),
                size=READ_CHUNK,
                what="MnistProt client",
            )
            if not chunk:
                return
            for raw in framer.feed(chunk):
                writer.write(await _answer(agent, raw))
            async with asyncio.timeout(cfg.idle_timeout):
                await writer.drain()
    except (PeerTimeout, ConnectError, TimeoutError, OSError) as exc:
        agent.metrics.errors_total.labels("mnistprot", "timeout").inc()
        log.debug("MnistProt connection dropped: %s", exc)
    except EdgewireError as exc:
        agent.metrics.infer_errors_total.labels("mnistprot", exc.code).inc()
        log.info("MnistProt request refused: %s", exc)
    finally:
        writer.close()


async def _answer(agent: PortContext, raw: bytes) -> bytes:
    request = decode_request(raw)
    if request.cmd != CMD_INFERENCE_INPUT or request.digit is None:
        raise ProtocolError(f"MnistProt command {request.cmd} is not an inference request")
    serving = agent.serving
    name = serving.default_model()
    info = serving.loaded(name).inputs[0]
    x = reshape_flat(info, np.asarray(request.digit, dtype=np.float32))
    served = await serving.infer(name, [x])
    first = next(iter(served.result.outputs.values()))
    scores = np.asarray(first, dtype=np.float32).reshape(-1)
    if scores.size != OUTPUT_LEN:
        raise ProtocolError(
            f"the model gives {scores.size} outputs; MnistProt carries {OUTPUT_LEN}"
        )
    agent.metrics.answered["mnistprot"].inc()
    agent.metrics.latency_ms["mnistprot"].append(served.result.queue_ms + served.result.compute_ms)
    return encode_response(scores, served.result.compute_ms)
