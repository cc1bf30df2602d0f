"""Server-sent events, sans-IO: what the agent's event streams (remote training, live
runs) send, and the decoder their followers read them with.

Each event is ``id: N``, ``event: KIND`` and one ``data:`` line of strict JSON, then a
blank line; a line starting with ``:`` is a keep-alive comment. The decoder takes
the stream's bytes as they come (an HTTP client's ``iter_lines`` would hold a line
without end in memory) and returns whole events; a line or an event over its cap is
a ``FrameTooLarge``, never an unbounded buffer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgewire.errors import FrameTooLarge, ProtocolError
from edgewire.jsonsafe import finite, loads_strict

#: Largest event a follower accepts (a run's summary with its report is a few KB).
MAX_EVENT_BYTES = 1 << 20
KEEPALIVE = b": keep-alive\n\n"


def encode(kind: str, data: dict[str, Any], *, seq: int | None = None) -> bytes:
    """One event; a NaN score from a model goes out as null, not as a broken stream."""
    head = f"id: {seq}\n" if seq is not None else ""
    body = json.dumps(finite(data), allow_nan=False, separators=(",", ":"))
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()


@dataclass(frozen=True)
class Event:
    seq: int | None
    kind: str
    data: dict[str, Any]


class Decoder:
    """``feed(bytes)`` gives the events completed so far; ``line(str)`` takes one line."""

    def __init__(self, *, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_bytes
        self._pending = b""
        self._reset()

    def feed(self, data: bytes) -> list[Event]:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        if len(self._pending) > self._max:
            raise FrameTooLarge(f"a line of the agent's stream is over {self._max} bytes")
        events = []
        for raw in lines:
            event = self.line(raw.removesuffix(b"\r").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _reset(self) -> None:
        self._seq: int | None = None
        self._kind = "message"
        self._data: list[str] = []
        self._size = 0

    def line(self, line: str) -> Event | None:
        self._size += len(line) + 1
        if self._size > self._max:
            raise FrameTooLarge(f"an event of the agent's stream is over {self._max} bytes")
        if not line:
            if not self._data:
                self._reset()
                return None
            text = "\n".join(self._data)
            seq, kind = self._seq, self._kind
            self._reset()
            data = loads_strict(text, what="event data")
            if not isinstance(data, dict):
                raise ProtocolError(f"an event's data must be a JSON object, got {text[:60]!r}")
            return Event(seq=seq, kind=kind, data=data)
        if line.startswith(":"):
            self._size -= len(line) + 1  # keep-alives do not add up to an event
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._seq = int(value) if value.isascii() and value.isdigit() else None
        elif name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        return None
