"""A load generator for the agent: N concurrent clients over native, HTTP or an opt-in port.

Clients are spread over several worker processes (each an asyncio loop, uvloop
when installed) so the generator is not the bottleneck. Requests are encoded
once per worker; answers are checked by their header (frame type, 96 bytes,
HTTP status) without decoding the payload, to keep client-side cost small.

``one_shot`` opens a connection per request, like the seed's stress tool.

Each protocol is a :class:`LoadClient` (the request it sends, how it reads an
answer): native and HTTP here, and each opt-in port whose
:class:`~edgewire.ports.PortSpec` names one as its ``load_client``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edgewire.errors import ConfigError
from edgewire.ports import PORTS, load_attr

#: The opt-in ports with a load client: name -> ``module:attribute`` of its LoadClient.
_PORT_CLIENTS = {spec.name: spec.load_client for spec in PORTS if spec.load_client}
PROTOCOLS = ("native", "http", *_PORT_CLIENTS)


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    host: str
    port: int
    protocol: str
    model: str = "mnist"
    clients: int = 100
    requests: int | None = None  # per client
    duration: float | None = None  # seconds
    one_shot: bool = False
    processes: int = 0  # 0: one per core
    input_shape: tuple[int, ...] = (1, 784)
    #: HTTP bodies: "binary" (KServe v2 binary tensor extension), "json" (KServe v2
    #: JSON) or "litserve" ({"input": [...]} to /predict, for comparisons).
    http_format: str = "binary"
    timeout: float = 60.0
    #: The agent's token (native: sent in a HELLO on each connection).
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}"
            )
        if (self.requests is None) == (self.duration is None):
            raise ConfigError("give exactly one of --requests and --duration")
        if self.http_format not in ("binary", "json", "litserve"):
            raise ConfigError(
                f"http_format must be binary, json or litserve, got {self.http_format!r}"
            )
        if self.clients < 1:
            raise ConfigError(f"clients must be at least 1, got {self.clients!r}")


@dataclass(slots=True)
class LoadResult:
    clients: int
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    error_kinds: dict[str, int] = field(default_factory=dict)
    #: CPU seconds the client processes used (to tell client cost from server cost).
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return (
            float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")
        )

    def summary(self) -> dict[str, Any]:
        return {
            "clients": self.clients,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p90_ms": round(self.percentile(90), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(float(self.latencies_ms.max()), 3) if self.latencies_ms.size else None,
            "error_kinds": self.error_kinds,
        }


# --- requests, encoded once per worker -------------------------------------


def _digit(shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(0)
    return rng.random(shape, dtype=np.float32)


def _native_request(spec: LoadSpec) -> bytes:
    from edgewire.wire.frames import MsgType, encode_frame
    from edgewire.wire.messages import encode_message

    payload = encode_message({"model": spec.model}, [_digit(spec.input_shape)])
    return encode_frame(MsgType.INFER_REQUEST, payload, request_id=1)


def _native_hello(spec: LoadSpec) -> bytes | None:
    """A HELLO carrying the token, sent once per connection; none without a token."""
    if not spec.token:
        return None
    from edgewire.wire.frames import MsgType, encode_frame
    from edgewire.wire.messages import encode_message

    payload = encode_message({"client": "edgewire-bench", "token": spec.token}, [])
    return encode_frame(MsgType.HELLO, payload, request_id=0)


def _mnistprot_request(spec: LoadSpec) -> bytes:
    from edgewire.wire.mnistprot import encode_request

    return encode_request(_digit((784,)))


def _http_request(spec: LoadSpec) -> bytes:
    x = _digit(spec.input_shape)
    path = f"/v2/models/{spec.model}/infer"
    extra = ""
    if spec.http_format == "binary":
        head = json.dumps({
            "inputs": [{"name": "input_0", "shape": list(x.shape), "datatype": "FP32",
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "output_0", "parameters": {"binary_data": True}}],
        }, separators=(",", ":")).encode()  # fmt: skip
        body = head + x.tobytes()
        extra = f"Inference-Header-Content-Length: {len(head)}\r\n"
        content_type = "application/octet-stream"
    elif spec.http_format == "json":
        body = json.dumps({
            "inputs": [{"name": "input_0", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}],
        }, separators=(",", ":")).encode()  # fmt: skip
        content_type = "application/json"
    else:
        path = "/predict"
        body = json.dumps({"input": x.reshape(-1).tolist()}, separators=(",", ":")).encode()
        content_type = "application/json"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {spec.host}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


_HEADER = struct.Struct("<2sBBHHIII")


async def _read_native(reader: asyncio.StreamReader) -> str | None:
    header = await reader.readexactly(_HEADER.size)
    _, _, msg_type, _, _, _, length, _ = _HEADER.unpack(header)
    await reader.readexactly(length)
    return None if msg_type in (17, 2) else f"frame type {msg_type}"


async def _read_mnistprot(reader: asyncio.StreamReader) -> str | None:
    await reader.readexactly(96)
    return None


async def _read_http(reader: asyncio.StreamReader) -> str | None:
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return None if status == b"200" else f"HTTP {status.decode(errors='replace')}"


@dataclass(frozen=True, kw_only=True)
class LoadClient:
    """How one protocol is loaded: the request bytes, and a reader of one answer."""

    #: The bytes of one request (encoded once per worker).
    request: Callable[[LoadSpec], bytes]
    #: Reads one answer; None if it is a success, else a short reason.
    read: Callable[[asyncio.StreamReader], Awaitable[str | None]]
    #: The input shape the protocol always carries, if fixed (else asked from the agent).
    input_shape: tuple[int, ...] | None = None
    #: Bytes sent once on each new connection before the requests (a HELLO with the
    #: token), answered by one message that ``read`` checks like an answer.
    greeting: Callable[[LoadSpec], bytes | None] | None = None


NATIVE_CLIENT = LoadClient(request=_native_request, read=_read_native, greeting=_native_hello)
HTTP_CLIENT = LoadClient(request=_http_request, read=_read_http)
#: The ESP8266 MnistProt port: 784 floats in, 96 bytes back (see ``ports.PORTS``).
MNISTPROT_CLIENT = LoadClient(
    request=_mnistprot_request, read=_read_mnistprot, input_shape=(1, 784)
)


def load_client(protocol: str) -> LoadClient:
    """The client for ``protocol`` (one of :data:`PROTOCOLS`)."""
    if protocol == "native":
        return NATIVE_CLIENT
    if protocol == "http":
        return HTTP_CLIENT
    if protocol not in _PORT_CLIENTS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    client = load_attr(_PORT_CLIENTS[protocol])
    if not isinstance(client, LoadClient):
        raise TypeError(f"{_PORT_CLIENTS[protocol]} is not a LoadClient")
    return client


# --- one worker process -------------------------------------------------------


async def _client(
    spec: LoadSpec, request: bytes, stop_at: float, latencies: list[float], errors: dict[str, int]
) -> None:
    client = load_client(spec.protocol)
    read = client.read
    greeting = client.greeting(spec) if client.greeting is not None else None
    loop = asyncio.get_running_loop()
    count = 0
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def more() -> bool:
        if spec.requests is not None:
            return count < spec.requests
        return loop.time() < stop_at

    while more():
        count += 1
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(spec.timeout):
                if conn is None:
                    conn = await asyncio.open_connection(spec.host, spec.port)
                    if greeting is not None:
                        conn[1].write(greeting)
                        refused = await read(conn[0])
                        if refused is not None:
                            raise ValueError(f"greeting refused: {refused}")
                reader, writer = conn
                writer.write(request)
                problem = await read(reader)
                if spec.one_shot:
                    writer.close()
                    conn = None
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
        ) as exc:
            problem = type(exc).__name__
            if conn is not None:
                conn[1].close()
                conn = None
        if problem is None:
            latencies.append((time.perf_counter() - t0) * 1000)
        else:
            errors[problem] = errors.get(problem, 0) + 1
    if conn is not None:
        conn[1].close()


async def _worker_main(
    spec: LoadSpec, clients: int, start: Any
) -> tuple[list[float], dict[str, int], float, float]:
    request = load_client(spec.protocol).request(spec)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    # Every worker and the parent meet here, so all clients start together.
    await asyncio.get_running_loop().run_in_executor(None, start.wait)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    stop_at = asyncio.get_running_loop().time() + (spec.duration or 0.0)
    await asyncio.gather(
        *(_client(spec, request, stop_at, latencies, errors) for _ in range(clients))
    )
    return latencies, errors, time.perf_counter() - t0, time.process_time() - cpu0


def _worker(spec: LoadSpec, clients: int, start: Any, out: Any) -> None:
    from edgewire.agent.server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        latencies, errors, seconds, cpu = runner.run(_worker_main(spec, clients, start))
    out.put((np.asarray(latencies, dtype=np.float64).tobytes(), errors, seconds, cpu))


def run_load(spec: LoadSpec) -> LoadResult:
    """Run the load; blocks until every client is done."""
    processes = spec.processes or min(os.cpu_count() or 1, spec.clients)
    processes = max(1, min(processes, spec.clients))
    shares = [spec.clients // processes + (i < spec.clients % processes) for i in range(processes)]
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(spec, n, start, out), daemon=True) for n in shares]
    for w in workers:
        w.start()
    start.wait(timeout=120)
    parts = [out.get(timeout=spec.timeout + (spec.duration or 0) + 600) for _ in workers]
    for w in workers:
        w.join(10)
    result = LoadResult(clients=spec.clients)
    chunks = []
    for raw, errors, seconds, cpu in parts:
        chunks.append(np.frombuffer(raw, dtype=np.float64))
        result.client_cpu_s += cpu
        for kind, n in errors.items():
            result.error_kinds[kind] = result.error_kinds.get(kind, 0) + n
        result.seconds = max(result.seconds, seconds)
    result.latencies_ms = np.concatenate(chunks) if chunks else np.zeros(0)
    result.ok = int(result.latencies_ms.size)
    result.errors = sum(result.error_kinds.values())
    return result
