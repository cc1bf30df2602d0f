"""The agent: one asyncio process serving the native port, HTTP and the opt-in ports.

It owns the shared resources (a :class:`PortContext` hands them to handlers),
opens the ports of ``edgewire.ports.PORTS`` that the config names, and drains
on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, SupportsIndex

import uvicorn
from prometheus_client import Counter

from edgewire.agent import fdlimits
from edgewire.agent.context import Handler, PortContext
from edgewire.agent.disk import DiskBudget
from edgewire.agent.hooks import Automation
from edgewire.agent.http_guard import (
    DEFAULT_MAX_HEADER_BYTES,
    GuardedHttpProtocol,
    guarded_protocol,
)
from edgewire.agent.management import sweep_uploads
from edgewire.agent.metrics import AgentMetrics, BatcherCollector
from edgewire.agent.serving import Serving
from edgewire.agent.split import SplitRuntime
from edgewire.agent.tls import server_context
from edgewire.config import AgentConfig
from edgewire.errors import ConfigError
from edgewire.fsutil import lock_folder, unlock_folder
from edgewire.ports import PORTS, PortSpec, load_attr
from edgewire.train.session import RunRegistry
from edgewire.wire.stream import ByteBudget

log = logging.getLogger(__name__)

#: Listed in the hello of every agent; each open opt-in port adds its own.
CORE_FEATURES = ("health", "metrics", "train.stream", "infer", "kserve.v2", "split")
LISTEN_BACKLOG = 4096
STREAM_LIMIT = 256 * 1024
#: Where a port that cannot carry the token listens while the agent has one.
LOOPBACK = "127.0.0.1"


class _QuietUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the agent, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _TimedReader(asyncio.StreamReader):
    """A StreamReader that notes when its connection last received bytes (loop time),
    so that the agent can tell which connection has been silent longest."""

    def __init__(self, *, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._clock = loop.time
        self.last_active = loop.time()

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.last_active = self._clock()
        super().feed_data(data)


class _LeanStreamProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol holding its drain waiters in a list: a deque costs every
    open connection 600 bytes, mostly empty (it only appends, removes and iterates)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drain_waiters: Any = []


class _Accepted:
    """The activity of a connection whose reader keeps no time: its accept time."""

    def __init__(self, when: float) -> None:
        self.last_active = when


async def _start_timed_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    host: str,
    port: int,
    *,
    limit: int,
    **kwds: Any,
) -> asyncio.Server:
    """``asyncio.start_server``, with readers that note when they last received bytes."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = _TimedReader(limit=limit, loop=loop)
        return _LeanStreamProtocol(reader, client_connected_cb, loop=loop)

    return await loop.create_server(factory, host, port, **kwds)


def _capped(
    protocol: type[GuardedHttpProtocol], admit: Callable[[int], bool]
) -> type[GuardedHttpProtocol]:
    """``protocol``, closing a new connection at once when ``admit(open connections)``
    says no (uvicorn's ``limit_concurrency`` answers requests 503, but accepts all)."""

    def connection_made(self: GuardedHttpProtocol, transport: asyncio.Transport) -> None:
        protocol.connection_made(self, transport)
        if not admit(len(self.connections)):
            transport.abort()

    return type(protocol.__name__, (protocol,), {"connection_made": connection_made})


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.runs = RunRegistry(config.data_dir / "runs")
        self.serving = Serving(config)
        self.metrics.registry.register(BatcherCollector(self.serving.batcher_stats))
        # Training is CPU-bound and a model is not thread-safe: one training thread.
        self.train_executor = ThreadPoolExecutor(1, thread_name_prefix="edgewire-train")
        self.frame_budget = ByteBudget(config.max_buffered_bytes)
        self.disk = DiskBudget(
            config.data_dir,
            max_bytes=config.max_disk_bytes,
            min_free_bytes=config.min_free_disk_bytes,
        )
        self.split = SplitRuntime(config, self.serving)
        self.features: set[str] = set(CORE_FEATURES)
        self.ports: dict[str, int] = {}
        self.stopping = asyncio.Event()
        self.context = PortContext(
            config=config,
            metrics=self.metrics,
            serving=self.serving,
            runs=self.runs,
            train_executor=self.train_executor,
            frame_budget=self.frame_budget,
            stopping=self.stopping,
            disk=self.disk,
            split=self.split,
            features=self.features,
            is_ready=lambda: self.ready,
        )
        # Webhooks, polling and the job queue, when the config has [automation].
        self.automation = None if config.automation is None else Automation(
            self.context, config.automation
        )  # fmt: skip
        # Live runs (edgewire run): a source, a served model, pins and actions.
        from edgewire.agent.live import LiveRuns

        self.live = LiveRuns(self.context)
        self._started = False
        self._servers: list[asyncio.Server] = []
        self._http: _QuietUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # fd budget: per-port caps (set at start-up), the open connections, idle eviction.
        self.fd_plan: fdlimits.FdPlan | None = None
        self._conns = fdlimits.ConnectionTable(default_cap=config.max_connections)
        self._refusals = fdlimits.RateLimit(10.0)
        self._next_fd_check = 0.0
        self.evicted_total = Counter(
            "edgewire_connections_evicted_total",
            "Idle connections closed to make room (full port, or fds running short).",
            ["protocol", "reason"],
            registry=self.metrics.registry,
        )
        self._lock: int | None = None
        #: The native and HTTP ports' TLS (None: plain TCP), built at start-up.
        self.tls: ssl.SSLContext | None = None

    @property
    def ready(self) -> bool:
        return self._started and not self.stopping.is_set()

    async def start(self) -> None:
        cfg = self.config
        cfg.check_bind_safety()
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            self.tls = server_context(cfg.tls_cert, cfg.tls_key)
            log.info("TLS on the native and HTTP ports: the token travels encrypted")
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            lock = lock_folder(cfg.data_dir)
        except OSError as exc:
            raise ConfigError(f"cannot use data dir {str(cfg.data_dir)!r}: {exc}") from exc
        if lock is None:
            raise ConfigError(
                f"data dir {str(cfg.data_dir)!r} is in use by another agent; "
                "give each agent its own --data-dir"
            )
        self._lock = lock
        await asyncio.to_thread(sweep_uploads, cfg.data_dir)
        from edgewire.agent.native import handler as native_handler

        await self.serving.start()
        if self.automation is not None:
            await self.automation.start()
        self._plan_fds()
        await self._listen("native", cfg.port, native_handler(self.context), tls=self.tls)
        for spec in PORTS:
            port = cfg.port_of(spec.name)
            if port is None:
                continue
            self.features.add(spec.feature)
            await self._listen(
                spec.name, port, load_attr(spec.handler)(self.context), host=_bind_host(cfg, spec)
            )
        await self._start_http()
        self._started = True
        log.info("edgewire agent listening: %s", self.ports)

    async def _listen(
        self,
        name: str,
        port: int,
        handler: Handler,
        *,
        host: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        host = self.config.host if host is None else host
        try:
            server = await _start_timed_server(
                functools.partial(self._track, name, handler),  # no wrapping coroutine frame
                host,
                port,
                limit=STREAM_LIMIT,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
                # The handler (and the connection count) starts once the handshake is done.
                ssl=tls,
                ssl_handshake_timeout=self.config.frame_timeout if tls else None,
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({name}): {exc}") from exc
        self._servers.append(server)
        self.ports[name] = server.sockets[0].getsockname()[1]

    async def _track(
        self,
        name: str,
        handler: Handler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        now = asyncio.get_running_loop().time()
        self._relieve_fd_pressure(now)
        if self.stopping.is_set() or not self._make_room(name, now):
            self._refuse(name, now)
            writer.transport.abort()  # the fd goes back at once
            return
        task = asyncio.current_task()
        assert task is not None
        activity = reader if isinstance(reader, _TimedReader) else _Accepted(now)
        conn = fdlimits.Connection(name, activity, writer.close)
        self._tasks.add(task)
        self._conns.add(conn)
        self.metrics.connections.labels(name).inc()
        self.metrics.connections_total.labels(name).inc()
        try:
            await handler(reader, writer)
        except Exception:  # one peer's failure must never take the agent down
            log.exception("unexpected error on a %s connection", name)
            writer.close()
        finally:
            self._conns.remove(conn)
            self.metrics.connections.labels(name).dec()
            self._tasks.discard(task)

    # --- file descriptors: caps per port, idle eviction (see agent/fdlimits.py) ----------

    def _plan_fds(self) -> None:
        """Raise the soft fd limit toward the hard one and cap each port to fit in it."""
        cfg = self.config
        names = ["native", *(s.name for s in PORTS if cfg.port_of(s.name) is not None), "http"]
        open_now = fdlimits.count_open_fds() or 0
        wanted = fdlimits.limit_wanted(cfg.max_connections * len(names), open_now=open_now)
        soft, hard = fdlimits.raise_soft_limit(wanted)
        self.fd_plan = fdlimits.plan(
            limit=soft,
            hard=hard,
            open_now=open_now,
            ports=names,
            max_connections=cfg.max_connections,
        )
        self._conns.caps = self.fd_plan.caps
        log.info("%s", self.fd_plan.describe())

    def _make_room(self, name: str, now: float) -> bool:
        """Whether a new connection on port ``name`` may stay: under the cap, or in the
        place of one that has been silent for ``idle_evict_after`` seconds."""
        if not self._conns.full(name):
            return True
        victim = self._conns.most_idle(name, now=now, min_idle=self.config.idle_evict_after)
        if victim is None:
            return False
        self._evict(victim, "port_full", now)
        return True

    def _relieve_fd_pressure(self, now: float) -> None:
        """Past the high water of fds in use, close the longest-silent connections."""
        plan = self.fd_plan
        if plan is None or now < self._next_fd_check:
            return
        in_use = fdlimits.count_open_fds()
        if in_use is None:  # no /proc: what we know of
            in_use = plan.open_at_start + self._conns.total() + self._http_connections()
        # Counting fds costs a directory listing: once a second, more often near the limit.
        self._next_fd_check = now + (0.1 if in_use > plan.low else 1.0)
        excess = fdlimits.evictions_needed(in_use, plan)
        closed = 0
        while closed < excess:
            victim = self._conns.most_idle(None, now=now, min_idle=self.config.idle_evict_after)
            if victim is None:
                break
            self._evict(victim, "fds_short", now, log_it=False)
            closed += 1
        if excess and self._refusals.due("fds", now):
            log.warning(
                "file descriptors running short: %d of %d in use; closed %d idle connection(s)",
                in_use,
                plan.limit,
                closed,
            )

    def _evict(
        self, conn: fdlimits.Connection, reason: str, now: float, *, log_it: bool = True
    ) -> None:
        self._conns.remove(conn)
        conn.close()
        self.evicted_total.labels(conn.port, reason).inc()
        if log_it and self._refusals.due(f"evict:{conn.port}", now):
            log.info(
                "%s port at its cap of %d: closed a connection silent for %.0f s to make room",
                conn.port,
                self._conns.cap(conn.port),
                now - conn.activity.last_active,
            )

    def _refuse(self, name: str, now: float) -> None:
        self.metrics.rejected_total.labels(name).inc()
        if not self.stopping.is_set() and self._refusals.due(name, now):
            log.warning(
                "refusing new %s connections: %d open, the cap is %d (see the fd limit, "
                "ulimit -n, and max_connections); edgewire_connections_rejected_total counts them",
                name,
                self._conns.count(name) if name != "http" else self._http_connections(),
                self._conns.cap(name),
            )

    def _admit_http(self, open_now: int) -> bool:
        """Whether a new HTTP connection may stay, ``open_now`` (itself included) being open."""
        now = asyncio.get_running_loop().time()
        self._relieve_fd_pressure(now)
        if open_now <= self._conns.cap("http") and not self.stopping.is_set():
            return True
        self._refuse("http", now)
        return False

    def _http_connections(self) -> int:
        return len(self._http.server_state.connections) if self._http is not None else 0

    async def _start_http(self) -> None:
        from edgewire.agent.http import create_app

        cfg = self.config
        sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.http_port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.http_port} (http): {exc}") from exc
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        self.ports["http"] = sock.getsockname()[1]
        routes = self.automation.routes() if self.automation is not None else []
        # Remote training: content-addressed data set upload, runs, their event streams.
        from edgewire.agent.train_remote import train_remote_routes

        routes = [*routes, *train_remote_routes(self.context)]
        from edgewire.agent.live_api import live_routes

        routes = [*routes, *live_routes(self.context, self.live)]
        # The dashboard's APIs: workspaces here, other agents (registry, proxy, deploy).
        from edgewire.agent.peers import peers_routes
        from edgewire.agent.workspaces_api import workspaces_routes

        routes = [*routes, *workspaces_routes(self.context), *peers_routes(self.context)]
        # The dashboard's pages last: its "/" and "/static" do not shadow an API route.
        from edgewire.dashboard.routes import dashboard_routes

        routes = [*routes, *dashboard_routes(self.context)]
        tls = self.tls
        config = uvicorn.Config(
            create_app(self.context, routes=routes),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=15,
            timeout_graceful_shutdown=int(cfg.drain_timeout),
            # httptools bounds neither the time nor the bytes of a request head.
            http=_capped(
                guarded_protocol(
                    header_timeout=cfg.frame_timeout, max_header_bytes=DEFAULT_MAX_HEADER_BYTES
                ),
                self._admit_http,
            ),
            # Past this many connections and requests at once, new ones get 503 (the
            # connections past it are closed at once, see _admit_http).
            limit_concurrency=self._conns.cap("http"),
            # The same context as the native port's (uvicorn would build its own).
            ssl_context_factory=None if tls is None else lambda _config, _default: tls,
        )
        self._http = _QuietUvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()
                raise ConfigError("the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    def request_stop(self) -> None:
        self.stopping.set()

    async def serve_forever(self) -> None:
        await self.stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Stop accepting, let in-flight work finish within drain_timeout, then close."""
        self.stopping.set()
        began = time.monotonic()
        for server in self._servers:
            server.close()
        await self.live.stop_all()  # their pins low before anything else goes
        for idle in list(self.context.idle_readers):
            idle.cancel()  # a native connection between frames: nothing to drain
        pending = {t for t in self._tasks if not t.done()}
        open_at_stop = len(pending)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.config.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        http_open = self._http_connections()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, timeout=self.config.drain_timeout + 1)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        if self.automation is not None:
            await self.automation.stop()
        await self.split.close()
        await self.serving.stop()
        # A remote run ends at its next batch, skipping its report: a bounded wait.
        from edgewire.agent.remote_runs import RemoteRuns

        remote = RemoteRuns.of(self.context)
        if remote is not None:
            await remote.close()
        self.train_executor.shutdown(wait=True)
        if self._lock is not None:
            unlock_folder(self._lock)
            self._lock = None
        log.info(
            "edgewire agent stopped in %.1f s: %d connection(s) drained, %d cut off after "
            "drain_timeout (%g s), %d HTTP connection(s) closed",
            time.monotonic() - began,
            open_at_stop - len(pending),
            len(pending),
            self.config.drain_timeout,
            http_open,
        )


async def run_agent(
    config: AgentConfig, *, on_started: Callable[[Agent], None] | None = None
) -> None:
    """Run until SIGTERM/SIGINT, then drain."""
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, agent.request_stop)
    try:
        await agent.start()
    except BaseException:
        await agent.stop()
        raise
    if on_started is not None:
        on_started(agent)
    await agent.serve_forever()


def _bind_host(cfg: AgentConfig, spec: PortSpec) -> str:
    """Where port ``spec`` listens: a port that changes state but cannot carry the
    token stays on loopback while a token guards the rest, unless named public."""
    if (
        spec.loopback_with_token
        and cfg.token
        and not cfg.loopback_only
        and spec.name not in cfg.legacy_public
    ):
        log.warning(
            "the %s port cannot carry the token: listening on %s only; pass %s to open it on %s",
            spec.name,
            LOOPBACK,
            spec.public_flag,
            cfg.host,
        )
        return LOOPBACK
    return cfg.host


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
