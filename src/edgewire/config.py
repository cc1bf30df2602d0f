"""Configuration as small typed objects, read from a TOML file, the environment
(``EDGEWIRE_*``) and flags; later sources win: file < env < flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

from edgewire.errors import ConfigError

ENV_PREFIX = "EDGEWIRE_"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgewire"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig:
    host: str = "127.0.0.1"
    port: int = 7700
    http_port: int = 8000
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    token: str | None = None
    legacy_bts0_port: int | None = None
    legacy_mnistprot_port: int | None = None
    legacy_mnistprot_model: str | None = None
    #: The model a BTS0 connection trains (the seed's tester used an MNIST CNN).
    bts0_model: str = "mnist_cnn"
    #: Seconds a connection may stay silent between frames.
    idle_timeout: float = 300.0
    #: Seconds a frame may take from its first byte to its last.
    frame_timeout: float = 30.0
    #: Largest frame payload accepted (bytes).
    max_frame_bytes: int = 64 * 1024 * 1024
    #: Bytes all native connections together may hold in frames still arriving.
    max_buffered_bytes: int = 512 * 1024 * 1024
    #: Most batches a training stream may have in flight (credits).
    max_train_window: int = 32
    #: Most simultaneous connections per listening port.
    max_connections: int = 20_000
    #: Seconds SIGTERM waits for in-flight work before closing connections.
    drain_timeout: float = 10.0
    #: Rows per model call when batching requests together.
    max_batch_size: int = 32
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
    body_timeout: float = 10.0
    #: Requests one native connection may have in flight.
    max_inflight_per_connection: int = 64

    def __post_init__(self) -> None:
        for name in ("port", "http_port", "legacy_bts0_port", "legacy_mnistprot_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ConfigError(f"{name} must be a TCP port (0-65535), got {value!r}")
        for name in ("idle_timeout", "frame_timeout", "drain_timeout", "body_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_buffered_bytes < self.max_frame_bytes:
            raise ConfigError(
                f"max_buffered_bytes ({self.max_buffered_bytes}) must be at least "
                f"max_frame_bytes ({self.max_frame_bytes}), or no whole frame could arrive"
            )
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the token must be at least 8 characters long")

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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_config(
    cls: type[AgentConfig],
    *,
    flags: dict[str, Any],
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> AgentConfig:
    """Merge file < env < flags (flags whose value is None are 'not given')."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {str(config_file)!r}: {exc}") from exc
        section = raw.get("agent", raw)
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"unknown setting {key!r} in {str(config_file)!r}")
            values[name] = value
    env = os.environ if environ is None else environ
    for name in fields:
        raw_env = env.get(ENV_PREFIX + name.upper())
        if raw_env is not None and raw_env != "":
            values[name] = raw_env
    values.update({k: v for k, v in flags.items() if v is not None})
    return cls(**{name: _coerce(name, fields[name].type, v) for name, v in values.items()})


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    kind = str(annotation)
    try:
        if "Path" in kind:
            return Path(value).expanduser()
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} has a bad value {value!r}: {exc}") from exc
    return value
