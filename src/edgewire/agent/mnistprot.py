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
import contextlib
import functools
import logging
from collections import deque

import numpy as np

from edgewire.agent.context import Handler, PortContext
from edgewire.agent.legacy import read_chunk
from edgewire.agent.serving import reshape_flat
from edgewire.errors import ConnectError, EdgewireError, ModelError, PeerTimeout, ProtocolError
from edgewire.serve.batcher import InferResult
from edgewire.wire.mnistprot import (
    CMD_INFERENCE_INPUT,
    OUTPUT_LEN,
    RequestFramer,
    decode_request,
    encode_response,
)
from edgewire.wire.stream import TimedReads

log = logging.getLogger(__name__)
READ_CHUNK = 16 * 1024


def handler(ctx: PortContext) -> Handler:
    """The MnistProt port's connection handler (``edgewire.ports`` names it)."""

    return functools.partial(handle_mnistprot, ctx)


async def handle_mnistprot(
    agent: PortContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    cfg = agent.config
    framer = RequestFramer()
    answers = _Answers(agent, writer)
    reads = TimedReads(reader)
    try:
        while not agent.stopping.is_set() and answers.error is None:
            chunk = await read_chunk(
                reads,
                cfg,
                mid_message=bool(framer.buffered),
                size=READ_CHUNK,
                what="MnistProt client",
            )
            if not chunk:
                break  # the client is done, or a refusal closed the connection
            for raw in framer.feed(chunk):
                answers.submit(raw)
            if (
                len(answers.queue) >= cfg.max_inflight_per_connection
                or writer.transport.get_write_buffer_size() > _WRITE_HIGH
            ):
                # A client that sends ahead waits for its answers before more is read.
                async with asyncio.timeout(cfg.idle_timeout):
                    await answers.wait_sent()
                    await writer.drain()
        if answers.error is not None:
            raise answers.error
    except (PeerTimeout, ConnectError, TimeoutError, OSError) as exc:
        agent.metrics.errors_total.labels("mnistprot", "timeout").inc()
        log.debug("MnistProt connection dropped: %s", exc)
    except EdgewireError as exc:
        agent.metrics.infer_errors_total.labels("mnistprot", exc.code).inc()
        log.info("MnistProt request refused: %s", exc)
    finally:
        try:
            if answers.queue:  # answered ones go out (up to a refusal), in order
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(cfg.drain_timeout):
                        await answers.wait_sent()
        finally:  # a stopping agent may cancel the wait: the connection closes all the same
            answers.closed = True  # still queued: dropped from the batcher
            reads.cancel()
            writer.close()


#: Answer bytes queued to a client past which no more of its requests are read.
_WRITE_HIGH = 64 * 1024


class _Answers:
    """A connection's requests, answered from the batcher's callbacks in the order
    they came (a client may send several before reading)."""

    __slots__ = ("agent", "closed", "error", "halted", "queue", "sent", "writer")

    def __init__(self, agent: PortContext, writer: asyncio.StreamWriter) -> None:
        self.agent = agent
        self.writer = writer
        self.queue: deque[_Answer] = deque()
        self.closed = False
        #: The first refusal: answers before it go out, then the connection closes.
        self.error: EdgewireError | None = None
        self.halted = False  # a refused answer reached the head: nothing more is written
        self.sent: asyncio.Future[None] | None = None

    def submit(self, raw: bytes) -> None:
        """Check one request and queue it; a refusal raises (the connection closes)."""
        request = decode_request(raw)
        if request.cmd != CMD_INFERENCE_INPUT or request.digit is None:
            raise ProtocolError(f"MnistProt command {request.cmd} is not an inference request")
        serving = self.agent.serving
        name = serving.default_model()
        info = serving.loaded(name).inputs[0]
        x = reshape_flat(info, request.digit)
        answer = _Answer(self)
        if serving.submit_nowait(name, [x], answer) is None:
            raise ProtocolError(f"model {name!r} takes fewer rows at a time than one digit")
        self.queue.append(answer)

    def flush(self) -> None:
        """Write the answers ready at the head of the queue, in order; at a refused one,
        close the connection (what came before it is out) and write nothing more."""
        queue = self.queue
        while queue and queue[0].data is not None:
            answer = queue.popleft()
            if self.halted or self.closed:
                continue
            if answer.refused:
                self.halted = True
                self.writer.close()
                queue.clear()  # later requests are not answered: their replies say done
            elif answer.data:
                self.writer.write(answer.data)
        if not queue and self.sent is not None and not self.sent.done():
            self.sent.set_result(None)

    def fail(self, answer: _Answer, error: EdgewireError) -> None:
        if self.error is None:
            self.error = error
        answer.data, answer.refused = b"", True
        self.flush()

    async def wait_sent(self) -> None:
        """Until every queued request has been answered (or refused)."""
        if self.queue:
            self.sent = asyncio.get_running_loop().create_future()
            await self.sent


class _Answer:
    """One queued request's reply (a ``batcher.Reply``): its 96 bytes once answered."""

    __slots__ = ("answers", "data", "refused")

    def __init__(self, answers: _Answers) -> None:
        self.answers = answers
        self.data: bytes | None = None
        self.refused = False

    def done(self) -> bool:
        answers = self.answers
        return self.data is not None or answers.closed or answers.halted

    def set_result(self, result: InferResult) -> None:
        answers = self.answers
        first = next(iter(result.outputs.values()))
        if first.size != OUTPUT_LEN:
            answers.fail(
                self,
                ProtocolError(
                    f"the model gives {first.size} outputs; MnistProt carries {OUTPUT_LEN}"
                ),
            )
            return
        try:
            data = encode_response(first.astype(np.float32, copy=False), result.compute_ms)
        except Exception as exc:  # outputs that are not numbers, say
            self.set_exception(exc)
            return
        metrics = answers.agent.metrics
        metrics.answered["mnistprot"].inc()
        metrics.latency_ms["mnistprot"].append(result.queue_ms + result.compute_ms)
        self.data = data
        answers.flush()

    def set_exception(self, exc: BaseException) -> None:
        if not isinstance(exc, EdgewireError):
            log.error("a MnistProt request failed", exc_info=exc)
            exc = ModelError(f"the agent failed: {type(exc).__name__}")
        self.answers.fail(self, exc)
