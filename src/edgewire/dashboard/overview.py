"""What the overview page shows: the agent, its machine, and each protocol's traffic.

Read from the agent's own metrics registry and latency windows; requests per second
come from the difference between two samples, so each follower keeps its previous one.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgewire import __version__
from edgewire.agent.context import PortContext
from edgewire.agent.metrics import PROTOCOLS
from edgewire.errors import EdgewireError

STARTED = time.monotonic()


def _samples(registry: Any, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of ``metric`` (its full name, e.g. ``..._total``) by its labels."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == metric:
                found[tuple(sorted(sample.labels.items()))] = float(sample.value)
    return found


def _by_protocol(values: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in values.items():
        protocol = dict(labels).get("protocol")
        if protocol is not None:
            out[protocol] = out.get(protocol, 0.0) + value
    return out


def _percentile(values: list[float], q: float) -> float | None:
    return None if not values else round(float(np.percentile(values, q)), 3)


def _meminfo() -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                found[key] = int(parts[0]) // 1024
    except OSError:
        pass
    return found


def _rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def device() -> dict[str, Any]:
    """The machine: CPUs, memory, the accelerators ONNX Runtime can use, a Jetson's model."""
    try:
        import onnxruntime

        providers = list(onnxruntime.get_available_providers())
    except Exception:  # an inference-less install still shows its overview
        providers = []
    board = None
    try:
        text = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode("utf-8", "replace")
        board = text[:80] or None
    except OSError:
        pass
    mem = _meminfo()
    return {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "memory_mb": mem.get("MemTotal"),
        "memory_available_mb": mem.get("MemAvailable"),
        "accelerators": [
            p.removesuffix("ExecutionProvider") for p in providers if p != "AzureExecutionProvider"
        ],
        "gpu": any(p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")),
        "board": board,
    }


@dataclass
class Sampler:
    """One follower's previous counts, for requests per second."""

    last: dict[str, float] = field(default_factory=dict)
    at: float | None = None

    def sample(self, ctx: PortContext) -> dict[str, Any]:
        metrics = ctx.metrics
        registry = metrics.registry
        answered = _by_protocol(_samples(registry, "edgewire_infer_requests_total"))
        errors = _by_protocol(_samples(registry, "edgewire_infer_errors_total"))
        dropped = _by_protocol(_samples(registry, "edgewire_protocol_errors_total"))
        connections = _by_protocol(_samples(registry, "edgewire_open_connections"))
        now = time.monotonic()
        elapsed = None if self.at is None else now - self.at
        protocols = {}
        for name in PROTOCOLS:
            count = answered.get(name, 0.0)
            rate = None
            if elapsed is not None and elapsed > 0:
                rate = round(max(count - self.last.get(name, 0.0), 0.0) / elapsed, 2)
            recent = list(metrics.latency_ms[name])[-1024:]
            protocols[name] = {
                "requests": int(count),
                "rps": rate,
                "errors": int(errors.get(name, 0.0) + dropped.get(name, 0.0)),
                "p50_ms": _percentile(recent, 50),
                "p99_ms": _percentile(recent, 99),
                "connections": int(connections.get(name, 0.0)),
            }
        self.last, self.at = answered, now
        serving = ctx.serving
        models = []
        for name in serving.names():
            try:
                version = serving.loaded(name).version.version
            except EdgewireError:  # unloaded between the two calls: left out of this sample
                continue
            route = ctx.split.route(name)
            split = None
            if route is not None:
                split = {"tail": route.tail, "at": route.address, "coder": route.coder}
            models.append({"name": name, "version": version, "split": split})
        return {
            "version": __version__,
            "ready": ctx.is_ready(),
            "uptime_s": round(now - STARTED, 1),
            "rss_mb": _rss_mb(),
            "clients": int(sum(connections.values())),
            "protocols": protocols,
            "models": models,
            "token_required": bool(ctx.config.token),
        }
