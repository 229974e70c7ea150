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


def test_rejected_rows_are_isolated_and_the_rest_written():
    s = ListSink(reject=lambda v: v < 0)
    for off, v in enumerate([1, 2, -3, 4, 5, 6, -7, 8]):
        s.add(v, topic="t", partition=0, offset=10 + off)
    res = s.flush()
    assert res.ok and res.written == {TP("t", 0): 18}  # committed past the rejected rows
    assert sorted(s.values) == [1, 2, 4, 5, 6, 8] and res.rows == 6
    assert [(r.tp, r.item.offset, r.item.value) for r in res.rejected] == [(TP("t", 0), 12, -3), (TP("t", 0), 16, -7)]
    assert all("rejects" in r.reason for r in res.rejected)
    assert s.write_calls <= 2 * 2 * 3 + 1  # ~2·k·log2(n) extra writes, not one per row


def test_a_batch_of_only_rejected_rows_still_advances():
    s = ListSink(reject=lambda v: True)
    s.add(1, topic="t", partition=0, offset=0)
    res = s.flush()
    assert res.written == {TP("t", 0): 1} and res.rows == 0 and [r.item.value for r in res.rejected] == [1]


def test_after_one_refusal_the_other_partitions_are_not_tried():
    # ClickHouse down: trying every partition (each with its own retries) could keep the consumer
    # from polling past max.poll.interval.ms; one refusal stands for all.
    s = ListSink()
    s.down = True
    for p in range(6):
        s.add(p, topic="t", partition=p, offset=0)
    res = s.flush()
    assert s.write_calls == 1
    assert set(res.failed) == {TP("t", p) for p in range(6)} and not res.written
