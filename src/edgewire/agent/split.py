"""Split computing on the native port: the device runs the head, the server the tail.

Device side (:meth:`SplitRuntime.infer`): an INFER_REQUEST for a model whose
metadata names a tail (see :mod:`edgewire.split.route`) runs the head through
this agent's batcher, codes the uint8 bottleneck, sends it to the tail's server
as a SPLIT_TAIL_REQUEST on one pipelined connection per server, and answers
with the tail's outputs and a timing breakdown. When the server cannot be
reached the answer is a ``tail_unreachable`` error, or, when the request asks
for ``fallback: local`` and the head names a full model served here, that
model's answer.

Server side (:meth:`SplitRuntime.serve_tail`): a SPLIT_TAIL_REQUEST is decoded
(the coder and shape travel in its meta, the prior in the tail's metadata) and
run through the tail's batcher, so tails of many devices batch together. An
image coder (``png``, ``jpeg``, ``webp``) or ``raw`` sent to a float model is
full offload: the pixels are scaled to 0..1 as training scaled them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from edgewire.client.native import Client
from edgewire.errors import (
    AuthError,
    ConnectError,
    DataError,
    EdgewireError,
    ProtocolError,
    RemoteError,
    TailUnreachable,
    error_for_code,
)
from edgewire.split import codec
from edgewire.split.codec import Prior
from edgewire.split.route import Route, prior_of, route_of
from edgewire.wire.frames import HEADER_SIZE, MsgType
from edgewire.wire.messages import Message, encode_message

if TYPE_CHECKING:
    from edgewire.agent.serving import Serving
    from edgewire.config import AgentConfig
    from edgewire.serve.model import ModelVersion

log = logging.getLogger(__name__)
#: Parsed priors kept, by (model, version).
_PRIOR_CACHE = 64


@dataclass(frozen=True, slots=True)
class SplitAnswer:
    outputs: dict[str, npt.NDArray[Any]]
    version: int | str
    #: Where the time went (ms) and what crossed (bytes), for the client to see.
    split: dict[str, Any]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def frame_bytes(meta: dict[str, Any], tensors: Sequence[npt.NDArray[Any]]) -> int:
    """Bytes of one native frame carrying ``meta`` and ``tensors`` (header included)."""
    return HEADER_SIZE + len(encode_message(meta, list(tensors)))


class SplitRuntime:
    """Both ends of split inference for one agent: tail connections and parsed priors."""

    def __init__(self, config: AgentConfig, serving: Serving) -> None:
        self._serving = serving
        self._token = config.tail_token or config.token
        self._timeout = config.tail_timeout
        self._clients: dict[tuple[str, int], Client] = {}
        self._connecting: dict[tuple[str, int], asyncio.Lock] = {}
        self._priors: dict[tuple[str, int | str], Prior | None] = {}

    # -- both ends -------------------------------------------------------------------

    def route(self, model: str) -> Route | None:
        """The tail route of ``model`` if it is a served split head, else None."""
        try:
            version = self._serving.loaded(model).version
        except EdgewireError:
            return None  # not served: the ordinary path answers model_not_found
        return route_of(version.metadata)

    def _prior(self, version: ModelVersion) -> Prior | None:
        key = (version.name, version.version)
        if key not in self._priors:
            if len(self._priors) >= _PRIOR_CACHE:
                self._priors.clear()
            self._priors[key] = prior_of(version.metadata)
        return self._priors[key]

    # -- device side -----------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
        route: Route,
        *,
        fallback: bool = False,
        coder: str | None = None,
        deadline_ms: float | None = None,
    ) -> SplitAnswer:
        started = time.perf_counter()
        head = await self._serving.infer(model, inputs, deadline_ms=deadline_ms)
        head_done = time.perf_counter()
        codes = next(iter(head.result.outputs.values()))
        if codes.dtype != np.uint8 or codes.ndim != 4:
            raise DataError(
                f"split head {model!r} gave {codes.dtype}{list(codes.shape)}, not uint8 codes"
            )
        use = coder or route.coder
        data = codec.encode(codes, use, self._prior(head.version))
        encoded = time.perf_counter()
        meta = {"model": route.tail, "coder": use, "shape": list(codes.shape)}
        payload = [np.frombuffer(data, dtype=np.uint8)]
        try:
            client = await self._client(route)
            kind, answer, out = await client.request(MsgType.SPLIT_TAIL_REQUEST, meta, payload)
        except AuthError as exc:
            await self._drop(route)
            raise AuthError(
                f"tail server {route.address} refused this agent's token ({exc.message}); "
                "set tail_token (EDGEWIRE_TAIL_TOKEN) to the server's token"
            ) from None
        except RemoteError as exc:
            # The tail server's own refusal (unknown tail, bad data): its code, its words.
            text = exc.message.removesuffix(f" [{exc.remote_code}]")
            raise error_for_code(exc.remote_code)(f"tail server {route.address}: {text}") from None
        except ConnectError as exc:
            await self._drop(route)
            return await self._fallback(
                model, inputs, route, exc, fallback=fallback, started=started
            )
        back = time.perf_counter()
        if kind is not MsgType.SPLIT_TAIL_RESPONSE:
            raise ProtocolError(f"the tail server answered {kind.name}, not SPLIT_TAIL_RESPONSE")
        names = answer.get("outputs")
        if not isinstance(names, list) or len(names) != len(out):
            raise ProtocolError("the tail server's answer does not name its outputs")
        tail_ms = _number(answer, "compute_ms")
        tail_queue_ms = _number(answer, "queue_ms")
        decode_ms = _number(answer, "decode_ms")
        round_trip_ms = _ms(back - encoded)
        split = {
            "coder": use,
            "head_ms": round(head.result.compute_ms, 3),
            "head_queue_ms": round(head.result.queue_ms, 3),
            "encode_ms": _ms(encoded - head_done),
            "transfer_ms": round(max(round_trip_ms - tail_ms - tail_queue_ms - decode_ms, 0.0), 3),
            "tail_ms": tail_ms,
            "tail_queue_ms": tail_queue_ms,
            "decode_ms": decode_ms,
            "total_ms": _ms(time.perf_counter() - started),
            "head_batch_size": head.result.batch_size,
            "tail_batch_size": answer.get("batch_size"),
            "bytes_up": frame_bytes(meta, payload),
            "bytes_down": frame_bytes(answer, out),
            "tail_version": answer.get("version"),
        }
        return SplitAnswer(
            outputs=dict(zip(map(str, names), out, strict=True)),
            version=head.version.version,
            split=split,
        )

    async def _fallback(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]],
        route: Route,
        exc: ConnectError,
        *,
        fallback: bool,
        started: float,
    ) -> SplitAnswer:
        reason = f"the tail server {route.address} is unreachable ({exc.message})"
        if not fallback:
            raise TailUnreachable(f"{reason}; send fallback=local to run a full model here")
        if route.fallback is None:
            raise TailUnreachable(f"{reason}, and split head {model!r} names no local fallback")
        try:
            served = await self._serving.infer(route.fallback, inputs)
        except EdgewireError as local:
            raise TailUnreachable(
                f"{reason}; the local fallback failed too: {local.message}"
            ) from None
        log.warning("%s: answered with the local model %r", reason, route.fallback)
        return SplitAnswer(
            outputs=dict(served.result.outputs),
            version=served.version.version,
            split={
                "fallback": route.fallback,
                "reason": reason,
                "local_ms": round(served.result.compute_ms, 3),
                "total_ms": _ms(time.perf_counter() - started),
            },
        )

    async def _client(self, route: Route) -> Client:
        key = (route.host, route.port)
        client = self._clients.get(key)
        if client is not None and client.is_open:
            return client
        lock = self._connecting.setdefault(key, asyncio.Lock())
        async with lock:
            client = self._clients.get(key)
            if client is None or not client.is_open:
                client = await Client.connect(
                    route.host, route.port, timeout=self._timeout, token=self._token
                )
                self._clients[key] = client
        return client

    async def _drop(self, route: Route) -> None:
        client = self._clients.pop((route.host, route.port), None)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    # -- server side -----------------------------------------------------------------

    async def serve_tail(self, message: Message) -> tuple[dict[str, Any], list[npt.NDArray[Any]]]:
        """Decode one SPLIT_TAIL_REQUEST and run its tail; the answer's meta and tensors."""
        meta = message.meta
        model = meta.get("model")
        if not isinstance(model, str):
            raise ProtocolError(f"SPLIT_TAIL_REQUEST needs a string 'model', got {model!r}")
        coder = codec.check_coder(meta.get("coder"))
        shape = codec.check_shape(meta.get("shape"))
        if len(message.tensors) != 1:
            raise DataError(
                f"SPLIT_TAIL_REQUEST carries one tensor of coded bytes, got {len(message.tensors)}"
            )
        data = message.tensors[0]
        if data.dtype != np.uint8 or data.ndim != 1:
            raise DataError(
                f"the coded bytes must be a 1-D uint8 tensor, got {data.dtype}{list(data.shape)}"
            )
        loaded = self._serving.loaded(model)
        if len(loaded.inputs) != 1:
            raise DataError(f"model {model!r} takes {len(loaded.inputs)} inputs; a tail takes one")
        start = time.perf_counter()
        codes = codec.decode(data.data, shape, coder, self._prior(loaded.version))
        x = _as_input(codes, loaded.inputs[0].dtype, model)
        decode_ms = _ms(time.perf_counter() - start)
        served = await self._serving.infer(model, [x])
        result = served.result
        answer = {
            "model": model,
            "version": served.version.version,
            "outputs": list(result.outputs),
            "queue_ms": round(result.queue_ms, 3),
            "compute_ms": round(result.compute_ms, 3),
            "decode_ms": decode_ms,
            "batch_size": result.batch_size,
        }
        return answer, list(result.outputs.values())


def _as_input(codes: npt.NDArray[np.uint8], dtype: str, model: str) -> npt.NDArray[Any]:
    """uint8 codes as the tail's input: as they are, or pixels scaled to 0..1 (offload)."""
    if dtype == "uint8":
        return codes
    if dtype in ("float32", "float16"):
        return (codes.astype(np.float32) / np.float32(255.0)).astype(dtype)
    raise DataError(f"model {model!r} takes {dtype}; a tail takes uint8 codes or float pixels")


def _number(meta: Mapping[str, Any], key: str) -> float:
    value = meta.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"the tail server's {key!r} is not a number: {value!r}")
    return float(value)
