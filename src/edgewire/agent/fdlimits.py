"""File descriptors: how many connections each port may hold, and which idle one goes first.

Every connection is a file descriptor, and so is every model file, log, lock
and pipe; when the process runs out, ``accept`` fails on every port at once and
nothing says why. So at start-up the agent raises its soft ``RLIMIT_NOFILE``
toward the hard one, keeps a reserve for everything that is not a connection
(:func:`reserve_for`), and splits the rest between the ports it opens
(:func:`split_caps`): the native port and HTTP get most, each opt-in port a
share, none more than ``max_connections``.

At a port's cap, a new connection takes the place of the one that has been
silent longest, if that one has been silent for ``idle_evict_after`` seconds
(as nginx reuses idle keep-alive connections); otherwise the new one is
refused. When the fds in use pass :data:`HIGH_WATER` of the limit anyway, the
longest-silent connections are closed until they are under :data:`LOW_WATER`.

Pure arithmetic and bookkeeping; the I/O edges are :func:`raise_soft_limit`
and :func:`count_open_fds`.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: Kept out of the connection caps for model files, logs, the data dir, threads, pipes.
RESERVE_FIXED = 64
RESERVE_SHARE = 0.05
#: Past this share of the limit in use, the longest-silent connections are closed ...
HIGH_WATER = 0.90
#: ... until the fds in use are under this share.
LOW_WATER = 0.85
#: Shares of the usable fds: devices hold native connections open (streams, many
#: small requests); HTTP keep-alive connections close after a few idle seconds.
PORT_WEIGHTS = {"native": 3, "http": 2}
OPT_IN_WEIGHT = 1


def reserve_for(limit: int) -> int:
    """The fds kept for what is not a connection, at a limit of ``limit``."""
    return RESERVE_FIXED + int(limit * RESERVE_SHARE)


def limit_wanted(connections: int, *, open_now: int) -> int:
    """The smallest fd limit whose caps hold ``connections`` besides ``open_now`` fds."""
    return math.ceil((connections + open_now + RESERVE_FIXED) / (1 - RESERVE_SHARE)) + 1


def split_caps(usable: int, ports: Sequence[str], *, max_connections: int) -> dict[str, int]:
    """``usable`` fds split between ``ports`` by weight; each gets at least 1 and at
    most ``max_connections``, and what a capped port cannot use goes to the others."""
    weights = {name: PORT_WEIGHTS.get(name, OPT_IN_WEIGHT) for name in ports}
    caps: dict[str, int] = {}
    left, open_ports = max(usable, 0), dict(weights)
    while open_ports:
        total = sum(open_ports.values())
        shares = {n: left * w // total for n, w in open_ports.items()}
        full = {n for n, share in shares.items() if share >= max_connections}
        if not full:
            caps.update(shares)
            break
        for name in full:
            caps[name] = max_connections
            left -= max_connections
            del open_ports[name]
    return {name: max(1, caps[name]) for name in ports}


@dataclass(frozen=True, kw_only=True)
class FdPlan:
    """The fd limit in force and the connection cap of each port."""

    limit: int
    hard: int
    open_at_start: int
    reserve: int
    caps: Mapping[str, int]

    @property
    def high(self) -> int:
        return int(self.limit * HIGH_WATER)

    @property
    def low(self) -> int:
        return int(self.limit * LOW_WATER)

    def describe(self) -> str:
        caps = ", ".join(f"{name} {cap}" for name, cap in self.caps.items())
        hard = "unlimited" if self.hard < 0 else str(self.hard)
        return (
            f"file descriptors: limit {self.limit} (hard {hard}), {self.open_at_start} open "
            f"at start, {self.reserve} kept in reserve; connections per port: {caps}"
        )


def plan(
    *, limit: int, hard: int, open_now: int, ports: Sequence[str], max_connections: int
) -> FdPlan:
    reserve = reserve_for(limit)
    usable = limit - reserve - open_now
    return FdPlan(
        limit=limit,
        hard=hard,
        open_at_start=open_now,
        reserve=reserve,
        caps=split_caps(usable, ports, max_connections=max_connections),
    )


def evictions_needed(open_fds: int, fd_plan: FdPlan) -> int:
    """How many connections to close for ``open_fds`` in use: none under the high water."""
    return 0 if open_fds <= fd_plan.high else open_fds - fd_plan.low


class Activity(Protocol):
    """Anything that knows when its connection last received bytes (loop time)."""

    @property
    def last_active(self) -> float: ...


@dataclass(eq=False, slots=True)
class Connection:
    """One tracked connection: its port, its activity and how to close it."""

    port: str
    activity: Activity
    close: Callable[[], None]


@dataclass
class ConnectionTable:
    """The open connections of every port, and which of them has been silent longest.

    Finding the most silent one scans a port's connections; so that a flood at a
    full port costs no scan per connection, the table remembers until when no
    connection can be silent long enough, and keeps the next few candidates.
    """

    caps: Mapping[str, int] = field(default_factory=dict)
    default_cap: int = 1
    _ports: dict[str, dict[Connection, None]] = field(default_factory=dict)
    _no_victim_until: dict[str | None, float] = field(default_factory=dict)
    _candidates: dict[str | None, list[Connection]] = field(default_factory=dict)

    def cap(self, port: str) -> int:
        return self.caps.get(port, self.default_cap)

    def count(self, port: str) -> int:
        return len(self._ports.get(port, ()))

    def total(self) -> int:
        return sum(len(conns) for conns in self._ports.values())

    def full(self, port: str) -> bool:
        return self.count(port) >= self.cap(port)

    def add(self, conn: Connection) -> None:
        self._ports.setdefault(conn.port, {})[conn] = None

    def remove(self, conn: Connection) -> None:
        self._ports.get(conn.port, {}).pop(conn, None)

    def __iter__(self) -> Iterator[Connection]:
        for conns in self._ports.values():
            yield from conns

    def most_idle(self, port: str | None, *, now: float, min_idle: float) -> Connection | None:
        """The connection (of ``port``, or of any port) silent longest, if silent for
        ``min_idle`` s or more; it stays in the table until :meth:`remove`."""
        if now < self._no_victim_until.get(port, -math.inf):
            return None
        cutoff = now - min_idle
        pool = self._candidates.get(port, [])
        while pool:
            conn = pool.pop()
            if self._has(conn) and conn.activity.last_active <= cutoff:
                return conn
        conns: Iterable[Connection] = self._ports.get(port, {}) if port is not None else list(self)
        ranked = heapq.nsmallest(16, conns, key=lambda c: c.activity.last_active)
        if not ranked:
            return None
        idlest = ranked[0].activity.last_active
        if idlest > cutoff:
            # Nothing can have been silent long enough before this moment.
            self._no_victim_until[port] = idlest + min_idle
            return None
        self._candidates[port] = [
            c for c in reversed(ranked[1:]) if c.activity.last_active <= cutoff
        ]
        return ranked[0]

    def _has(self, conn: Connection) -> bool:
        return conn in self._ports.get(conn.port, {})


class RateLimit:
    """True at most once per ``interval`` seconds for each key (for log lines)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}

    def due(self, key: str, now: float) -> bool:
        if now < self._next.get(key, -math.inf):
            return False
        self._next[key] = now + self.interval
        return True


# --- the I/O edges ---------------------------------------------------------------------


def raise_soft_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE toward ``wanted`` (never above the hard limit, never
    lower than it is); the (soft, hard) limits in force afterwards (-1: unlimited)."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise, nothing known
        return 1 << 20, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    target = wanted if hard == unlimited else min(wanted, hard)
    if soft != unlimited and target > soft:
        # macOS refuses more than OPEN_MAX: then keep what we have.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 20 if soft == unlimited else soft), (-1 if hard == unlimited else hard)


def count_open_fds() -> int | None:
    """The fds this process has open now, or None where the system does not tell."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # less the one listdir itself opened
        except OSError:
            continue
    return None
