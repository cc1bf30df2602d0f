"""The Python async client of the native wire protocol (inference, ping, hello).

    async with await Client.connect("127.0.0.1", 7700, token=None) as client:
        result = await client.infer("mnist", {"input_0": x})
        result.outputs["output_0"], result.compute_ms

An agent with a token answers inference only on a connection whose HELLO
carried it; ``connect`` sends that HELLO when it has a token (given, or
``EDGEWIRE_TOKEN``).

Requests are pipelined: many coroutines may call :meth:`Client.infer` on one
connection at once; answers are matched by request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ssl import SSLContext
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    EdgewireError,
    ProtocolError,
    RemoteError,
    error_for_code,
)
from edgewire.wire.frames import MsgType
from edgewire.wire.messages import decode_message
from edgewire.wire.stream import FramedStream, open_framed


@dataclass(frozen=True, slots=True)
class InferResponse:
    outputs: dict[str, npt.NDArray[Any]]
    model: str
    version: int | str
    queue_ms: float
    compute_ms: float
    batch_size: int
    #: For a split head: where the time went (head, encode, transfer, tail, decode, in
    #: ms) and what crossed (bytes_up, bytes_down); ``fallback`` when a local model answered.
    split: dict[str, Any] | None = None


#: Where ``Client.connect`` finds the agent's token when none is given.
TOKEN_ENV = "EDGEWIRE_TOKEN"  # noqa: S105 -- the name of a variable, not a secret
#: Requests one connection has in flight at once; the agent's default limit
#: (``max_inflight_per_connection``). More wait here instead of breaking the link.
MAX_IN_FLIGHT = 64


#: A CA file (or an agent's self-signed certificate): with it set, clients speak TLS to
#: agents started with --tls-cert (HTTP too, in the CLI), trusting that file.
TLS_CA_ENV = "EDGEWIRE_TLS_CA"


def tls_from_env() -> SSLContext | None:
    """The TLS context ``EDGEWIRE_TLS_CA`` asks for, or None (plain connections)."""
    import ssl

    cafile = os.environ.get(TLS_CA_ENV)
    if not cafile:
        return None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{TLS_CA_ENV}={cafile!r} is not a readable CA file: {exc}") from None


class Client:
    """A pipelined native-protocol client: many requests in flight on one connection."""

    def __init__(
        self,
        stream: FramedStream,
        *,
        timeout: float = 30.0,
        max_in_flight: int = MAX_IN_FLIGHT,
        token: str | None = None,
    ) -> None:
        self._stream = stream
        self._token = token
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[MsgType, dict[str, Any], list[Any]]]] = {}
        self._reader = asyncio.create_task(self._read_loop())
        self._closed = False

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        max_in_flight: int = MAX_IN_FLIGHT,
        token: str | None = None,
        ssl: SSLContext | bool | None = None,
    ) -> Client:
        """Connect; with a token (default: ``EDGEWIRE_TOKEN``), say hello with it at once,
        so that a wrong one fails here as an AuthError rather than at the first request.
        ``ssl``: to an agent run with ``--tls-cert``, a context that trusts its
        certificate (True: the default context, for a certificate of a public CA)."""
        token = token or os.environ.get(TOKEN_ENV) or None
        if ssl is None:
            ssl = tls_from_env()
        stream = await open_framed(host, port, timeout=timeout, ssl=ssl)
        client = cls(stream, timeout=timeout, max_in_flight=max_in_flight, token=token)
        if token:
            try:
                await client.hello()
            except BaseException:
                await client.close()
                raise
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """Whether requests can still be sent (not closed, the agent did not hang up)."""
        return not self._closed and not self._reader.done()

    async def close(self) -> None:
        self._closed = True
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self._stream.close()
        self._fail_all(ConnectError("client closed"))

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self._stream.read_frame(None)
                if frame is None:
                    raise ConnectError("the agent closed the connection")
                message = decode_message(frame.payload, self._stream.limits)
                future = self._pending.pop(frame.request_id, None)
                if future is not None and not future.done():
                    future.set_result((frame.type, message.meta, message.tensors))
                elif frame.type is MsgType.ERROR and frame.request_id == 0:
                    raise _remote(message.meta)
        except EdgewireError as exc:
            self._fail_all(exc)

    def _fail_all(self, exc: EdgewireError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)
        self._pending.clear()

    async def request(
        self, msg_type: MsgType, meta: dict[str, Any], tensors: Sequence[npt.NDArray[Any]] = ()
    ) -> tuple[MsgType, dict[str, Any], list[npt.NDArray[Any]]]:
        async with self._slots:
            return await self._request(msg_type, meta, tensors)

    async def _request(
        self, msg_type: MsgType, meta: dict[str, Any], tensors: Sequence[npt.NDArray[Any]]
    ) -> tuple[MsgType, dict[str, Any], list[npt.NDArray[Any]]]:
        if not self.is_open:
            raise ConnectError("the connection is closed")
        request_id = next(self._ids) % 2**32 or next(self._ids)
        future: asyncio.Future[tuple[MsgType, dict[str, Any], list[Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[request_id] = future
        try:
            self._stream.send(msg_type, meta, list(tensors), request_id=request_id)
            await self._stream.drain(self._timeout)
            async with asyncio.timeout(self._timeout):
                kind, answer, out = await future
        except TimeoutError as exc:
            raise ConnectError(f"no answer within {self._timeout:g} s") from exc
        finally:
            self._pending.pop(request_id, None)
        if kind is MsgType.ERROR:
            raise _remote(answer)
        return kind, answer, out

    async def ping(self) -> None:
        await self.request(MsgType.PING, {})

    async def hello(self) -> dict[str, Any]:
        """The agent's capabilities; the HELLO carries the client's token, if it has one."""
        meta: dict[str, Any] = {"client": "edgewire-python"}
        if self._token:
            meta["token"] = self._token
        return (await self.request(MsgType.HELLO, meta))[1]

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
        *,
        version: str | int | None = None,
        deadline_ms: float | None = None,
        fallback: str | None = None,
        coder: str | None = None,
    ) -> InferResponse:
        """Run ``inputs`` through ``model``. For a split head, ``fallback="local"`` lets the
        device answer with its full model when the tail server is unreachable, and
        ``coder`` overrides the head's bottleneck coder (raw, zstd, rans)."""
        meta: dict[str, Any] = {"model": model}
        if isinstance(inputs, Mapping):
            meta["inputs"] = list(inputs)
            tensors = [np.asarray(v) for v in inputs.values()]
        else:
            tensors = [np.asarray(v) for v in inputs]
        if version is not None:
            meta["version"] = version
        if deadline_ms is not None:
            meta["deadline_ms"] = deadline_ms
        if fallback is not None:
            meta["fallback"] = fallback
        if coder is not None:
            meta["coder"] = coder
        kind, answer, out = await self.request(MsgType.INFER_REQUEST, meta, tensors)
        if kind is not MsgType.INFER_RESPONSE:
            raise ProtocolError(f"expected INFER_RESPONSE, got {kind.name}")
        names = answer.get("outputs") or [f"output_{i}" for i in range(len(out))]
        if len(names) != len(out):
            raise ProtocolError(f"{len(out)} output tensors for {len(names)} names")
        return InferResponse(
            outputs=dict(zip(names, out, strict=True)),
            model=str(answer.get("model", model)),
            version=answer.get("version", ""),
            queue_ms=float(answer.get("queue_ms", 0.0)),
            compute_ms=float(answer.get("compute_ms", 0.0)),
            batch_size=int(answer.get("batch_size", 0)),
            split=answer["split"] if isinstance(answer.get("split"), dict) else None,
        )


def _remote(meta: dict[str, Any]) -> EdgewireError:
    """The error an ERROR frame stands for: an AuthError for a missing or wrong
    token (the user's to fix here), else a RemoteError with the agent's code."""
    code = str(meta.get("code", "internal"))
    text = str(meta.get("message", "remote error"))
    if code == AuthError.code:
        return AuthError(text)
    return RemoteError(f"{text} [{error_for_code(code).code}]", remote_code=code)
