"""Picking the split point with the lowest predicted end-to-end latency.

The link model is the one ``edgewire.bench.linkemu.LinkSpec.from_mbit_rtt``
emulates: each direction is rate-limited to ``mbit`` Mbit/s on its own and
delays what it carries by rtt/2. One request then costs

    slowdown × head_ms                      the head, on a device K times slower than here
    + rtt_ms                                 rtt/2 out, rtt/2 back
    + (request + response bytes) × 8 / rate  each frame serialised onto its direction
    + tail_ms                                the tail, on the server (this machine)

with no rtt for ``local``, where nothing crosses. :class:`Overheads` adds what the
models' own times leave out, when known (``benchmarks/split.py`` measures them):
``hop_ms`` for each agent a request passes (framing, batching, the hand-off to the
model thread: one for local and offload, two for a split), ``call_ms`` for each
model call beyond the runtime's own time (stretched by the slowdown on the device),
and ``link_ms`` for each round trip over the link beyond rtt and serialisation
(TCP, timers). Not modelled: slow start, queueing behind other requests, loss.

No torch here: a profile is plain data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgewire.errors import ConfigError
from edgewire.split.profile import Candidate, Profile


@dataclass(frozen=True, kw_only=True)
class Overheads:
    """Costs a profile of model times does not see (ms); see the module docstring."""

    hop_ms: float = 0.0
    call_ms: float = 0.0
    link_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("hop_ms", "call_ms", "link_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a number of ms >= 0, got {value!r}")


def check_link(*, mbit: float, rtt_ms: float, slowdown: float) -> None:
    """Refuse a bandwidth, RTT or slowdown that no link or device has."""
    if not (math.isfinite(mbit) and mbit > 0):
        raise ConfigError(f"bandwidth must be a positive number of Mbit/s, got {mbit!r}")
    if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
        raise ConfigError(f"rtt must be a number of ms >= 0, got {rtt_ms!r}")
    if not (math.isfinite(slowdown) and slowdown > 0):
        raise ConfigError(f"device slowdown must be a positive factor, got {slowdown!r}")


def predict_ms(
    candidate: Candidate,
    *,
    mbit: float,
    rtt_ms: float,
    slowdown: float,
    overheads: Overheads | None = None,
) -> float:
    """The predicted latency of one request run as ``candidate`` (see the module docstring)."""
    check_link(mbit=mbit, rtt_ms=rtt_ms, slowdown=slowdown)
    o = overheads or Overheads()
    crossing = candidate.request_bytes + candidate.response_bytes
    device = slowdown * (candidate.head_ms + o.call_ms) if candidate.head_ms > 0 else 0.0
    if candidate.kind == "local" and crossing == 0:
        return device + o.hop_ms
    wire_ms = crossing * 8 / (mbit * 1e3)
    server = candidate.tail_ms + o.call_ms if candidate.tail_ms > 0 else 0.0
    hops = 2 if candidate.kind == "split" else 1
    return device + rtt_ms + wire_ms + o.link_ms + server + hops * o.hop_ms


def suggest(
    profile: Profile,
    *,
    mbit: float,
    rtt_ms: float,
    slowdown: float,
    overheads: Overheads | None = None,
) -> tuple[Candidate, list[tuple[Candidate, float]]]:
    """(the fastest candidate, every candidate with its prediction, in profile order).

    A tie goes to the candidate listed first.
    """
    check_link(mbit=mbit, rtt_ms=rtt_ms, slowdown=slowdown)
    predictions = [
        (c, predict_ms(c, mbit=mbit, rtt_ms=rtt_ms, slowdown=slowdown, overheads=overheads))
        for c in profile.candidates
    ]
    if not predictions:
        raise ConfigError("the profile has no candidates")
    best = min(predictions, key=lambda item: item[1])[0]
    return best, predictions
