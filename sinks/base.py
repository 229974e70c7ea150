"""The sink contract: setup / add / flush / close, buffered per (topic, partition).

In the spirit of quix-streams' `BatchingSink`: `add()` only buffers, `flush()` hands each
(topic, partition) batch to `write()` and clears it in `finally` — written or not. A batch that
could not be written is *not* kept: the caller has not committed its offsets, so it rewinds the
partition to its last committed offset and the records are read again (see `sinks.runner`).
That keeps memory bounded by one batch per partition whatever the database does, and it is safe
because the sinks are idempotent on the events' deterministic ids.

A batch the destination rejects as data (`SinkRejectedError`: a value that does not fit its column)
is split in halves until the rows that fail alone are found; the other rows are written and the
rejected ones are returned to the caller, which dead-letters them and commits past them. Once one
partition's batch is refused as backpressure the destination is taken as down and the remaining
partitions are not tried in this flush (their retries would add up past the consumer's poll interval).
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple


class TP(NamedTuple):
    """A topic partition."""

    topic: str
    partition: int


class SinkItem(NamedTuple):
    """One buffered record: the sink's row for it and where it came from."""

    value: Any
    offset: int
    timestamp_ms: int


class SinkBackpressureError(Exception):
    """The destination cannot take the batch now (down, overloaded); try again after `retry_after_s`.

    Nothing of the batch may be assumed written. The caller must not commit its offsets.
    """

    def __init__(self, retry_after_s: float, message: str = "", *, cause: BaseException | None = None):
        super().__init__(message or f"destination unavailable, retry after {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s
        self.cause = cause


class SinkRejectedError(Exception):
    """The destination can never store (some row of) this batch: a value that does not fit, not an outage.

    Raised by `write()` having written nothing of the batch; `flush()` then isolates the offending rows.
    """

    def __init__(self, message: str, *, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


class RejectedItem(NamedTuple):
    """A record the destination refused on its own, and why (to be dead-lettered by the caller)."""

    tp: "TP"
    item: SinkItem
    reason: str


@dataclass
class SinkBatch:
    """Records of one topic partition, in offset order."""

    tp: TP
    items: list[SinkItem] = field(default_factory=list)
    created_monotonic: float = field(default_factory=time.monotonic)

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition

    @property
    def start_offset(self) -> int:
        return self.items[0].offset

    @property
    def end_offset(self) -> int:
        """Offset of the last record (commit `end_offset + 1` once written)."""
        return self.items[-1].offset

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SinkItem]:
        return iter(self.items)


@dataclass
class FlushResult:
    """What one `flush()` achieved."""

    written: dict[TP, int] = field(default_factory=dict)  # tp → next offset to commit
    failed: dict[TP, SinkBackpressureError] = field(default_factory=dict)  # tp → why
    rejected: list[RejectedItem] = field(default_factory=list)  # rows never storable (committed past)
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def retry_after_s(self) -> float:
        return max((e.retry_after_s for e in self.failed.values()), default=0.0)


class BatchingSink(abc.ABC):
    """Buffers records per (topic, partition); a subclass implements `write(batch)`.

    Not thread-safe: one consumer loop owns a sink.
    """

    def __init__(self) -> None:
        self._batches: dict[TP, SinkBatch] = {}

    def setup(self) -> None:
        """Connect / check the destination (called once before the first `add`)."""

    def add(self, value: Any, *, topic: str, partition: int, offset: int, timestamp_ms: int = 0) -> None:
        """Buffer one record. Subclasses may convert `value` here and raise `ValueError` for a bad one."""
        tp = TP(topic, partition)
        batch = self._batches.get(tp)
        if batch is None:
            batch = self._batches[tp] = SinkBatch(tp)
        batch.items.append(SinkItem(value, offset, timestamp_ms))

    @property
    def buffered(self) -> int:
        """Records waiting for the next flush."""
        return sum(len(b) for b in self._batches.values())

    def oldest_age_s(self) -> float:
        """Seconds since the oldest pending batch was started (0 when empty)."""
        if not self._batches:
            return 0.0
        return time.monotonic() - min(b.created_monotonic for b in self._batches.values())

    def drop(self, tps: set[TP] | None = None) -> None:
        """Forget pending records (all, or of `tps`), e.g. for partitions revoked in a rebalance."""
        for tp in list(self._batches):
            if tps is None or tp in tps:
                del self._batches[tp]

    def flush(self) -> FlushResult:
        """Write every pending batch and clear it, written or not.

        Returns:
            Which partitions were written (with the offset to commit), which were refused with
            `SinkBackpressureError` (after the first refusal the other partitions are not tried and
            are reported refused too), and the rows rejected one by one with `SinkRejectedError`
            (their partition counts as written: the caller dead-letters them before committing).
            Any other exception propagates (after clearing): it is a bug, and the caller must not
            commit.
        """
        result = FlushResult()
        down: SinkBackpressureError | None = None
        try:
            for tp in sorted(self._batches):
                batch = self._batches[tp]
                if not batch.items:
                    continue
                if down is not None:
                    result.failed[tp] = down
                    continue
                try:
                    rejected = self._write_isolating(batch)
                except SinkBackpressureError as exc:
                    result.failed[tp] = down = exc
                    continue
                result.written[tp] = batch.end_offset + 1
                result.rows += len(batch) - len(rejected)
                result.rejected.extend(rejected)
        finally:
            self._batches.clear()
        return result

    def _write_isolating(self, batch: SinkBatch) -> list[RejectedItem]:
        """`write(batch)`; on `SinkRejectedError` write each half the same way, down to single rows.

        k bad rows among n cost about 2·k·log2(n) extra writes. Halves written before a
        `SinkBackpressureError` are written again after the rewind (idempotent tables).
        """
        try:
            self.write(batch)
            return []
        except SinkRejectedError as exc:
            if len(batch) == 1:
                return [RejectedItem(batch.tp, batch.items[0], str(exc))]
        mid = len(batch) // 2
        head = SinkBatch(batch.tp, batch.items[:mid], batch.created_monotonic)
        tail = SinkBatch(batch.tp, batch.items[mid:], batch.created_monotonic)
        return self._write_isolating(head) + self._write_isolating(tail)

    @abc.abstractmethod
    def write(self, batch: SinkBatch) -> None:
        """Write one batch durably, or raise having written nothing for sure.

        Raises:
            SinkBackpressureError: the destination cannot take it now (the caller holds and re-reads).
            SinkRejectedError: some row can never be stored (the batch is split to find it).
        """

    def healthy(self) -> bool:
        """Whether the destination answers now (used to end a hold); default: assume yes."""
        return True

    def close(self) -> None:
        """Release connections; pending records are dropped (they were never committed)."""
        self._batches.clear()


class ListSink(BatchingSink):
    """Test double: keeps written batches in memory.

    `down=True` makes it refuse writes (backpressure); a batch holding a value for which
    `reject(value)` is true is rejected whole (`SinkRejectedError`), as a database rejects an INSERT.
    """

    def __init__(self, reject: Callable[[Any], bool] | None = None) -> None:
        super().__init__()
        self.written: list[SinkBatch] = []
        self.down = False
        self.reject = reject
        self.write_calls = 0

    def write(self, batch: SinkBatch) -> None:
        self.write_calls += 1
        if self.down:
            raise SinkBackpressureError(0.01, "ListSink is down")
        if self.reject is not None and any(self.reject(it.value) for it in batch):
            raise SinkRejectedError("ListSink rejects the value")
        self.written.append(batch)

    def healthy(self) -> bool:
        return not self.down

    @property
    def values(self) -> list[Any]:
        return [it.value for b in self.written for it in b]
