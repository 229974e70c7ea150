"""Settings of the ClickHouse sink: the ClickHouse connection and the sink runner.

`streams.settings.Settings` composes them (`DEFECTSTREAM_CLICKHOUSE__*`, `DEFECTSTREAM_SINK__*`);
they live here so that `sinks/` needs nothing from `streams/`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator


class ClickHouseSettings(BaseModel):
    """ClickHouse native-protocol connection."""

    host: str = "127.0.0.1"
    port: int = 19000
    database: str = "defectstream"
    user: str = "default"
    password: SecretStr = SecretStr("")
    secure: bool = False
    connect_timeout_s: float = 5.0


class SinkSettings(BaseModel):
    """The ClickHouse sink runner (`defectstream sink`): consumer group, batching, retries, holds."""

    group_id: str = Field("defectstream-clickhouse-sink", description="the sink's own consumer group")
    batch_size: int = Field(5000, ge=1, description="flush when this many records are buffered")
    flush_interval_s: float = Field(1.0, gt=0.0, description="flush at least this often while records wait")
    max_poll_records: int = Field(1000, ge=1)
    max_retries: int = Field(3, ge=0, description="INSERT retries (exponential backoff) before holding")
    flush_budget_s: float = Field(
        60.0, gt=0.0,
        description="no INSERT retry of one flush starts after this long (the loop must poll Kafka again "
                    "within max_poll_interval_s, or the group evicts the sink)",
    )
    max_poll_interval_s: float = Field(300.0, gt=0.0, description="the consumer's max.poll.interval.ms, in seconds")
    backoff_initial_s: float = Field(0.2, gt=0.0)
    backoff_max_s: float = Field(5.0, gt=0.0)
    hold_initial_s: float = Field(1.0, gt=0.0, description="first wait of a hold before probing ClickHouse")
    hold_max_s: float = Field(30.0, gt=0.0, description="longest wait between probes while ClickHouse is down")
    max_partitions_per_insert: int = Field(
        40, ge=1, le=1000,
        description="UTC months per INSERT: a batch spanning more is split (a current ClickHouse refuses an INSERT "
                    "touching more than max_partitions_per_insert_block = 100 partitions; a UTC month can fall "
                    "into two months of the server's timezone)",
    )
    include_alerts: bool = Field(True, description="also store the `alerts` topic (alerts are deduplicated by id)")
    include_review: bool = Field(True, description="also store the review topics (sampled frames, review queue)")
    topic_wait_s: float = Field(
        60.0, ge=0.0, description="at start, wait up to this long for every topic the sink reads to exist (the worker "
                                  "or `kafka-init` creates them) before joining the group; a topic still missing then "
                                  "is joined as soon as it appears")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    metrics_port: int = Field(
        9465, ge=0, le=65535,
        description="serve Prometheus metrics on http://<metrics_addr>:<port>/metrics (0: not served); see sinks.metrics",
    )
    metrics_addr: str = Field(
        "127.0.0.1",
        description="address the metrics endpoint binds: loopback unless a scraper on another host needs it "
                    "(docker-compose sets 0.0.0.0 inside the container, where Prometheus scrapes it)",
    )

    @model_validator(mode="after")
    def _flush_fits_the_poll_interval(self) -> "SinkSettings":
        # One INSERT attempt started just before the budget ends may still take a connect plus a
        # send/receive timeout (~35 s) and the longest backoff.
        if self.flush_budget_s + self.backoff_max_s + 60.0 > self.max_poll_interval_s:
            raise ValueError(
                f"flush_budget_s ({self.flush_budget_s}) + backoff_max_s + 60 s must stay below "
                f"max_poll_interval_s ({self.max_poll_interval_s})"
            )
        return self
