"""Connections on the native wire port: hello, ping, and handing off to features."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from edgewire import __version__
from edgewire.agent.context import Handler, PortContext
from edgewire.errors import AuthError, ConnectError, EdgewireError, PeerTimeout, ProtocolError
from edgewire.serve.batcher import InferResult
from edgewire.split.codec import TENSOR_CODERS
from edgewire.wire.frames import VERSION, MsgType, encode_frame
from edgewire.wire.messages import Message, encode_message_json
from edgewire.wire.stream import FramedStream

log = logging.getLogger(__name__)


def handler(ctx: PortContext) -> Handler:
    """The native port's connection handler."""

    # A partial, not a wrapping coroutine: one frame less held by every open connection.
    return functools.partial(handle_native, ctx)


async def handle_native(
    agent: PortContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    cfg = agent.config
    stream = FramedStream(
        reader, writer, max_payload=cfg.max_frame_bytes, budget=agent.frame_budget
    )
    inflight: set[asyncio.Task[None]] = set()
    # INFER_REQUESTs answered from the batcher's callback (no task, no future each).
    answers = _Answers(agent, stream)
    errored = False
    # With a token configured, a connection is trusted once its HELLO carried it.
    authenticated = not cfg.token
    this = asyncio.current_task()
    try:
        while not agent.stopping.is_set():
            # Waiting for a frame, the connection is idle: a stopping agent cancels it here
            # instead of waiting out its drain time (see Agent.stop).
            if this is not None:
                agent.idle_readers.add(this)
            try:
                got = await stream.read_message(cfg.idle_timeout, frame_timeout=cfg.frame_timeout)
            except asyncio.CancelledError:
                if this is None or not agent.stopping.is_set():
                    raise
                this.uncancel()
                return
            finally:
                agent.idle_readers.discard(this)
            if got is None:
                return
            frame, message = got
            agent.metrics.frames[frame.type].inc()
            if frame.type is MsgType.HELLO:
                authenticated = authenticated or hello_token_ok(cfg.token, message.meta)
                stream.send(
                    MsgType.CAPABILITIES,
                    capabilities(agent, authenticated=authenticated),
                    request_id=frame.request_id,
                )
            elif frame.type is MsgType.PING:
                stream.send(MsgType.PONG, message.meta, request_id=frame.request_id)
            elif frame.type in _REQUESTS:
                if len(inflight) + answers.pending >= cfg.max_inflight_per_connection:
                    raise ProtocolError(
                        f"more than {cfg.max_inflight_per_connection} requests in flight"
                    )
                if not authenticated:
                    # One refused request, not a broken stream: the connection stays.
                    agent.metrics.infer_errors_total.labels("native", AuthError.code).inc()
                    stream.send_error(
                        AuthError.code, _needs_token(frame.type.name), request_id=frame.request_id
                    )
                    await stream.drain(cfg.idle_timeout)
                    continue
                if frame.type is MsgType.INFER_REQUEST and answers.submit(
                    frame.request_id, message
                ):
                    # Answered from the batcher's callback. A peer that stopped reading
                    # its answers is not read from until it reads them.
                    if stream.writer.transport.get_write_buffer_size() > _WRITE_HIGH:
                        await stream.drain(cfg.idle_timeout)
                    continue
                answer = _REQUESTS[frame.type]
                task = asyncio.create_task(answer(agent, stream, frame.request_id, message))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                continue  # the request's task writes and drains its answer
            elif frame.type is MsgType.TRAIN_BEGIN:
                if not authenticated:
                    raise AuthError(_needs_token("TRAIN_BEGIN"))
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
        errored = True
    finally:
        try:
            if inflight or answers.pending:
                await _wait_answered(inflight, answers, cfg.drain_timeout)
        finally:  # a stopping agent may cancel the wait: the stream closes all the same
            answers.closed = True  # still queued: dropped from the batcher
            await (stream.close_after_error() if errored else stream.close())


async def _wait_answered(
    inflight: set[asyncio.Task[None]], answers: _Answers, timeout: float
) -> None:
    """Wait (at most ``timeout`` s) until every request read has been answered."""
    waits: set[asyncio.Future[Any]] = set(inflight)
    if answers.pending:
        answers.all_sent = asyncio.get_running_loop().create_future()
        waits.add(answers.all_sent)
    await asyncio.wait(waits, timeout=timeout)


#: Answer bytes queued to a peer past which the connection reads no more requests.
_WRITE_HIGH = 256 * 1024


class _Answers:
    """A connection's INFER_REQUESTs answered from the batcher's callbacks.

    :meth:`submit` checks a request and queues it with a :class:`_Answer` as its
    reply; the batcher calls that on the event loop, which writes the answer
    frame. Requests that need more (a split model, more rows than one batch) are
    left to the awaiting path.
    """

    __slots__ = ("agent", "all_sent", "closed", "pending", "stream")

    def __init__(self, agent: PortContext, stream: FramedStream) -> None:
        self.agent = agent
        self.stream = stream
        self.pending = 0
        self.closed = False
        self.all_sent: asyncio.Future[None] | None = None

    def submit(self, request_id: int, message: Message) -> bool:
        """Queue one request (or answer its refusal); False: take the awaiting path."""
        agent = self.agent
        try:
            model, inputs, deadline_ms = _infer_args(message.meta, message.tensors)
            if agent.split.route(model) is not None:
                return False
            reply = _Answer(self, request_id, model)
            version = agent.serving.submit_nowait(model, inputs, reply, deadline_ms=deadline_ms)
            if version is None:
                return False
        except EdgewireError as exc:
            agent.metrics.infer_errors_total.labels("native", exc.code).inc()
            self.stream.send_error(exc.code, exc.message, request_id=request_id)
            return True
        except Exception as exc:  # a bug, not the peer's fault: answer it, keep the connection
            log.exception("native request %d failed", request_id)
            agent.metrics.infer_errors_total.labels("native", "internal").inc()
            self.stream.send_error(
                "internal", f"the agent failed: {type(exc).__name__}", request_id=request_id
            )
            return True
        reply.version = version.version
        self.pending += 1
        return True

    def settle(self) -> None:
        self.pending -= 1
        if not self.pending and self.all_sent is not None and not self.all_sent.done():
            self.all_sent.set_result(None)


class _Answer:
    """One queued request's reply (a ``batcher.Reply``): writes the answer, or its error."""

    __slots__ = ("answers", "model", "request_id", "sent", "version")

    def __init__(self, answers: _Answers, request_id: int, model: str) -> None:
        self.answers = answers
        self.request_id = request_id
        self.model = model
        self.version = 0
        self.sent = False

    def done(self) -> bool:
        return self.sent or self.answers.closed

    def set_result(self, result: InferResult) -> None:
        try:  # an output the wire cannot carry (say, strings) is answered as its error
            data = encode_infer_response(
                self.model, self.version, result, request_id=self.request_id
            )
        except Exception as exc:
            self.set_exception(exc)
            return
        self.sent = True
        answers = self.answers
        metrics = answers.agent.metrics
        metrics.latency_ms["native"].append(result.queue_ms + result.compute_ms)
        metrics.answered["native"].inc()
        answers.stream.writer.write(data)
        answers.settle()

    def set_exception(self, exc: BaseException) -> None:
        self.sent = True
        answers = self.answers
        if isinstance(exc, EdgewireError):
            code, text = exc.code, exc.message
        else:  # a bug, not the peer's fault
            log.error("native request %d failed", self.request_id, exc_info=exc)
            code, text = "internal", f"the agent failed: {type(exc).__name__}"
        answers.agent.metrics.infer_errors_total.labels("native", code).inc()
        answers.stream.send_error(code, text, request_id=self.request_id)
        answers.settle()


def _infer_args(
    meta: dict[str, Any], tensors: list[Any]
) -> tuple[str, dict[str, Any] | list[Any], float | None]:
    """An INFER_REQUEST's model name, inputs (named or in order) and deadline."""
    model = meta.get("model")
    if not isinstance(model, str):
        raise ProtocolError(f"INFER_REQUEST needs a string 'model', got {model!r}")
    names = meta.get("inputs")
    inputs: dict[str, Any] | list[Any] = tensors
    if names is not None:
        if (
            not isinstance(names, list)
            or len(names) != len(tensors)
            or not all(isinstance(n, str) for n in names)
        ):
            raise ProtocolError("'inputs' must name each tensor of the request")
        inputs = dict(zip(names, tensors, strict=True))
    deadline = meta.get("deadline_ms")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline < 0
    ):
        raise ProtocolError(f"'deadline_ms' must be a non-negative number, got {deadline!r}")
    return model, inputs, float(deadline) if deadline is not None else None


async def _infer(
    agent: PortContext, stream: FramedStream, request_id: int, message: Message
) -> None:
    """One inference request; its errors go back to the client, the connection stays."""
    meta = message.meta
    async with _answering(agent, stream, request_id):
        model, inputs, deadline_ms = _infer_args(meta, message.tensors)
        route = agent.split.route(model)
        if route is not None:
            answer = await agent.split.infer(
                model, inputs, route, deadline_ms=deadline_ms, **_split_options(meta)
            )
            stream.send(
                MsgType.INFER_RESPONSE,
                {
                    "model": model,
                    "version": answer.version,
                    "outputs": list(answer.outputs),
                    "split": answer.split,
                },
                list(answer.outputs.values()),
                request_id=request_id,
            )
            return
        served = await agent.serving.infer(model, inputs, deadline_ms=deadline_ms)
        result = served.result
        agent.metrics.latency_ms["native"].append(result.queue_ms + result.compute_ms)
        stream.writer.write(
            encode_infer_response(model, served.version.version, result, request_id=request_id)
        )


def encode_infer_response(
    model: str, version: int, result: InferResult, *, request_id: int
) -> bytes:
    """The INFER_RESPONSE frame for ``result``: meta (model, version, output names,
    queue/compute time, batch size) and the output tensors."""
    meta = _RESPONSE_META.get((model, version, tuple(result.outputs)))
    if meta is None:
        meta = _response_meta(model, version, tuple(result.outputs))
    payload = encode_message_json(
        b'%s,"queue_ms":%r,"compute_ms":%r,"batch_size":%d}'
        % (meta, round(result.queue_ms, 3), round(result.compute_ms, 3), result.batch_size),
        list(result.outputs.values()),
    )
    return encode_frame(MsgType.INFER_RESPONSE, payload, request_id=request_id)


#: The start of an INFER_RESPONSE's meta by (model, version, output names), encoded once.
_RESPONSE_META: dict[tuple[str, int, tuple[str, ...]], bytes] = {}


def _response_meta(model: str, version: int, outputs: tuple[str, ...]) -> bytes:
    head = json.dumps(
        {"model": model, "version": version, "outputs": list(outputs)}, separators=(",", ":")
    ).encode()[:-1]
    if len(_RESPONSE_META) >= 256:  # models come and go; the cache stays small
        _RESPONSE_META.clear()
    _RESPONSE_META[(model, version, outputs)] = head
    return head


def _split_options(meta: dict[str, Any]) -> dict[str, Any]:
    """A split head's per-request options: ``fallback: "local"`` and a ``coder``."""
    fallback = meta.get("fallback")
    if fallback not in (None, "local", "none"):
        raise ProtocolError(f"'fallback' must be 'local' or 'none', got {fallback!r}")
    coder = meta.get("coder")
    if coder is not None and coder not in TENSOR_CODERS:
        raise ProtocolError(f"'coder' must be one of {', '.join(TENSOR_CODERS)}, got {coder!r}")
    return {"fallback": fallback == "local", "coder": coder}


async def _tail(
    agent: PortContext, stream: FramedStream, request_id: int, message: Message
) -> None:
    """One SPLIT_TAIL_REQUEST from a device's head; answered like an inference request."""
    async with _answering(agent, stream, request_id):
        meta, tensors = await agent.split.serve_tail(message)
        stream.send(MsgType.SPLIT_TAIL_RESPONSE, meta, tensors, request_id=request_id)


@contextlib.asynccontextmanager
async def _answering(
    agent: PortContext, stream: FramedStream, request_id: int
) -> AsyncIterator[None]:
    """Count the answer sent inside, or send the error instead; then drain."""
    try:
        yield
        agent.metrics.answered["native"].inc()
    except EdgewireError as exc:
        agent.metrics.infer_errors_total.labels("native", exc.code).inc()
        stream.send_error(exc.code, exc.message, request_id=request_id)
    except Exception as exc:  # a bug, not the peer's fault: answer, log, keep the connection
        log.exception("native request %d failed", request_id)
        agent.metrics.infer_errors_total.labels("native", "internal").inc()
        stream.send_error(
            "internal", f"the agent failed: {type(exc).__name__}", request_id=request_id
        )
    with contextlib.suppress(EdgewireError):
        await stream.drain(agent.config.idle_timeout)


#: Requests answered in a task of their own (pipelined), by message type.
_REQUESTS: dict[
    MsgType, Callable[[PortContext, FramedStream, int, Message], Coroutine[Any, Any, None]]
] = {
    MsgType.INFER_REQUEST: _infer,
    MsgType.SPLIT_TAIL_REQUEST: _tail,
}


def hello_token_ok(token: str | None, meta: dict[str, Any]) -> bool:
    """Whether a HELLO's ``token`` opens the connection: True if it matches the
    agent's, False if it brought none; a wrong one is an AuthError (the
    connection closes)."""
    given = meta.get("token")
    if not token or given is None:
        return not token
    if not isinstance(given, str) or not hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), token.encode()
    ):
        raise AuthError("wrong token in HELLO; check --token or EDGEWIRE_TOKEN")
    return True


def _needs_token(what: str) -> str:
    return (
        f"{what} needs the agent's token: send it in the HELLO's meta "
        '({"token": "..."}) first, e.g. with --token or EDGEWIRE_TOKEN'
    )


def capabilities(agent: PortContext, *, authenticated: bool = True) -> dict[str, object]:
    cfg = agent.config
    return {
        "agent": "edgewire",
        "version": __version__,
        "protocol": VERSION,
        "max_frame_bytes": cfg.max_frame_bytes,
        "max_train_window": cfg.max_train_window,
        "features": sorted(agent.features),
        # Whether inference and training need the token, and whether this connection has it.
        "token_required": bool(cfg.token),
        "authenticated": authenticated,
        "models": [_model_info(agent, name) for name in agent.serving.names()],
    }


def _model_info(agent: PortContext, name: str) -> dict[str, object]:
    version = agent.serving.loaded(name).version
    return {
        "name": name,
        "version": version.version,
        "inputs": [t.to_dict() for t in version.inputs],
        "outputs": [t.to_dict() for t in version.outputs],
        "labels": list(version.labels) if version.labels else None,
        "preprocessing": version.preprocessing,
    }
