"""Prometheus metrics of one agent (its own registry, so tests can run several)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgewire.wire.frames import MsgType

#: The protocols whose answers are counted, and whose latencies the dashboard shows.
PROTOCOLS = ("native", "mnistprot", "http")
#: Latencies kept per protocol for the dashboard's p50/p99 (the newest; a deque append).
LATENCY_SAMPLES = 4096


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connections = Gauge(
            "edgewire_open_connections", "Open connections.", ["protocol"], registry=self.registry
        )
        self.connections_total = Counter(
            "edgewire_connections_total",
            "Accepted connections.",
            ["protocol"],
            registry=self.registry,
        )
        self.rejected_total = Counter(
            "edgewire_connections_rejected_total",
            "Connections refused at the per-port limit.",
            ["protocol"],
            registry=self.registry,
        )
        self.frames_total = Counter(
            "edgewire_frames_total", "Frames received.", ["type"], registry=self.registry
        )
        self.errors_total = Counter(
            "edgewire_protocol_errors_total",
            "Connections ended by a protocol error or timeout.",
            ["protocol", "code"],
            registry=self.registry,
        )
        self.train_batches_total = Counter(
            "edgewire_train_batches_total", "Batches applied.", ["split"], registry=self.registry
        )
        self.train_samples_total = Counter(
            "edgewire_train_samples_total", "Training samples applied.", registry=self.registry
        )
        self.train_step_seconds = Histogram(
            "edgewire_train_step_seconds",
            "Time of one training step.",
            buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
            registry=self.registry,
        )

        self.infer_requests_total = Counter(
            "edgewire_infer_requests_total",
            "Inference requests answered.",
            ["protocol"],
            registry=self.registry,
        )
        self.infer_errors_total = Counter(
            "edgewire_infer_errors_total",
            "Inference requests refused or failed.",
            ["protocol", "code"],
            registry=self.registry,
        )

        # Automation: webhooks and the job queue (agent/hooks.py).
        self.hook_deliveries_total = Counter(
            "edgewire_hook_deliveries_total",
            "Webhook deliveries by hook and outcome: accepted, duplicate, ignored (no rule "
            "matched), or the error code that refused it (signature, not_allowed, "
            "rate_limited, ...).",
            ["hook", "outcome"],
            registry=self.registry,
        )
        self.jobs_total = Counter(
            "edgewire_job_attempts_total",
            "Automation job attempts that ended, by kind and outcome "
            "(succeeded, retrying, failed, lost_lease).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.jobs = Gauge(
            "edgewire_jobs", "Automation jobs by state.", ["state"], registry=self.registry
        )

        # Live runs (agent/live.py): camera frames classified, and the pins they drive.
        self.live_runs = Gauge(
            "edgewire_live_runs", "Live runs (edgewire run) in progress.", registry=self.registry
        )
        self.live_frames_total = Counter(
            "edgewire_live_frames_total", "Frames classified by live runs.", registry=self.registry
        )
        self.gpio_transitions_total = Counter(
            "edgewire_gpio_transitions_total",
            "Output pin transitions of live runs (any backend, sim included).",
            ["pin", "level"],
            registry=self.registry,
        )
        self.gpio_level = Gauge(
            "edgewire_gpio_pin_level",
            "Output pin levels (1 high).",
            ["pin"],
            registry=self.registry,
        )

        # Children looked up once: labels() takes a lock and a dict lookup per call.
        self.answered = {p: self.infer_requests_total.labels(p) for p in PROTOCOLS}
        #: Queue + compute milliseconds of the newest answers, by protocol.
        self.latency_ms: dict[str, deque[float]] = {
            p: deque(maxlen=LATENCY_SAMPLES) for p in PROTOCOLS
        }
        self.frames = {t: self.frames_total.labels(t.name) for t in MsgType}

        # TensorRT engine builds (serve/backends/trt_cache): a first build takes minutes.
        self.engine_building = Gauge(
            "edgewire_engine_building", "1 while a TensorRT engine builds.", ["model"],
            registry=self.registry,
        )  # fmt: skip
        self.engine_build_seconds = Gauge(
            "edgewire_engine_build_seconds", "Seconds the latest TensorRT engine build took "
            "(so far, while it runs).", ["model"], registry=self.registry,
        )  # fmt: skip

    def render(self) -> bytes:
        from edgewire.serve.backends.trt_cache import BUILDS

        for model, build in BUILDS.all().items():
            self.engine_building.labels(model).set(1 if build["state"] == "building" else 0)
            self.engine_build_seconds.labels(model).set(build["elapsed_s"] or 0.0)
        return generate_latest(self.registry)


#: Batcher counters exported per model: (stats key, metric name, help, counter or gauge).
_BATCHER_METRICS = (
    ("batches", "edgewire_batches_total", "Model calls run by the batcher.", True),
    ("rows", "edgewire_batch_rows_total", "Rows (samples) in those calls.", True),
    ("requests", "edgewire_batched_requests_total", "Requests answered by them.", True),
    ("model_cpu_seconds", "edgewire_model_cpu_seconds_total",
     "CPU time of the model calls, by the clock of the thread that ran them.", True),
    ("model_seconds", "edgewire_model_seconds_total", "Wall time of the model calls.", True),
    ("queue_depth", "edgewire_queue_depth", "Requests waiting for their batch.", False),
)  # fmt: skip


class BatcherCollector:
    """The batchers' own counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, stats: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        by_model = self._stats()
        for key, name, text, counter in _BATCHER_METRICS:
            family: CounterMetricFamily | GaugeMetricFamily
            if counter:
                family = CounterMetricFamily(name.removesuffix("_total"), text, labels=["model"])
            else:
                family = GaugeMetricFamily(name, text, labels=["model"])
            for model, stats in sorted(by_model.items()):
                family.add_metric([model], stats[key])
            yield family
