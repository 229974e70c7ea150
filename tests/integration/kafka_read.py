"""Reading a topic back in integration tests: every record from its start, decoded."""
from __future__ import annotations

import time
from typing import Any, Callable


def read_records(bootstrap: str, topic: str, codec: Any, until: Callable[[list[dict]], bool] | None = None, *,
                 want: int | None = None, timeout_s: float = 60.0) -> list[dict]:
    """All records of `topic` from its start (no consumer group), decoded with `codec`, once
    `until(records)` holds or `want` records are read, or when `timeout_s` is up."""
    from kafka import KafkaConsumer

    if (until is None) == (want is None):
        raise TypeError("pass exactly one of until and want")
    done = until if until is not None else (lambda rows: len(rows) >= want)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    rows: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            rows.extend(codec.decode(m.value) for m in consumer)
            if done(rows):
                break
    finally:
        consumer.close()
    return rows
