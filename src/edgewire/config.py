"""Configuration as small typed objects, read from a TOML file, the environment
(``EDGEWIRE_*``) and flags; later sources win: defaults < file < env < flags.

Every value is coerced by the type its field declares (``int``, ``float``,
``bool``, ``Path``, ``str``, ``X | None``, ``Mapping[str, X]``), so that
``EDGEWIRE_X=false`` is False and ``EDGEWIRE_PORT=7e3`` is refused, and a bad
value is one line that names the setting, where it came from and the value.

The opt-in protocol ports are one mapping, ``legacy_ports`` (name -> port). Each
source may also give them one by one as ``legacy_<name>_port``, the keys that
:data:`edgewire.ports.PORTS` defines: a later source adds or replaces single
ports there, it does not close the ports an earlier one opened.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgewire.automation.config import AutomationConfig, load_automation
from edgewire.errors import ConfigError
from edgewire.ports import (
    DEFAULT_HTTP_PORT,
    DEFAULT_NATIVE_PORT,
    PORTS,
    port_spec,
    spec_for_key,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

ENV_PREFIX = "EDGEWIRE_"

C = TypeVar("C", bound="DataclassInstance")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgewire"


#: A field's ``metadata["table"]``: builds its value from a TOML table.
TableLoader = Callable[..., Any]

# A field's ``metadata["expect"]``: what a valid value is, in words, and the test.
Expect = tuple[str, Callable[[Any], bool]]


def _expect(words: str, ok: Callable[[Any], bool]) -> dict[str, Expect]:
    return {"expect": (words, ok)}


def _is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


_TCP_PORT = "a TCP port (0-65535)"
_PORT = _expect(_TCP_PORT, _is_port)
_POSITIVE = _expect("a positive number", lambda value: value > 0)
_AT_LEAST_1 = _expect("at least 1", lambda value: value >= 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig:
    host: str = "127.0.0.1"
    port: int = dataclasses.field(default=DEFAULT_NATIVE_PORT, metadata=_PORT)
    http_port: int = dataclasses.field(default=DEFAULT_HTTP_PORT, metadata=_PORT)
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    # Never in a repr or an error message.
    token: str | None = dataclasses.field(default=None, repr=False, metadata={"secret": True})
    #: The opt-in protocol ports to open, by name in :data:`edgewire.ports.PORTS` (0: any free one).
    legacy_ports: Mapping[str, int] = dataclasses.field(default_factory=dict)
    legacy_mnistprot_model: str | None = None
    #: The model a BTS0 connection trains (the seed's tester used an MNIST CNN).
    bts0_model: str = "mnist_cnn"
    #: Seconds a connection may stay silent between frames.
    idle_timeout: float = dataclasses.field(default=300.0, metadata=_POSITIVE)
    #: Seconds a frame may take from its first byte to its last.
    frame_timeout: float = dataclasses.field(default=30.0, metadata=_POSITIVE)
    #: Largest frame payload accepted (bytes).
    max_frame_bytes: int = 64 * 1024 * 1024
    #: Bytes all native connections together may hold in frames still arriving.
    max_buffered_bytes: int = 512 * 1024 * 1024
    #: Most batches a training stream may have in flight (credits).
    max_train_window: int = 32
    #: Most simultaneous connections per listening port.
    max_connections: int = 20_000
    #: At a port's connection cap, a new connection takes the place of the one silent
    #: longest if that one has been silent this many seconds; else it is refused.
    idle_evict_after: float = dataclasses.field(default=10.0, metadata=_POSITIVE)
    #: Seconds SIGTERM waits for in-flight work before closing connections.
    drain_timeout: float = dataclasses.field(default=10.0, metadata=_POSITIVE)
    #: Rows per model call when batching requests together.
    max_batch_size: int = 32
    #: Rows one inference request may carry; more than max_batch_size are split into batches.
    max_request_rows: int = dataclasses.field(default=4096, metadata=_AT_LEAST_1)
    #: How long the first request of a batch may wait for company (ms).
    max_queue_delay_ms: float = 2.0
    #: Requests waiting per model; beyond this clients get a fast "busy".
    max_queue: int = 4096
    #: ONNX Runtime threads inside one model call (0: its default).
    intra_op_threads: int = 0
    #: Largest model upload accepted over HTTP (bytes).
    max_upload_bytes: int = 512 * 1024 * 1024
    #: Largest HTTP inference request body (bytes).
    max_request_bytes: int = 16 * 1024 * 1024
    #: Seconds an HTTP body may pause between chunks (slow senders are cut off).
    body_timeout: float = dataclasses.field(default=10.0, metadata=_POSITIVE)
    #: Opt-in ports that cannot carry a token (BTS0) bind loopback only when a token is
    #: set, unless named here (``--legacy-bts0-public``).
    legacy_public: frozenset[str] = frozenset()
    #: Bytes that runs, checkpoints, uploads and model versions may take in the data dir.
    max_disk_bytes: int = dataclasses.field(default=16 * 1024**3, metadata=_AT_LEAST_1)
    #: Free space kept on the data dir's file system; below it, new work is refused.
    min_free_disk_bytes: int = 64 * 1024 * 1024
    #: Finished training runs kept in the data dir; older ones are pruned first.
    max_finished_runs: int = dataclasses.field(default=20, metadata=_AT_LEAST_1)
    #: Largest model a training run may build (parameters × bytes per parameter).
    max_train_model_bytes: int = dataclasses.field(default=256 * 1024 * 1024, metadata=_AT_LEAST_1)
    #: Seconds a model version no alias points to is kept before it is cleaned up.
    unused_version_ttl_s: float = dataclasses.field(default=7 * 86400.0, metadata=_POSITIVE)
    #: Requests one native connection may have in flight.
    max_inflight_per_connection: int = 64
    #: The token of the servers that run this agent's split tails (default: ``token``).
    tail_token: str | None = dataclasses.field(default=None, repr=False, metadata={"secret": True})
    #: Seconds a split head waits for its tail server (connecting and answering).
    tail_timeout: float = dataclasses.field(default=10.0, metadata=_POSITIVE)
    #: Benchmarks only: stretch every model call to this many times its duration, to
    #: stand for a device that computes K× slower than this machine (1: off).
    emulate_slowdown: float = dataclasses.field(
        default=1.0, metadata=_expect("at least 1", lambda value: value >= 1)
    )
    # --- remote training (POST /api/datasets, PUT /api/blobs, POST /api/train) ---
    #: Files one uploaded data set may list.
    max_dataset_files: int = dataclasses.field(default=200_000, metadata=_AT_LEAST_1)
    #: Bytes one uploaded data set may hold (all its files together).
    max_dataset_bytes: int = dataclasses.field(default=4 * 1024**3, metadata=_AT_LEAST_1)
    #: Bytes a remote run's images may take in memory once loaded (files × 3 × size², about
    #: three copies while training); a bigger image_size or data set is refused up front.
    max_train_data_bytes: int = dataclasses.field(default=2 * 1024**3, metadata=_AT_LEAST_1)
    #: Seconds uploaded files and data sets no run uses are kept (for an upload to resume).
    dataset_ttl_s: float = dataclasses.field(default=86400.0, metadata=_POSITIVE)
    #: Events a remote training run keeps for followers to catch up on (a ring).
    max_train_events: int = dataclasses.field(default=20_000, metadata=_AT_LEAST_1)
    #: TLS on the native and HTTP ports: a PEM certificate (chain) and its key, both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Live runs (``edgewire run``): the agent's own actions file (the only place a
    #: command may come from), the URL prefixes a run's POSTs may go to, the folders and
    #: URL prefixes its sources may come from (cameras need no entry), and how many
    #: runs at once.
    actions_file: Path | None = None
    run_post_allow: frozenset[str] = frozenset()
    run_source_allow: frozenset[str] = frozenset()
    max_live_runs: int = dataclasses.field(default=4, metadata=_AT_LEAST_1)
    #: Webhooks, polling and the job queue (the file's ``[automation]`` table; None: off).
    automation: AutomationConfig | None = dataclasses.field(
        default=None, metadata={"table": load_automation}
    )

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            problem = _problem(field, value)
            if problem is not None:
                raise ConfigError(f"{field.name} must be {problem}, got {_shown(field, value)}")
        ports = dict(self.legacy_ports)
        for name, port in ports.items():
            problem = _port_problem(name, port)
            if problem is not None:
                raise ConfigError(f"legacy_ports: {problem}")
        # Frozen all the way down: the mapping cannot change under a running agent.
        object.__setattr__(self, "legacy_ports", types.MappingProxyType(ports))
        if self.max_buffered_bytes < self.max_frame_bytes:
            raise ConfigError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                f"max_frame_bytes ({self.max_frame_bytes}), or no whole frame could arrive"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the token must be at least 8 characters long")

    def port_of(self, name: str) -> int | None:
        """The port to open for protocol ``name`` (``ports.PORTS``), or None: not opened."""
        port_spec(name)  # KeyError: an unknown name is a bug in the caller, not a closed port
        return self.legacy_ports.get(name)

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    def check_bind_safety(self) -> None:
        """Refuse to listen beyond loopback with no token: management would be open."""
        if not self.loopback_only and not self.token:
            raise ConfigError(
                f"refusing to bind {self.host!r} without a token; "
                "set --token (or EDGEWIRE_TOKEN), or bind 127.0.0.1"
            )


def field_default(cls: type[DataclassInstance], name: str) -> Any:
    """The default of field ``name`` of ``cls`` (for CLI help, without building a config)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _problem(field: dataclasses.Field[Any], value: Any) -> str | None:
    """What ``value`` should be, in words, if the field's own check refuses it."""
    expect: Expect | None = field.metadata.get("expect")
    if expect is None or value is None or expect[1](value):
        return None
    return expect[0]


def _port_problem(name: Any, port: Any) -> str | None:
    if not _known_port(name):
        return _unknown_port(name)
    if not _is_port(port):
        return f"port {name!r} must be {_TCP_PORT}, got {port!r}"
    return None


def _known_port(name: Any) -> bool:
    return any(spec.name == name for spec in PORTS)


def _unknown_port(name: Any) -> str:
    return f"unknown port {name!r}; known: {', '.join(spec.name for spec in PORTS)}"


def _shown(field: dataclasses.Field[Any], value: Any) -> str:
    return "<hidden>" if field.metadata.get("secret") else repr(value)


# --- loading -----------------------------------------------------------------------------


def load_config(
    cls: type[C],
    *,
    flags: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Merge defaults < file < env < flags into a ``cls``.

    Keys are field names, or ``legacy_<name>_port`` when ``cls`` has ``legacy_ports``;
    flags whose value is None are 'not given', and so are empty env variables. A field
    whose metadata names a ``table`` loader is read from the file's table of that name
    (``[automation]``), by that loader, and from nowhere else.
    """
    loader = _Loader(cls)
    env = os.environ if environ is None else environ
    if config_file is not None:
        where = f"file {str(config_file)!r}"
        section, tables = _read_toml(config_file, tables=loader.tables)
        for key, value in section.items():
            loader.put(key.replace("-", "_"), value, where, key=key)
        for name, raw in tables.items():
            loader.values[name] = loader.tables[name](raw, source=where, environ=env)
    for name in loader.names():
        variable = ENV_PREFIX + name.upper()
        raw = env.get(variable)
        if raw is not None and raw != "":
            loader.put(name, raw, f"env {variable}")
    for name, value in flags.items():
        if value is not None:
            loader.put(name, value, f"flag --{name.replace('_', '-')}")
    return cls(**loader.values)


def _read_toml(path: Path, *, tables: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``[agent]`` settings (the whole file when it has no ``[agent]``), and the
    top-level tables named in ``tables``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
    found = {name: raw.pop(name) for name in tables if name in raw}
    section = raw.get("agent", raw)
    if not isinstance(section, dict):
        raise ConfigError(f"[agent] in {str(path)!r} must be a table, got {section!r}")
    return section, found


class _Loader:
    """The values given so far for one config class, coerced and checked as they come."""

    def __init__(self, cls: type[DataclassInstance]) -> None:
        fields = [f for f in dataclasses.fields(cls) if f.init]
        #: Fields read from a table of the file by a loader of their own, not key by key.
        self.tables: dict[str, TableLoader] = {
            f.name: f.metadata["table"] for f in fields if "table" in f.metadata
        }
        self._fields = {f.name: f for f in fields if f.name not in self.tables}
        self._hints = typing.get_type_hints(cls)
        self._ports = "legacy_ports" in self._fields
        self.values: dict[str, Any] = {}

    def names(self) -> list[str]:
        """Every key a source may give: the fields, then the ports one by one."""
        return [*self._fields, *(spec.config_key for spec in PORTS if self._ports)]

    def put(self, name: str, raw: Any, source: str, *, key: str | None = None) -> None:
        spec = spec_for_key(name) if self._ports else None
        if spec is not None:
            port = _coerced(name, int, raw, source, secret=False)
            if not _is_port(port):
                raise _bad(name, source, repr(raw), _TCP_PORT)
            self._merge("legacy_ports", {spec.name: port})
            return
        field = self._fields.get(name)
        if field is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown setting {key or name!r} in {source}{hint}")
        secret = bool(field.metadata.get("secret"))
        value = _coerced(name, self._hints[name], raw, source, secret=secret)
        problem = _problem(field, value)
        if problem is not None:
            raise _bad(name, source, _shown(field, raw), problem)
        if self._ports and name == "legacy_ports":
            for port_name, port in value.items():
                if not _known_port(port_name):
                    raise ConfigError(f"bad legacy_ports from {source}: {_unknown_port(port_name)}")
                if not _is_port(port):
                    raise _bad(f"legacy_ports[{port_name!r}]", source, repr(port), _TCP_PORT)
        if isinstance(value, dict):
            self._merge(name, value)
        else:
            self.values[name] = value

    def _merge(self, name: str, mapping: dict[str, Any]) -> None:
        """A later source adds to (or replaces entries of) a mapping, not all of it."""
        self.values[name] = {**self.values.get(name, {}), **mapping}


def _coerced(name: str, hint: Any, raw: Any, source: str, *, secret: bool) -> Any:
    try:
        return coerce(hint, raw)
    except _BadValue as exc:
        raise _bad(
            name + exc.at, source, "<hidden>" if secret else repr(exc.value), exc.expected
        ) from None


def _bad(name: str, source: str, shown: str, expected: str) -> ConfigError:
    return ConfigError(f"bad {name} from {source}: {shown} is not {expected}")


# --- coercion by declared type ---------------------------------------------------------------


class _BadValue(Exception):
    def __init__(self, value: Any, expected: str, at: str = "") -> None:
        super().__init__(expected)
        self.value, self.expected, self.at = value, expected, at


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# ASCII only: int() and float() also take "1_000", " 7 " and non-ASCII digits.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def coerce(hint: Any, raw: Any) -> Any:
    """``raw`` (a string from env or a flag, or a TOML value) as type ``hint``.

    Supported: bool, int, float (finite), Path (``~`` expanded), str, ``X | None``,
    ``Mapping[str, X]`` (a TOML table, or ``name=value,name=value`` as text) and
    ``frozenset[X]`` (a TOML array, or ``a,b`` as text).
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if raw is None:
            return None
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) != 1:
            raise TypeError(f"config fields take one type or that type | None, not {hint!r}")
        return coerce(args[0], raw)
    if origin in (Mapping, dict):
        key_type, value_type = typing.get_args(hint)
        mapping: dict[Any, Any] = {}
        for key, value in _items(raw):
            try:
                mapping[coerce(key_type, key)] = coerce(value_type, value)
            except _BadValue as exc:
                raise _BadValue(exc.value, exc.expected, f"[{key!r}]") from None
        return mapping
    if origin is frozenset:
        (item_type,) = typing.get_args(hint)
        items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple | set | frozenset):
            raise _BadValue(raw, "a list")
        return frozenset(coerce(item_type, item) for item in items)
    if hint is bool:
        return _bool(raw)
    if hint is int:
        return _int(raw)
    if hint is float:
        return _float(raw)
    if hint is Path:
        if isinstance(raw, str | os.PathLike) and str(raw):
            return Path(raw).expanduser()
        raise _BadValue(raw, "a path")
    if hint is str:
        if isinstance(raw, str):
            return raw
        raise _BadValue(raw, "a string")
    raise TypeError(f"no coercion to {hint!r} for config fields")


def _items(raw: Any) -> list[tuple[Any, Any]]:
    if isinstance(raw, Mapping):
        return list(raw.items())
    if isinstance(raw, str):
        items = []
        for pair in raw.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise _BadValue(raw, "a table (name=value,name=value as text)")
            items.append((key.strip(), value.strip()))
        return items
    raise _BadValue(raw, "a table (name=value,name=value as text)")


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise _BadValue(raw, "a boolean (1/0, true/false, yes/no, on/off)")


def _int(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT.fullmatch(raw):
        return int(raw)
    raise _BadValue(raw, "an integer")


def _float(raw: Any) -> float:
    number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if not (number or (isinstance(raw, str) and _FLOAT.fullmatch(raw))):
        raise _BadValue(raw, "a finite number")
    value = float(raw)
    if not math.isfinite(value):
        raise _BadValue(raw, "a finite number")
    return value
