"""Picking the split point with the lowest predicted end-to-end latency.

The link model is the one ``edgewire.bench.linkemu.LinkSpec.from_mbit_rtt``
emulates: each direction is rate-limited to ``mbit`` Mbit/s on its own and
delays what it carries by rtt/2. One request then costs

    slowdown × head_ms                      the head, on a device K times slower than here
    + rtt_ms                                 rtt/2 out, rtt/2 back
    + (request + response bytes) × 8 / rate  each frame serialised onto its direction
    + tail_ms                                the tail, on the server (this machine)

with no rtt for ``local``, where nothing crosses. Not modelled: TCP/IP overhead
and slow start, queueing behind other requests, and loss.

No torch here: a profile is plain data.
"""

from __future__ import annotations

import math

from edgewire.errors import ConfigError
from edgewire.split.profile import Candidate, Profile


def check_link(*, mbit: float, rtt_ms: float, slowdown: float) -> None:
    """Refuse a bandwidth, RTT or slowdown that no link or device has."""
    if not (math.isfinite(mbit) and mbit > 0):
        raise ConfigError(f"bandwidth must be a positive number of Mbit/s, got {mbit!r}")
    if not (math.isfinite(rtt_ms) and rtt_ms >= 0):
        raise ConfigError(f"rtt must be a number of ms >= 0, got {rtt_ms!r}")
    if not (math.isfinite(slowdown) and slowdown > 0):
        raise ConfigError(f"device slowdown must be a positive factor, got {slowdown!r}")


def predict_ms(candidate: Candidate, *, mbit: float, rtt_ms: float, slowdown: float) -> float:
    """The predicted latency of one request run as ``candidate`` (see the module docstring)."""
    check_link(mbit=mbit, rtt_ms=rtt_ms, slowdown=slowdown)
    crossing = candidate.request_bytes + candidate.response_bytes
    if candidate.kind == "local" and crossing == 0:
        return slowdown * candidate.head_ms
    wire_ms = crossing * 8 / (mbit * 1e3)
    return slowdown * candidate.head_ms + rtt_ms + wire_ms + candidate.tail_ms


def suggest(
    profile: Profile, *, mbit: float, rtt_ms: float, slowdown: float
) -> tuple[Candidate, list[tuple[Candidate, float]]]:
    """(the fastest candidate, every candidate with its prediction, in profile order).

    A tie goes to the candidate listed first.
    """
    check_link(mbit=mbit, rtt_ms=rtt_ms, slowdown=slowdown)
    predictions = [
        (c, predict_ms(c, mbit=mbit, rtt_ms=rtt_ms, slowdown=slowdown)) for c in profile.candidates
    ]
    if not predictions:
        raise ConfigError("the profile has no candidates")
    best = min(predictions, key=lambda item: item[1])[0]
    return best, predictions
