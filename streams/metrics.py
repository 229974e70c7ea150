"""Prometheus metrics of the worker and the sink: their definitions, the HTTP endpoint, and the scrape parser.

Every metric is named `defectstream_*` and lives in a registry of its own instance
(`WorkerMetrics()` / `SinkMetrics()`), never in prometheus-client's global default registry, so
tests (and a process holding two sinks) can build as many as they like. Each process serves its
registry on `worker.metrics_port` / `sink.metrics_port` (0: not served), bound to `*.metrics_addr`
(loopback by default). Metrics are never worth a stopped pipeline: a port that cannot be bound is
logged and the process goes on without it.
"""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Iterable, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from sinks.metrics import LATENCY_BUCKETS as _LATENCY_BUCKETS
from sinks.metrics import SinkMetrics, serve, set_lag  # noqa: F401 - the sink's metrics, re-exported

log = logging.getLogger(__name__)


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
        self.control_rejected = Counter("defectstream_control_records_rejected", "Records of the cameras topic "
                                        "skipped as invalid (logged), by kind: promotion, camera_config, "
                                        "camera_reset, camera_alias, reserved", ["kind"], registry=r)
        self.model_load_failures = Counter("defectstream_model_load_failures", "Failed loads of a promoted model "
                                           "(retried with backoff), by promoted model version", ["model_version"],
                                           registry=r)
        self.promotions_not_loaded = Gauge("defectstream_promotions_not_loaded", "Current promotions whose model "
                                           "this worker could not load (their cameras fall back to the next rule)",
                                           registry=r)
        self.parts_model_switched = Counter("defectstream_parts_model_switched", "Open parts that finished on "
                                            "another model than they opened with, because theirs could no longer "
                                            "be loaded", registry=r)
        self.consumer_lag = Gauge("defectstream_consumer_lag", "Frames not yet processed per partition "
                                  "(high watermark minus next offset to process)", ["topic", "partition"], registry=r)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace the lag series by `lags` ((topic, partition) → lag); partitions not held any more disappear."""
        set_lag(self.consumer_lag, lags)


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
