"""The sink contract: per-partition batches, flush clears in finally, backpressure per partition."""
from __future__ import annotations

import pytest

from sinks.base import TP, BatchingSink, ListSink, SinkBackpressureError


def test_batches_per_topic_partition_and_offsets_to_commit():
    s = ListSink()
    for off in (5, 6, 7):
        s.add({"i": off}, topic="a", partition=0, offset=off)
    s.add({"i": 1}, topic="a", partition=1, offset=1)
    s.add({"i": 9}, topic="b", partition=0, offset=9)
    assert s.buffered == 5
    res = s.flush()
    assert res.ok and res.rows == 5
    assert res.written == {TP("a", 0): 8, TP("a", 1): 2, TP("b", 0): 10}
    assert [(b.tp, b.start_offset, b.end_offset, len(b)) for b in s.written] == [
        (TP("a", 0), 5, 7, 3), (TP("a", 1), 1, 1, 1), (TP("b", 0), 9, 9, 1)]
    assert s.buffered == 0


def test_refused_batch_is_cleared_and_reported():
    class HalfDown(ListSink):
        def write(self, batch):
            if batch.partition == 1:
                raise SinkBackpressureError(2.5, "p1 down")
            super().write(batch)

    s = HalfDown()
    s.add(1, topic="t", partition=0, offset=0)
    s.add(2, topic="t", partition=1, offset=0)
    res = s.flush()
    assert res.written == {TP("t", 0): 1}
    assert set(res.failed) == {TP("t", 1)} and res.retry_after_s == 2.5 and not res.ok
    assert s.buffered == 0  # cleared: the runner re-reads it from Kafka


def test_unexpected_error_clears_and_propagates():
    class Bug(BatchingSink):
        def write(self, batch):
            raise ZeroDivisionError

    s = Bug()
    s.add(1, topic="t", partition=0, offset=0)
    with pytest.raises(ZeroDivisionError):
        s.flush()
    assert s.buffered == 0


def test_drop_revoked_partitions_only():
    s = ListSink()
    s.add(1, topic="t", partition=0, offset=0)
    s.add(2, topic="t", partition=1, offset=0)
    s.drop({TP("t", 1)})
    assert s.buffered == 1 and s.oldest_age_s() >= 0
