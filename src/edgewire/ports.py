"""The opt-in protocol ports an agent can open, in one table.

A protocol port is one sans-IO codec in ``wire/``, one handler module in
``agent/`` and one :class:`PortSpec` in :data:`PORTS`. Everything else is read
from the table: the config key ``legacy_<name>_port`` (TOML, ``EDGEWIRE_*`` env,
``--legacy-<name>-port`` flag), start-up, the capability list of the hello,
``edgewire bench --protocol`` and the list of ports in the docs.

This module is a leaf (standard library only): the codec, handler and load
client are named as ``module:attribute`` strings and imported when used, so
nothing here imports upward.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from edgewire.errors import ConfigError

#: The agent's own ports, always open; their defaults live here once.
DEFAULT_NATIVE_PORT = 7700
DEFAULT_HTTP_PORT = 8000


@dataclasses.dataclass(frozen=True, kw_only=True)
class PortSpec:
    """One opt-in protocol port."""

    #: Short name: ``legacy_<name>_port`` in config, ``--legacy-<name>-port`` on the CLI.
    name: str
    #: One line for ``--help`` and the docs.
    summary: str
    #: The port the seed used, shown as a hint (the port itself stays opt-in).
    seed_port: int
    #: The sans-IO codec module in ``wire/``.
    codec: str
    #: ``module:function`` in ``agent/``: ``function(ctx) -> handler(reader, writer)``.
    handler: str
    #: Listed in the hello's capabilities while the port is open.
    feature: str
    #: ``module:attribute`` of the load client ``edgewire bench`` uses, if it has one.
    load_client: str | None = None
    #: Whether the protocol changes the agent's state (trains, writes to disk).
    changes_state: bool = False
    #: Whether the protocol can carry the agent's token.
    carries_token: bool = False

    @property
    def config_key(self) -> str:
        return f"legacy_{self.name}_port"

    @property
    def flag(self) -> str:
        return f"--legacy-{self.name}-port"

    @property
    def loopback_with_token(self) -> bool:
        """Bound on loopback when the agent has a token: it changes state, yet no
        token can reach it (unless ``public_flag`` names it in ``legacy_public``)."""
        return self.changes_state and not self.carries_token

    @property
    def public_flag(self) -> str:
        return f"--legacy-{self.name}-public"


PORTS: tuple[PortSpec, ...] = (
    PortSpec(
        name="bts0",
        summary="the JettyLink BTS0 batch stream (seed 000): train on the batches a sender streams",
        seed_port=9000,
        codec="edgewire.wire.bts0",
        handler="edgewire.agent.bts0:handler",
        feature="legacy.bts0",
        changes_state=True,
    ),
    PortSpec(
        name="mnistprot",
        summary="the ESP8266 MnistProt flatbuffers protocol (seed 002): 784 floats in, 10 scores out",
        seed_port=32001,
        codec="edgewire.wire.mnistprot",
        handler="edgewire.agent.mnistprot:handler",
        feature="legacy.mnistprot",
        load_client="edgewire.bench.loadgen:MNISTPROT_CLIENT",
    ),
)

_BY_NAME = {spec.name: spec for spec in PORTS}
_BY_KEY = {spec.config_key: spec for spec in PORTS}


def port_spec(name: str) -> PortSpec:
    """The spec of port ``name``; KeyError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown port {name!r}; known: {', '.join(_BY_NAME)}") from None


def spec_for_key(key: str) -> PortSpec | None:
    """The spec whose config key is ``key`` (``legacy_mnistprot_port``), else None."""
    return _BY_KEY.get(key)


def load_attr(path: str) -> Any:
    """The object ``module:attribute`` names (imported now, not at start-up)."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def markdown_list() -> str:
    """The list of opt-in ports that ``docs/protocol.md`` carries (a test keeps it equal)."""
    lines = []
    for spec in PORTS:
        lines.append(
            f"- `{spec.flag} P` (config `{spec.config_key}`, env "
            f"`EDGEWIRE_{spec.config_key.upper()}`; the seed used {spec.seed_port}): "
            f"{spec.summary}. Codec `{spec.codec}`, handler `{spec.handler.partition(':')[0]}`, "
            f"feature `{spec.feature}` in the hello."
            + (
                f" It cannot carry a token: with one set, it binds 127.0.0.1 unless "
                f"`{spec.public_flag}` is given."
                if spec.loopback_with_token
                else ""
            )
        )
    return "\n".join(lines)


def parse_address(value: str, *, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST`` or ``[v6]:PORT`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = value, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad address {value!r}: expected HOST:PORT") from None
    if not 0 < port < 65536:
        raise ConfigError(f"bad port in {value!r}: {port}")
    return host, port
