"""The other agents this agent acts on for the dashboard: their names, URLs and tokens
(``DATA_DIR/agents.json``, mode 0600), and one keep-alive HTTP client to each.

A leaf under the routes that use it (``peers.py``: registry and proxy;
``deploy_api.py``: data set pushes and deploys). A token is kept here and sent as
the peer's Bearer header; it is never answered, logged or put into an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.responses import Response

from edgewire.agent.context import PortContext
from edgewire.agent.http_common import not_found
from edgewire.client.native import tls_from_env
from edgewire.errors import BusyError, ConfigError
from edgewire.fsutil import atomic_write
from edgewire.serve.store import check_name

log = logging.getLogger(__name__)

REGISTRY_FILE = "agents.json"
MAX_AGENTS = 32
MAX_URL = 2048
MIN_TOKEN, MAX_TOKEN = 8, 4096
#: A registry file larger than this is not read (32 agents take a few kB).
MAX_REGISTRY_BYTES = 256 * 1024
#: Requests to other agents in flight at once (proxied ones and deploys' own).
MAX_IN_FLIGHT = 64
#: Connections kept to one agent, and how long one waits for a free one.
PEER_CONNECTIONS = 32
CONNECT_S, POOL_S = 5.0, 5.0
#: Seconds one read of a peer's answer may take: its event streams ping every 10 s.
READ_S = 60.0
#: A call that changes state may work longer before it answers (a capture, a gated
#: upload, a deploy): the proxy waits this long for its first byte.
ACTION_READ_S = 600.0
WRITE_S = 30.0
_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, kw_only=True)
class Peer:
    name: str
    url: str
    token: str

    def public(self) -> dict[str, str]:
        """What may be shown of it: never the token."""
        return {"name": self.name, "url": self.url}


def check_url(value: object) -> str:
    """``value`` as ``scheme://host:port`` (http or https, an explicit port, nothing else)."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise ConfigError("url must be http://HOST:PORT or https://HOST:PORT")
    shown = value[:100]
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ConfigError(f"url {shown!r} is not a valid URL; use http://HOST:PORT") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"url {shown!r} must start with http:// or https://")
    if "@" in parts.netloc:
        raise ConfigError("url must not carry a user or password; send the token as token")
    if not parts.hostname or not port:
        raise ConfigError(f"url {shown!r} needs a host and a port, as http://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in value:
        raise ConfigError(f"url {shown!r} must be only scheme://host:port, with no path or query")
    if any(c.isspace() or ord(c) < 0x21 for c in value):
        raise ConfigError("url must not hold spaces or control characters")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def check_token(value: object) -> str:
    if (
        not isinstance(value, str)
        or not MIN_TOKEN <= len(value) <= MAX_TOKEN
        or not _TOKEN.fullmatch(value)
    ):
        raise ConfigError(
            f"token must be the other agent's token: {MIN_TOKEN}..{MAX_TOKEN} printable "
            "characters, no spaces"
        )
    return value


def _write_private(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    atomic_write(path, write, what="save the list of agents")


class Peers:
    """The registry and the clients of one agent's peers."""

    def __init__(self, ctx: PortContext) -> None:
        self.ctx = ctx
        self.path = ctx.config.data_dir / REGISTRY_FILE
        self._peers: dict[str, Peer] = {p.name: p for p in self._load()}
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._lock = asyncio.Lock()
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None

    # --- the registry -----------------------------------------------------------------

    def _load(self) -> list[Peer]:
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_REGISTRY_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("cannot read %s (%s): no other agents known", REGISTRY_FILE, exc.strerror)
            return []
        found: list[Peer] = []
        try:
            if len(raw) > MAX_REGISTRY_BYTES:
                raise ValueError("too large")
            items = json.loads(raw)["agents"]
            for item in items[:MAX_AGENTS]:
                found.append(
                    Peer(
                        name=check_name(item["name"], what="agent name"),
                        url=check_url(item["url"]),
                        token=check_token(item["token"]),
                    )
                )
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            log.warning("%s is malformed (%s): ignoring what follows in it", REGISTRY_FILE,
                        type(exc).__name__)  # fmt: skip
        return found

    def listing(self) -> list[dict[str, str]]:
        return [p.public() for p in sorted(self._peers.values(), key=lambda p: p.name)]

    def get(self, name: str) -> Peer | None:
        return self._peers.get(name)

    async def add(self, name: str, url: str, token: str) -> Peer:
        async with self._lock:
            if name in self._peers:
                raise ConfigError(f"an agent named {name!r} is known already; delete it first")
            if len(self._peers) >= MAX_AGENTS:
                raise ConfigError(f"this agent knows {MAX_AGENTS} agents, the most it keeps; "
                                  "delete one first")  # fmt: skip
            peer = Peer(name=name, url=url, token=token)
            await self._save({**self._peers, name: peer})
            self._peers[name] = peer
            log.info("agent %r added (%s)", name, url)
            return peer

    async def remove(self, name: str) -> bool:
        async with self._lock:
            if name not in self._peers:
                return False
            rest = {k: v for k, v in self._peers.items() if k != name}
            await self._save(rest)
            self._peers = rest
            client = self._clients.pop(name, None)
        if client is not None:
            await client.aclose()
        log.info("agent %r removed", name)
        return True

    async def _save(self, peers: dict[str, Peer]) -> None:
        items = [{"name": p.name, "url": p.url, "token": p.token} for p in peers.values()]
        data = json.dumps({"agents": items}, indent=2).encode()
        await asyncio.to_thread(_write_private, self.path, data)

    # --- clients and the in-flight bound ------------------------------------------------

    def client(self, peer: Peer) -> httpx.AsyncClient:
        """The keep-alive client of ``peer`` (its token as Bearer)."""
        client = self._clients.get(peer.name)
        if client is None:
            context = tls_from_env()
            client = httpx.AsyncClient(
                base_url=peer.url,
                headers={"Authorization": f"Bearer {peer.token}"},
                verify=context if context is not None else True,
                timeout=httpx.Timeout(READ_S, connect=CONNECT_S, write=WRITE_S, pool=POOL_S),
                limits=httpx.Limits(
                    max_connections=PEER_CONNECTIONS,
                    max_keepalive_connections=8,
                    keepalive_expiry=15.0,
                ),
                follow_redirects=False,
                trust_env=False,
            )
            self._clients[peer.name] = client
            if self._closer is None:
                self._closer = asyncio.get_running_loop().create_task(self._close_at_stop())
        return client

    def acquire(self) -> None:
        """Count one request to a peer, of at most MAX_IN_FLIGHT (BusyError past that);
        :meth:`release` once it is done."""
        if self.ctx.stopping.is_set():
            raise BusyError("the agent is stopping; try again once it is back")
        if self.in_flight >= MAX_IN_FLIGHT:
            raise BusyError(f"{MAX_IN_FLIGHT} requests to other agents are in flight; "
                            "try again in a moment")  # fmt: skip
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One request to a peer (see :meth:`acquire`) for the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    async def _close_at_stop(self) -> None:
        try:
            await self.ctx.stopping.wait()
            if self.in_flight:
                # What is in flight may finish; a stream that does not is cut off.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.ctx.config.drain_timeout / 2):
                        await self._idle.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()


def unknown_agent(name: str) -> Response:
    """404 for an agent name this agent does not know (no error class means that)."""
    return not_found(f"no agent named {name[:64]!r}; add it with POST /api/agents",
                     "agent_not_found")  # fmt: skip


def parse_peer_body(body: Any) -> tuple[str, str, str]:
    """(name, url, token) of ``POST /api/agents``; ConfigError naming the bad field."""
    if not isinstance(body, dict):
        raise ConfigError("send a JSON object {name, url, token}")
    unknown = sorted(set(body) - {"name", "url", "token"})
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown}; send name, url and token")
    name = body.get("name")
    if not isinstance(name, str):
        raise ConfigError("name must be a string")
    return (
        check_name(name, what="agent name"),
        check_url(body.get("url")),
        check_token(body.get("token")),
    )
