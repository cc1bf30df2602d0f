"""Where a head's tail lives: metadata keys of a split head, read by the device agent.

``edgewire deploy SPLIT_DIR --tail-to SERVER`` writes these into the head's
ONNX ``metadata_props`` before uploading it, so the route is part of the
version (a rollback restores the tail it had) and a head needs nothing else:

- ``edgewire.split.tail``: ``HOST:PORT/MODEL``, the server's native port and the
  tail's model name there;
- ``edgewire.split.coder``: the coder of the bottleneck (``rans`` when the head
  carries a prior, else ``zstd``);
- ``edgewire.split.fallback``: the model this agent runs instead when the
  server is unreachable and the request asks for ``fallback: local``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgewire.errors import ConfigError, DataError
from edgewire.split.codec import PRIOR_KEY, TENSOR_CODERS, Prior

AT_KEY = "edgewire.split.at"
TAIL_KEY = "edgewire.split.tail"
CODER_KEY = "edgewire.split.coder"
FALLBACK_KEY = "edgewire.split.fallback"


@dataclass(frozen=True, kw_only=True)
class Route:
    host: str
    port: int
    tail: str
    coder: str
    fallback: str | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def to_metadata(self) -> dict[str, str]:
        props = {TAIL_KEY: f"{self.address}/{self.tail}", CODER_KEY: self.coder}
        if self.fallback:
            props[FALLBACK_KEY] = self.fallback
        return props


def parse_tail(text: str) -> tuple[str, int, str]:
    """``HOST:PORT/MODEL`` (IPv6 hosts in brackets) -> (host, port, model)."""
    where, sep, model = text.rpartition("/")
    host, colon, port = where.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not colon or not host or not port.isdigit() or not model:
        raise ConfigError(f"a tail is HOST:PORT/MODEL, got {text!r}")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"tail port {port} is not a TCP port")
    return host, int(port), model


def route_of(metadata: Mapping[str, str]) -> Route | None:
    """The route a head model's metadata names; None for a model that is not a split head."""
    tail = metadata.get(TAIL_KEY)
    if tail is None or AT_KEY not in metadata:
        return None
    try:
        host, port, model = parse_tail(tail)
    except ConfigError as exc:
        raise DataError(f"this split head's tail is unreadable: {exc}") from None
    coder = metadata.get(CODER_KEY) or ("rans" if PRIOR_KEY in metadata else "zstd")
    if coder not in TENSOR_CODERS:
        raise DataError(f"this split head names an unknown coder {coder!r}")
    return Route(host=host, port=port, tail=model, coder=coder, fallback=metadata.get(FALLBACK_KEY))


def prior_of(metadata: Mapping[str, str]) -> Prior | None:
    text = metadata.get(PRIOR_KEY)
    return Prior.from_json(text) if text is not None else None


def stamp_route(head: Path, out: Path, route: Route) -> Path:
    """Write a copy of ``head`` (head.onnx) to ``out`` with ``route`` in its metadata."""
    import onnx

    proto = onnx.load(str(head))
    props = {p.key: p.value for p in proto.metadata_props}
    if AT_KEY not in props:
        raise ConfigError(f"{head} is not a split head (no {AT_KEY} in its metadata)")
    if route.coder == "rans" and PRIOR_KEY not in props:
        raise ConfigError(f"{head} carries no bottleneck prior: use --coder zstd or raw")
    props.update(route.to_metadata())
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out
