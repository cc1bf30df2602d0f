"""A faithful copy of seed 002's C++ ``tcp-stress-tool``.

N threads, each opens one connection, sends one 3180-byte request, reads the
96-byte answer and closes. The seed reported the wall time of the whole burst
and the mean server inference time; :func:`run_burst` returns both, plus each
client's latency. Unlike the seed (one ``recv``, a 30 s receive timeout and no
connect timeout) each client reads exactly 96 bytes under one overall deadline,
so a stuck server cannot hang the burst.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edgewire.errors import ConfigError, ConnectError, EdgewireError, PeerTimeout
from edgewire.wire.mnistprot import DIGIT_LEN, RESPONSE_SIZE, decode_response, encode_request

#: The seed's own limit on clients.
MAX_CLIENTS = 4096
#: Stack of each client thread: a few socket calls need far less than the 8 MiB default.
_THREAD_STACK = 256 * 1024


@dataclass
class BurstResult:
    """One burst: ``seconds`` from the common start to the last client's end."""

    clients: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    #: ``timer_ms`` of each good answer: the server's inference time.
    server_ms: list[float] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0


def default_digit() -> npt.NDArray[np.float32]:
    """A fixed digit (the seed sent uninitialised stack memory)."""
    return np.linspace(0.0, 1.0, DIGIT_LEN, dtype=np.float32)


def run_burst(
    host: str,
    port: int,
    *,
    clients: int,
    digit: npt.ArrayLike | None = None,
    timeout: float = 120.0,
) -> BurstResult:
    """Start ``clients`` one-shot clients at once against ``host:port`` and wait for all."""
    if not 1 <= clients <= MAX_CLIENTS:
        raise ConfigError(f"clients must be 1..{MAX_CLIENTS}, got {clients!r}")
    if not timeout > 0:
        raise ConfigError(f"timeout must be positive, got {timeout!r}")
    request = encode_request(default_digit() if digit is None else digit)
    latencies: list[float | None] = [None] * clients
    server_ms: list[float | None] = [None] * clients
    start: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: start.append(time.perf_counter()))

    def client(index: int) -> None:
        try:
            barrier.wait(timeout=timeout)
        except threading.BrokenBarrierError:
            return
        began = time.perf_counter()
        try:
            answer = _one_request(host, port, request, deadline=began + timeout)
        except (OSError, EdgewireError):
            return  # counted as an error: its slot stays None
        latencies[index] = (time.perf_counter() - began) * 1000.0
        server_ms[index] = answer

    threads = _start_threads(client, clients, barrier)
    join_by = time.perf_counter() + 2 * timeout + 5.0
    for thread in threads:
        thread.join(timeout=max(0.0, join_by - time.perf_counter()))
    end = time.perf_counter()
    good = [ms for ms in latencies if ms is not None]
    return BurstResult(
        clients=clients,
        ok=len(good),
        errors=clients - len(good),
        seconds=end - start[0] if start else 0.0,
        latencies_ms=good,
        server_ms=[ms for ms in server_ms if ms is not None],
    )


def _start_threads(
    target: Callable[[int], None], count: int, barrier: threading.Barrier
) -> list[threading.Thread]:
    previous = threading.stack_size(_THREAD_STACK)
    threads: list[threading.Thread] = []
    try:
        for index in range(count):
            thread = threading.Thread(
                target=target, args=(index,), name=f"stress-{index}", daemon=True
            )
            thread.start()
            threads.append(thread)
    except RuntimeError as exc:  # "can't start new thread"
        barrier.abort()
        for thread in threads:
            thread.join()
        raise ConfigError(
            f"could only start {len(threads)} of {count} client threads ({exc}); use fewer clients"
        ) from exc
    finally:
        threading.stack_size(previous)
    return threads


def _one_request(host: str, port: int, request: bytes, *, deadline: float) -> float:
    """One seed client: connect, send, read exactly 96 bytes; returns ``timer_ms``."""
    with socket.create_connection((host, port), timeout=_left(deadline)) as sock:
        sock.settimeout(_left(deadline))
        sock.sendall(request)
        answer = bytearray()
        while len(answer) < RESPONSE_SIZE:
            sock.settimeout(_left(deadline))
            chunk = sock.recv(RESPONSE_SIZE - len(answer))
            if not chunk:
                raise ConnectError(
                    f"server closed after {len(answer)} of {RESPONSE_SIZE} response bytes"
                )
            answer += chunk
    return decode_response(answer).timer_ms


def _left(deadline: float) -> float:
    left = deadline - time.perf_counter()
    if left <= 0:
        raise PeerTimeout("the server did not answer before the client's deadline")
    return left
