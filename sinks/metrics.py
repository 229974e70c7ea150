"""Prometheus metrics of the ClickHouse sink and the HTTP endpoint that serves a registry.

`SinkMetrics()` owns a registry of its own (never prometheus-client's global default registry), so
tests and a process holding two sinks can build as many as they like. `streams.metrics` re-uses
these for the worker and for `defectstream status`. Metrics are never worth a stopped pipeline: a
port that cannot be bound is logged and the process goes on without it.
"""
from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Batches of a CPU model take up to seconds; a GPU batch tens of milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
                                       "their retries)", buckets=LATENCY_BUCKETS, registry=r)
        self.holding = Gauge("defectstream_sink_holding", "1 while the sink holds its partitions (ClickHouse "
                             "down), else 0", registry=r)
        self.consumer_lag = Gauge("defectstream_sink_consumer_lag", "Records not yet consumed per partition",
                                  ["topic", "partition"], registry=r)

    def set_lag(self, lags: dict[tuple[str, int], int]) -> None:
        """Replace the lag series by `lags` ((topic, partition) → lag)."""
        set_lag(self.consumer_lag, lags)


def set_lag(gauge: Gauge, lags: dict[tuple[str, int], int]) -> None:
    """Replace a per-partition lag gauge's series by `lags`; partitions not held any more disappear."""
    gauge.clear()
    for (topic, partition), lag in lags.items():
        gauge.labels(topic=topic, partition=str(partition)).set(max(0, int(lag)))


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> Any | None:
    """Serve `registry` on http://addr:port/metrics in a daemon thread (loopback unless `addr` says otherwise).

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
