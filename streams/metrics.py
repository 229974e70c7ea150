"""Prometheus metrics of the worker and the sink: their definitions, the HTTP endpoint, and the scrape parser.

Every metric is named `defectstream_*` and lives in a registry of its own instance
(`WorkerMetrics()` / `SinkMetrics()`), never in prometheus-client's global default registry, so
tests (and a process holding two sinks) can build as many as they like. Each process serves its
registry on `worker.metrics_port` / `sink.metrics_port` (0: not served). Metrics are never worth a
stopped pipeline: a port that cannot be bound is logged and the process goes on without it.
"""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Any, Iterable, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

# Batches of a CPU model take up to seconds; a GPU batch tens of milliseconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class WorkerMetrics:
    """The inspection worker's metrics (one registry per instance)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.frames = Counter("defectstream_frames", "Frames taken from the frames topic and processed "
                              "(inspected or dead-lettered); rate() of it is frames/s", registry=r)
        self.deadletters = Counter("defectstream_deadletters", "Dead letters sent by the worker, by error class",
                                   ["reason"], registry=r)
        self.parts_closed = Counter("defectstream_parts_closed", "Parts closed with a verdict, by closing reason",
                                    ["reason"], registry=r)
        self.batch_seconds = Histogram("defectstream_batch_seconds", "Latency of one micro-batch: stage=inference "
                                       "(the model calls) or stage=batch (decode to durable outputs and state)",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.open_parts = Gauge("defectstream_open_parts", "Parts open (awaiting more frames) in the tracking "
                                "table partitions this worker holds", registry=r)
        self.consumer_lag = Gauge("defectstream_consumer_lag", "Frames not yet processed per partition "
                                  "(high watermark minus next offset to process)", ["topic", "partition"], registry=r)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace the lag series by `lags` ((topic, partition) → lag); partitions not held any more disappear."""
        set_lag(self.consumer_lag, lags)


class SinkMetrics:
    """The ClickHouse sink's metrics (one registry per instance)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("defectstream_sink_records", "Records the sink consumed from Kafka", registry=r)
        self.queue = Gauge("defectstream_sink_queue_rows", "Rows buffered in the sink, waiting for the next flush",
                           registry=r)
        self.rows_written = Counter("defectstream_sink_rows_written", "Rows ClickHouse acknowledged", registry=r)
        self.rows_rejected = Counter("defectstream_sink_rows_rejected", "Rows ClickHouse refused on their own "
                                     "(dead-lettered as sink_rejected)", registry=r)
        self.deadletters = Counter("defectstream_sink_deadletters", "Dead letters sent by the sink, by error class",
                                   ["reason"], registry=r)
        self.flush_seconds = Histogram("defectstream_sink_flush_seconds", "Latency of one flush (INSERTs with "
                                       "their retries)", buckets=_LATENCY_BUCKETS, registry=r)
        self.holding = Gauge("defectstream_sink_holding", "1 while the sink holds its partitions (ClickHouse "
                             "down), else 0", registry=r)
        self.consumer_lag = Gauge("defectstream_sink_consumer_lag", "Records not yet consumed per partition",
                                  ["topic", "partition"], registry=r)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace the lag series by `lags` ((topic, partition) → lag)."""
        set_lag(self.consumer_lag, lags)


def set_lag(gauge: Gauge, lags: dict[tuple[str, int], int]) -> None:
    gauge.clear()
    for (topic, partition), lag in lags.items():
        gauge.labels(topic=topic, partition=str(partition)).set(max(0, int(lag)))


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> Any | None:
    """Serve `registry` on http://addr:port/metrics in a daemon thread.

    Returns:
        The HTTP server (`.shutdown()` stops it), or None when `port` is 0 or cannot be bound
        (logged; the caller goes on without metrics).
    """
    if not port:
        return None
    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.warning("metrics endpoint not served: cannot bind %s:%d (%s)", addr, port, exc)
        return None
    log.info("metrics on http://%s:%d/metrics", addr, port)
    return server


# -- scraping (defectstream status) -----------------------------------------------------------
class Sample(NamedTuple):
    """One scraped sample."""

    name: str
    labels: dict[str, str]
    value: float


class ScrapeError(Exception):
    """The endpoint did not answer with Prometheus text."""


def scrape(url: str, timeout_s: float = 3.0) -> list[Sample]:
    """GET `url` and parse it. Raises ScrapeError (with the reason) when unreachable or unparsable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - a configured http(s) URL
            text = resp.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ScrapeError(f"{url} is unreachable: {reason}") from exc
    try:
        return parse(text)
    except ValueError as exc:
        raise ScrapeError(f"{url} did not answer with Prometheus metrics: {exc}") from exc


def parse(text: str) -> list[Sample]:
    """Samples of a Prometheus text exposition."""
    return [Sample(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float | None:
    """Sum of the samples named `name` whose labels include `labels`; None when there is none."""
    vals = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(vals) if vals else None


def by_label(samples: Iterable[Sample], name: str, *label: str) -> dict[tuple[str, ...], float]:
    """Samples named `name`, keyed by the values of `label`."""
    return {tuple(s.labels.get(k, "") for k in label): s.value for s in samples if s.name == name}
