"""The agent: one asyncio process serving the native port, HTTP and the opt-in ports.

It owns the shared resources (a :class:`PortContext` hands them to handlers),
opens the ports of ``edgewire.ports.PORTS`` that the config names, and drains
on stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn

from edgewire.agent.context import Handler, PortContext
from edgewire.agent.http_guard import DEFAULT_MAX_HEADER_BYTES, guarded_protocol
from edgewire.agent.management import sweep_uploads
from edgewire.agent.metrics import AgentMetrics
from edgewire.agent.serving import Serving
from edgewire.config import AgentConfig
from edgewire.errors import ConfigError
from edgewire.fsutil import lock_folder, unlock_folder
from edgewire.ports import PORTS, load_attr
from edgewire.train.session import RunRegistry
from edgewire.wire.stream import ByteBudget

log = logging.getLogger(__name__)

#: Listed in the hello of every agent; each open opt-in port adds its own.
CORE_FEATURES = ("health", "metrics", "train.stream", "infer", "kserve.v2")
LISTEN_BACKLOG = 4096
STREAM_LIMIT = 256 * 1024


class _QuietUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the agent, not uvicorn, owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.runs = RunRegistry(config.data_dir / "runs")
        self.serving = Serving(config)
        # Training is CPU-bound and a model is not thread-safe: one training thread.
        self.train_executor = ThreadPoolExecutor(1, thread_name_prefix="edgewire-train")
        self.frame_budget = ByteBudget(config.max_buffered_bytes)
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
            features=self.features,
            is_ready=lambda: self.ready,
        )
        self._started = False
        self._servers: list[asyncio.Server] = []
        self._http: _QuietUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._open: dict[str, int] = {}
        self._lock: int | None = None

    @property
    def ready(self) -> bool:
        return self._started and not self.stopping.is_set()

    async def start(self) -> None:
        cfg = self.config
        cfg.check_bind_safety()
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
        await self._listen("native", cfg.port, native_handler(self.context))
        for spec in PORTS:
            port = cfg.port_of(spec.name)
            if port is None:
                continue
            self.features.add(spec.feature)
            await self._listen(spec.name, port, load_attr(spec.handler)(self.context))
        await self._start_http()
        self._started = True
        log.info("edgewire agent listening: %s", self.ports)

    async def _listen(self, name: str, port: int, handler: Handler) -> None:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._track(name, handler, reader, writer)

        try:
            server = await asyncio.start_server(
                on_connect,
                self.config.host,
                port,
                limit=STREAM_LIMIT,
                backlog=LISTEN_BACKLOG,
                reuse_address=True,
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.config.host}:{port} ({name}): {exc}"
            ) from exc
        self._servers.append(server)
        self.ports[name] = server.sockets[0].getsockname()[1]

    async def _track(
        self,
        name: str,
        handler: Handler,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if self._open.get(name, 0) >= self.config.max_connections or self.stopping.is_set():
            self.metrics.rejected_total.labels(name).inc()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open[name] = self._open.get(name, 0) + 1
        self.metrics.connections.labels(name).inc()
        self.metrics.connections_total.labels(name).inc()
        try:
            await handler(reader, writer)
        except Exception:  # one peer's failure must never take the agent down
            log.exception("unexpected error on a %s connection", name)
            writer.close()
        finally:
            self._open[name] -= 1
            self.metrics.connections.labels(name).dec()
            self._tasks.discard(task)

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
        config = uvicorn.Config(
            create_app(self.context),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_keep_alive=15,
            timeout_graceful_shutdown=int(cfg.drain_timeout),
            # httptools bounds neither the time nor the bytes of a request head.
            http=guarded_protocol(
                header_timeout=cfg.frame_timeout, max_header_bytes=DEFAULT_MAX_HEADER_BYTES
            ),
            # Past this many connections and requests at once, new ones get 503.
            limit_concurrency=cfg.max_connections,
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
        for server in self._servers:
            server.close()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=self.config.drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http_task, timeout=self.config.drain_timeout + 1)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1.0)
        await self.serving.stop()
        self.train_executor.shutdown(wait=True)
        if self._lock is not None:
            unlock_folder(self._lock)
            self._lock = None


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


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when it is installed, asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
