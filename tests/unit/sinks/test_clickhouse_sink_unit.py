"""ClickHouse sink without a server: event → row mapping, retries with backoff, backpressure, model_runs."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from clickhouse_driver import errors

from schemas.events import DefectEvent
from sinks.base import TP, SinkBackpressureError
from sinks.clickhouse import (ALERT_COLUMNS, DEFECT_COLUMNS, PART_COLUMNS, ClickHouseSink, alert_row, defect_row,
                              is_retryable, is_row_error, part_row, table_specs)
from sinks.testing import make_alert, make_defect, make_part
from streams.commands.sink import shift_of
from streams.settings import KafkaSettings, PlantSettings, SinkSettings

PLANT = PlantSettings()
T = int(dt.datetime(2025, 11, 21, 23, 30, tzinfo=dt.timezone.utc).timestamp() * 1000)  # 00:30 Berlin: night shift


def test_part_row_carries_shift_run_and_model():
    part = make_part(1, T, fail=True, counts={"crack": 2, "dent": 1})
    row = dict(zip(PART_COLUMNS, part_row(part, PLANT, 99)))
    assert row["shift_name"] == "night" and row["shift_start"] == part.shift_start
    assert row["shift_date"] == dt.date(2025, 11, 21)  # the night shift belongs to the day it started
    assert (row["run_id"], row["model_version"]) == ("production", "m1")
    assert row["defect_classes"] == ["crack", "dent"] and row["defect_class_counts"] == [2, 1]
    assert row["verdict"] == "FAIL" and row["version"] == 99 == row["ingested_at"]


def test_defect_row_applies_the_calendar_at_ingest_to_a_defect_without_a_shift():
    d = make_defect(make_part(1, T), 0, "crack")
    assert not getattr(d, "shift", "")  # as written before the tracker stamped the shift
    row = dict(zip(DEFECT_COLUMNS, defect_row(d, PLANT, 5, shift_of=shift_of(PLANT))))
    assert row["shift_name"] == "night" and row["shift_date"] == dt.date(2025, 11, 21)
    assert row["shift_start"] == make_part(1, T).shift_start
    assert (row["bbox_x0"], row["bbox_y1"]) == (10, 50)
    assert row["class_votes_class"] == ["crack", "scratch"] and row["class_votes_weight"] == pytest.approx([2.4, 0.6])
    gap = PlantSettings(shifts=[{"name": "day", "start": "08:00", "end": "16:00"}])
    gap_row = dict(zip(DEFECT_COLUMNS, defect_row(d, gap, 5, shift_of=shift_of(gap))))
    assert (gap_row["shift_name"], gap_row["shift_start"]) == ("", 0)  # stored, not dropped
    assert gap_row["shift_date"] == dt.date(2025, 11, 22)  # the local date of its first frame
    no_calendar = dict(zip(DEFECT_COLUMNS, defect_row(d, "Europe/Berlin", 5)))  # a timezone name will do
    assert (no_calendar["shift_name"], no_calendar["shift_start"]) == ("", 0)


def test_defect_row_takes_the_shift_the_event_carries_over_the_calendar():
    if "shift" not in DefectEvent.__dataclass_fields__:
        pytest.skip("DefectEvent carries no shift yet (the tracker's shift stamp has not landed)")
    part = make_part(1, T)
    d = dataclasses.replace(make_defect(part, 0, "crack"), shift=part.shift_name, shift_start=part.shift_start)
    called: list[int] = []
    row = dict(zip(DEFECT_COLUMNS, defect_row(d, PLANT, 5, shift_of=lambda ts: called.append(ts))))
    assert (row["shift_name"], row["shift_start"], row["shift_date"]) == ("night", part.shift_start, dt.date(2025, 11, 21))
    assert called == []  # the calendar is only for events that carry no shift
    unscheduled = dataclasses.replace(d, shift="unscheduled", shift_start=0)
    assert dict(zip(DEFECT_COLUMNS, defect_row(unscheduled, PLANT, 5)))["shift_name"] == "unscheduled"


def test_table_specs_pass_the_calendar_to_the_rows():
    d = make_defect(make_part(1, T), 0, "crack")
    spec = table_specs(KafkaSettings().topics, PLANT, shift_of=shift_of(PLANT))["defects"]
    row = dict(zip(spec.columns, spec.to_row(d.codec().decode(d.codec().encode(d.to_avro())), 7)))
    assert row["shift_name"] == "night" and row["version"] == 7


def test_alert_row_nulls_become_empty():
    a = make_alert(T, camera=None)
    row = dict(zip(ALERT_COLUMNS, alert_row(a, 1)))
    assert row["camera_id"] == "" and row["defect_class"] == "" and row["limit_value"] == a.limit


class FakeExecutor:
    def __init__(self, fail: list[BaseException | None]):
        self.fail = fail
        self.inserts: list[tuple[str, list]] = []
        self.closed = 0

    def insert(self, table, columns, rows):
        exc = self.fail.pop(0) if self.fail else None
        if exc is not None:
            raise exc
        self.inserts.append((table, list(rows)))
        return len(rows)

    def query(self, sql):
        if self.fail and self.fail[0] is not None:
            raise self.fail.pop(0)
        return [(1,)]

    def close(self):
        self.closed += 1


def make_sink(fail, **kw):
    ex = FakeExecutor(fail)
    sleeps: list[float] = []
    sink = ClickHouseSink(None, table_specs(KafkaSettings().topics, PLANT),  # type: ignore[arg-type]
                          SinkSettings(**{"max_retries": 2, "backoff_initial_s": 0.1, **kw}),
                          executor_factory=lambda: ex, sleep=sleeps.append, clock=lambda: 1000.0)
    return sink, ex, sleeps


def add_parts(sink, n=3):
    for i in range(n):
        sink.add(make_part(i, T).to_avro(), topic="parts", partition=0, offset=i)


def test_transient_errors_are_retried_with_exponential_backoff():
    sink, ex, sleeps = make_sink([errors.NetworkError("refused"), errors.SocketTimeoutError("slow")])
    add_parts(sink)
    res = sink.flush()
    assert res.ok and res.rows == 3
    assert [t for t, _ in ex.inserts] == ["parts", "model_runs"]
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    assert sink.retries == 2 and ex.closed == 2  # a fresh connection after each failure


def test_down_after_retries_becomes_backpressure():
    sink, ex, sleeps = make_sink([errors.NetworkError("refused")] * 3, hold_initial_s=4.0)
    add_parts(sink)
    res = sink.flush()
    assert not res.ok and res.retry_after_s == 4.0 and ex.inserts == [] and sink.buffered == 0
    (exc,) = res.failed.values()
    assert isinstance(exc, SinkBackpressureError) and isinstance(exc.cause, errors.NetworkError)


def test_permanent_server_error_is_not_retried_and_holds_instead_of_crashing():
    sink, ex, sleeps = make_sink([errors.ServerException("Unknown table", code=60)], hold_max_s=20.0)
    add_parts(sink)
    res = sink.flush()  # the sink waits for an operator (e.g. `db migrate`); it neither dies nor drops rows
    assert sleeps == [] and not res.ok and res.retry_after_s == 20.0 and not res.rejected
    (exc,) = res.failed.values()
    assert isinstance(exc.cause, errors.ServerException) and exc.cause.code == 60


class RejectingExecutor(FakeExecutor):
    """Refuses (like clickhouse-driver's client-side check) any INSERT holding a negative first_frame_ts."""

    def insert(self, table, columns, rows):
        rows = list(rows)
        if table == "parts" and any(r[columns.index("first_frame_ts")] < 0 for r in rows):
            raise errors.TypeMismatchError("Type mismatch in VALUES section. Column first_frame_ts: argument out of range")
        return super().insert(table, columns, rows)


def test_a_row_clickhouse_can_never_store_is_isolated_not_retried():
    ex = RejectingExecutor([])
    sleeps: list[float] = []
    sink = ClickHouseSink(None, table_specs(KafkaSettings().topics, PLANT), SinkSettings(),  # type: ignore[arg-type]
                          executor_factory=lambda: ex, sleep=sleeps.append, clock=lambda: 1000.0)
    for i in range(7):
        sink.add(make_part(i, -5000 if i == 4 else T).to_avro(), topic="parts", partition=0, offset=i)
    res = sink.flush()
    assert res.ok and res.written == {TP("parts", 0): 7} and res.rows == 6
    assert [r.item.offset for r in res.rejected] == [4] and "first_frame_ts" in res.rejected[0].reason
    stored = sorted(r[PART_COLUMNS.index("part_id")] for t, rows in ex.inserts if t == "parts" for r in rows)
    assert stored == sorted(make_part(i, T).part_id for i in range(7) if i != 4)
    assert sleeps == [] and sink.retries == 0


def test_retries_of_one_flush_stop_at_the_flush_budget():
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s):
        sleeps.append(s)
        now[0] += s

    ex = FakeExecutor([errors.NetworkError("refused")] * 100)
    sink = ClickHouseSink(None, table_specs(KafkaSettings().topics, PLANT),  # type: ignore[arg-type]
                          SinkSettings(max_retries=50, backoff_initial_s=1.0, backoff_max_s=5.0, flush_budget_s=12.0),
                          executor_factory=lambda: ex, sleep=sleep, clock=lambda: 1000.0, monotonic=lambda: now[0])
    for p in range(4):
        sink.add(make_part(p, T).to_avro(), topic="parts", partition=p, offset=0)
    res = sink.flush()
    assert set(res.failed) == {TP("parts", p) for p in range(4)}
    assert now[0] <= 12.0  # not 4 partitions x 50 retries x up to 5 s
    assert 100 - len(ex.fail) == len(sleeps) + 1  # one partition tried; the others follow its refusal


def test_settings_keep_the_flush_budget_under_the_poll_interval():
    with pytest.raises(ValueError, match="max_poll_interval_s"):
        SinkSettings(flush_budget_s=280.0, max_poll_interval_s=300.0)


def test_row_error_classification():
    assert is_row_error(errors.TypeMismatchError("x")) and is_row_error(errors.ServerException("range", code=321))
    assert not is_row_error(errors.ServerException("Unknown table", code=60))
    assert not is_row_error(errors.NetworkError("x")) and not is_row_error(TypeError("bug"))


def test_model_runs_recorded_once_per_pair():
    sink, ex, _ = make_sink([])
    add_parts(sink)
    sink.flush()
    add_parts(sink)
    sink.flush()
    runs = [rows for t, rows in ex.inserts if t == "model_runs"]
    assert len(runs) == 1 and runs[0][0][:3] == ("production", "m1", "production")


def test_bad_record_fails_in_add():
    sink, _, _ = make_sink([])
    with pytest.raises((KeyError, TypeError, ValueError)):
        sink.add({"event_id": "x"}, topic="parts", partition=0, offset=0)
    with pytest.raises(KeyError):
        sink.add({}, topic="unknown", partition=0, offset=0)


def test_retryable_classification():
    assert is_retryable(errors.NetworkError("x")) and is_retryable(ConnectionRefusedError())
    assert is_retryable(errors.ServerException("too many parts", code=252))
    assert not is_retryable(errors.ServerException("syntax", code=62)) and not is_retryable(ValueError())


def test_two_deliveries_of_one_event_in_one_flush_never_tie_on_version():
    """A part re-closed after a crash can reach the sink twice in one batch within one millisecond:
    the copy consumed last gets the higher version (ReplacingMergeTree keeps it, argMax picks it)."""
    sink, ex, _ = make_sink([])  # its clock stands still at 1000.0 s
    first = make_part(1, T, counts={"crack": 1})
    again = dataclasses.replace(first, defect_counts={"crack": 2}, defects_total=2)
    for i, ev in enumerate((first, again, first)):
        sink.add(ev.to_avro(), topic="parts", partition=0, offset=i)
    assert sink.flush().ok
    rows = [dict(zip(PART_COLUMNS, r)) for t, rs in ex.inserts if t == "parts" for r in rs]
    assert len({r["event_id"] for r in rows}) == 1
    versions = [r["version"] for r in rows]
    assert versions == sorted(versions) and len(set(versions)) == 3  # strictly increasing in consumption order
    assert versions[0] >= 1_000_000 * 1024  # ingest ms × 1024: above every version written as plain ms before
    assert {r["ingested_at"] for r in rows} == {1_000_000}  # the ingest time itself is untouched


def _months_apart(n: int, start_year: int = 2016) -> list[int]:
    """n timestamps on the 15th of n consecutive months, from January of `start_year` (UTC, epoch ms)."""
    return [int(dt.datetime(start_year + m // 12, m % 12 + 1, 15, tzinfo=dt.timezone.utc).timestamp() * 1000)
            for m in range(n)]


class PartitionLimitExecutor(FakeExecutor):
    """Refuses, as a current ClickHouse does (code 252), an INSERT touching more than `limit` months."""

    def __init__(self, limit: int):
        super().__init__([])
        self.limit = limit
        self.refused = 0

    def insert(self, table, columns, rows):
        rows = list(rows)
        col = "created_at" if table == "alerts" else "recorded_at" if table == "model_runs" else "first_frame_ts"
        months = {dt.datetime.fromtimestamp(r[columns.index(col)] / 1000, dt.timezone.utc).strftime("%Y%m")
                  for r in rows}
        if len(months) > self.limit:
            self.refused += 1
            raise errors.ServerException(
                f"Too many partitions for single INSERT block (more than {self.limit}). The limit is controlled "
                "by 'max_partitions_per_insert_block' setting.", code=252)
        return super().insert(table, columns, rows)


def test_a_batch_spanning_200_months_is_written_in_inserts_of_few_partitions():
    ex = PartitionLimitExecutor(100)
    sink = ClickHouseSink(None, table_specs(KafkaSettings().topics, PLANT), SinkSettings(),  # type: ignore[arg-type]
                          executor_factory=lambda: ex, sleep=lambda s: None, clock=lambda: 1000.0)
    stamps = _months_apart(200)
    for i, ts in enumerate(stamps):
        sink.add(make_part(i, ts).to_avro(), topic="parts", partition=0, offset=i)
    res = sink.flush()
    assert res.ok and res.written == {TP("parts", 0): 200} and res.rows == 200 and not res.rejected
    parts = [rows for t, rows in ex.inserts if t == "parts"]
    assert ex.refused == 0 and len(parts) == 5  # 200 months, 40 a piece
    assert sorted(r[PART_COLUMNS.index("part_id")] for rows in parts for r in rows) == \
        sorted(make_part(i, ts).part_id for i, ts in enumerate(stamps))


def test_a_server_with_a_lower_partition_limit_makes_the_sink_split_further_not_hold():
    ex = PartitionLimitExecutor(7)
    sleeps: list[float] = []
    sink = ClickHouseSink(None, table_specs(KafkaSettings().topics, PLANT), SinkSettings(),  # type: ignore[arg-type]
                          executor_factory=lambda: ex, sleep=sleeps.append, clock=lambda: 1000.0)
    for i, ts in enumerate(_months_apart(60)):
        sink.add(make_part(i, ts).to_avro(), topic="parts", partition=0, offset=i)
    res = sink.flush()
    assert res.ok and res.rows == 60 and sleeps == []  # refused INSERTs are split at once, not retried
    assert sink.max_partitions_per_insert == 5  # 40 → 20 → 10 → 5 (≤ 7)
    assert sum(len(rows) for t, rows in ex.inserts if t == "parts") == 60


def test_too_many_partitions_is_told_apart_from_too_many_parts():
    from sinks.clickhouse import is_too_many_partitions, split_by_partition

    assert is_too_many_partitions(errors.ServerException("Too many partitions for single INSERT block (more than 100)",
                                                         code=252))
    assert is_too_many_partitions(RuntimeError("Code: 252. DB::Exception: Too many partitions for single INSERT block"))
    assert not is_too_many_partitions(errors.ServerException("Too many parts (300). Merges are processing "
                                                             "significantly slower than inserts", code=252))
    stamps = _months_apart(5)
    rows = [(ts,) for ts in stamps + stamps[:2]]
    assert split_by_partition(rows, 0, 5) == [rows]
    assert [len(c) for c in split_by_partition(rows, 0, 2)] == [4, 2, 1]  # all rows of a month in one chunk
