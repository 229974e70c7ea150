"""ClickHouse sink: event → row mapping and a batching, retrying, idempotent writer.

Rows carry the event's deterministic id; the tables are ReplacingMergeTree on it and every query
de-duplicates by id, so a batch written twice (a retry after a lost acknowledgement, a rewind
after an outage, a rebalance) counts once. Offsets are committed by the runner only after
`write()` returned, i.e. after ClickHouse acknowledged the INSERT.

Why not ClickHouse's own insert deduplication: ClickHouse 18.16 deduplicates identical blocks on
Replicated* tables only (no `insert_deduplication_token`, no `non_replicated_deduplication_window`),
and on a current server the token needs that table setting, which an 18.16 migration cannot
declare. Besides, a re-read batch is never byte-identical (`ingested_at`/`version` are the time of
ingest). Reading one row per id is the guarantee on both (`tests/*/test_*dialect*`: a re-sent
batch changes no answer of the report or the monitor).

Partitions: every table is `PARTITION BY toYYYYMM(event_time)`, and a current ClickHouse refuses an
INSERT block touching more than `max_partitions_per_insert_block` (100) partitions (code 252; 18.16
has no such limit). Frames may be up to ten years old, so a batch can span more months than that:
`write()` splits each batch by month into INSERTs of at most `SinkSettings.max_partitions_per_insert`
months, and when a server still refuses one as touching too many partitions (a lower limit), halves
that bound for the rest of the process and writes the chunk again, down to one month per INSERT. A
batch counts as written only when every one of its INSERTs was acknowledged; a chunk written before
a later one failed is written again after the rewind and counted once, as any re-sent row.

Errors: a network/overload error is retried, then reported as backpressure (the runner holds); a
value ClickHouse can never store (type mismatch, out of range, unparsable) is a `SinkRejectedError`
(the batch is split and the row dead-lettered); any other error (unknown table, access denied) is
reported as backpressure with the longest hold: the pipeline waits for an operator, it neither
crashes nor drops rows.
"""
from __future__ import annotations

import datetime as dt
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, Sequence, Union
from zoneinfo import ZoneInfo

from schemas.events import Alert, DefectEvent, PartInspected, ReviewCandidate, ReviewFrame
from sinks.base import BatchingSink, FlushResult, SinkBackpressureError, SinkBatch, SinkRejectedError
from sinks.settings import ClickHouseSettings, SinkSettings
from sinks.sql import DriverExecutor, Executor

log = logging.getLogger(__name__)

DEFECT_COLUMNS = (
    "event_id", "schema_version", "camera_id", "line_id", "part_id", "track_id", "defect_class",
    "severity", "severity_max", "confidence", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
    "best_frame_seq", "area_px", "frames_seen", "frames_total", "first_frame_ts", "last_frame_ts",
    "class_votes_class", "class_votes_weight", "model_version", "run_id", "shift_name",
    "shift_start", "shift_date", "ingested_at", "version", "emission_id",
)
PART_COLUMNS = (
    "event_id", "schema_version", "camera_id", "line_id", "part_id", "verdict", "defect_classes",
    "defect_class_counts", "defects_total", "frames", "first_frame_ts", "last_frame_ts",
    "closed_reason", "model_version", "run_id", "shift_name", "shift_start", "shift_date",
    "ingested_at", "version", "emission_id",
)
ALERT_COLUMNS = (
    "alert_id", "schema_version", "kind", "line_id", "camera_id", "defect_class", "metric", "rate",
    "center", "limit_value", "rule", "inspected", "defective", "window_start", "window_end",
    "created_at", "message", "model_version", "run_id", "ingested_at", "version",
)
REVIEW_FRAME_COLUMNS = (
    "frame_id", "schema_version", "camera_id", "line_id", "part_id", "frame_seq", "frame_index", "capture_ts",
    "encoding", "width", "height", "channels", "image", "model_version", "run_id", "det_class", "det_confidence",
    "det_x0", "det_y0", "det_x1", "det_y1", "sampled_at", "ingested_at", "version",
)
REVIEW_QUEUE_COLUMNS = (
    "candidate_id", "schema_version", "frame_id", "reason", "score", "camera_id", "line_id", "part_id", "frame_seq",
    "capture_ts", "model_version", "run_id", "defect_class", "confidence", "bbox_x0", "bbox_y0", "bbox_x1",
    "bbox_y1", "note", "created_at", "ingested_at", "version",
)
LABEL_COLUMNS = (
    "label_id", "frame_id", "candidate_id", "camera_id", "line_id", "part_id", "action", "defect_class",
    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "model_version", "reviewer", "created_at", "version",
)
MODEL_RUN_COLUMNS = ("run_id", "model_version", "kind", "first_event_ts", "last_event_ts", "note", "recorded_at", "version")


class HasTimezone(Protocol):
    """What the rows need of the plant: its IANA timezone (e.g. `streams.settings.PlantSettings`)."""

    timezone: str


Plant = Union[str, HasTimezone]  # an IANA timezone name, or an object carrying one


class ShiftStamp(NamedTuple):
    """The shift columns of a row."""

    name: str
    start_ms: int  # UTC epoch ms the shift started (0: unknown)
    date: dt.date  # plant-local date the shift starts on


# Timestamp (UTC ms) → its shift: an object with `name`, `start_ms` and `date` (`streams.shifts.ShiftSlot`),
# raising LookupError where the calendar has a gap. Built by `defectstream sink` from the plant calendar and
# used only for events that carry no shift (written before the tracker stamped it).
ShiftOf = Callable[[int], Any]


def _timezone(plant: Plant) -> str:
    return plant if isinstance(plant, str) else plant.timezone


def _local_date(ts_ms: int, tz: str) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ms / 1000.0, tz=ZoneInfo(tz)).date()


def event_shift(ev: Any, tz: str, at_ms: int, shift_of: ShiftOf | None = None) -> ShiftStamp:
    """The shift columns of an event: the shift it carries, else `shift_of(at_ms)`, else none.

    An event carries its shift as `shift` (the tracker stamps it at close; a name, or a record with
    `name`/`start`) or, for a PartInspected, as `shift_name`/`shift_start`. Without one, `shift_of`
    applies the calendar to `at_ms`; a calendar gap (LookupError), or no `shift_of`, gives
    shift_name '' and shift_start 0 (the row is still stored). `shift_date` is the plant-local date
    the shift starts on (that of `at_ms` when the start is unknown).
    """
    shift = getattr(ev, "shift", None) or getattr(ev, "shift_name", None)
    start = getattr(ev, "shift_start", None)
    if isinstance(shift, dict):
        shift, start = shift.get("name"), shift.get("start", shift.get("start_ms", start))
    if shift:
        start = int(start or 0)
        return ShiftStamp(str(shift), start, _local_date(start or at_ms, tz))
    if shift_of is not None:
        try:
            slot = shift_of(at_ms)
            return ShiftStamp(slot.name, int(slot.start_ms), slot.date)
        except LookupError:
            pass
    return ShiftStamp("", int(start or 0), _local_date(start or at_ms, tz))


def defect_row(ev: DefectEvent, plant: Plant, ingested_at: int, *, shift_of: ShiftOf | None = None) -> tuple:
    """`defects` row of a DefectEvent.

    Its shift is the one the event carries (its part's, stamped by the tracker); for an event that
    carries none, the one `shift_of` gives for the track's first frame (see `event_shift`).
    """
    shift_name, shift_start, shift_date = event_shift(ev, _timezone(plant), ev.first_frame_ts, shift_of)
    votes = sorted(ev.class_votes.items())
    b = ev.bbox
    return (
        ev.event_id, ev.schema_version, ev.camera_id, ev.line_id, ev.part_id, ev.track_id, ev.defect_class,
        float(ev.severity), float(ev.severity_max), float(ev.confidence), b["x0"], b["y0"], b["x1"], b["y1"],
        ev.best_frame_seq, ev.area_px, ev.frames_seen, ev.frames_total, ev.first_frame_ts, ev.last_frame_ts,
        [k for k, _ in votes], [float(v) for _, v in votes], ev.model_version, ev.run_id, shift_name,
        shift_start, shift_date, ingested_at, ingested_at, ev.emission_id,
    )


def part_row(ev: PartInspected, plant: Plant, ingested_at: int, *, shift_of: ShiftOf | None = None) -> tuple:
    """`parts` row of a PartInspected; shift as the worker applied it, its plant-local start date added.

    A part that carries no shift name gets the one `shift_of` gives for its first frame, if any.
    """
    shift_name, shift_start, shift_date = event_shift(ev, _timezone(plant), ev.first_frame_ts, shift_of)
    counts = sorted(ev.defect_counts.items())
    return (
        ev.event_id, ev.schema_version, ev.camera_id, ev.line_id, ev.part_id, ev.verdict,
        [k for k, _ in counts], [int(v) for _, v in counts], ev.defects_total, ev.frames,
        ev.first_frame_ts, ev.last_frame_ts, ev.closed_reason, ev.model_version, ev.run_id,
        shift_name, shift_start, shift_date, ingested_at, ingested_at, ev.emission_id,
    )


def alert_row(ev: Alert, ingested_at: int, *, run_id: str = "production", model_version: str = "") -> tuple:
    """`alerts` row of an Alert (null camera/class stored as '')."""
    return (
        ev.alert_id, ev.schema_version, ev.kind, ev.line_id, ev.camera_id or "", ev.defect_class or "",
        ev.metric, float(ev.rate), float(ev.center), float(ev.limit), ev.rule, ev.inspected, ev.defective,
        ev.window_start, ev.window_end, ev.created_at, ev.message, model_version, run_id, ingested_at, ingested_at,
    )


def review_frame_row(ev: ReviewFrame, ingested_at: int) -> tuple:
    """`review_frames` row of a sampled frame (the image as the camera's bytes, a String column)."""
    return (
        ev.frame_id, ev.schema_version, ev.camera_id, ev.line_id, ev.part_id, ev.frame_seq, ev.frame_index,
        ev.capture_ts, ev.encoding, ev.width, ev.height, ev.channels, bytes(ev.image), ev.model_version, ev.run_id,
        list(ev.det_class), [float(c) for c in ev.det_confidence], list(ev.det_x0), list(ev.det_y0),
        list(ev.det_x1), list(ev.det_y1), ev.sampled_at, ingested_at, ingested_at,
    )


def review_candidate_row(ev: ReviewCandidate, ingested_at: int) -> tuple:
    """`review_queue` row of a candidate."""
    return (
        ev.candidate_id, ev.schema_version, ev.frame_id, ev.reason, float(ev.score), ev.camera_id, ev.line_id,
        ev.part_id, ev.frame_seq, ev.capture_ts, ev.model_version, ev.run_id, ev.defect_class, float(ev.confidence),
        ev.bbox_x0, ev.bbox_y0, ev.bbox_x1, ev.bbox_y1, ev.note, ev.created_at, ingested_at, ingested_at,
    )


@dataclass(frozen=True)
class TableSpec:
    """Where records of one topic go and how a decoded record becomes a row."""

    table: str
    columns: Sequence[str]
    to_row: Callable[[dict, int], tuple]  # (decoded Avro record, ingested_at ms) → row
    run_key: Callable[[tuple], tuple[str, str, int]] | None = None  # row → (run_id, model_version, ts)
    # Column (epoch ms) the table's `event_time`, hence its `PARTITION BY toYYYYMM(event_time)`, is computed from.
    partition_column: str | None = None


def table_specs(topics: Any, plant: Plant, *, shift_of: ShiftOf | None = None) -> dict[str, TableSpec]:
    """Topic name → table for the `defects`, `parts` and `alerts` topics of `topics` (a `TopicNames`),
    and its `review_frames` / `review_queue` topics where it names them.

    Args:
        topics: anything with `defects`, `parts` and `alerts` topic names.
        plant: the plant's timezone (a name, or an object with `timezone`) for the shift dates.
        shift_of: the calendar, for events that carry no shift (see `event_shift`).
    """
    di = {c: i for i, c in enumerate(DEFECT_COLUMNS)}
    pi = {c: i for i, c in enumerate(PART_COLUMNS)}
    tz = _timezone(plant)
    return {
        topics.defects: TableSpec(
            "defects", DEFECT_COLUMNS, lambda r, now: defect_row(DefectEvent.from_avro(r), tz, now, shift_of=shift_of),
            lambda row: (row[di["run_id"]], row[di["model_version"]], row[di["first_frame_ts"]]),
            partition_column="first_frame_ts",
        ),
        topics.parts: TableSpec(
            "parts", PART_COLUMNS, lambda r, now: part_row(PartInspected.from_avro(r), tz, now, shift_of=shift_of),
            lambda row: (row[pi["run_id"]], row[pi["model_version"]], row[pi["first_frame_ts"]]),
            partition_column="first_frame_ts",
        ),
        topics.alerts: TableSpec("alerts", ALERT_COLUMNS, lambda r, now: alert_row(Alert.from_avro(r), now),
                                 partition_column="created_at"),
        **({topics.review_frames: TableSpec(
            "review_frames", REVIEW_FRAME_COLUMNS, lambda r, now: review_frame_row(ReviewFrame.from_avro(r), now),
            partition_column="capture_ts"),
            topics.review_queue: TableSpec(
            "review_queue", REVIEW_QUEUE_COLUMNS, lambda r, now: review_candidate_row(ReviewCandidate.from_avro(r), now),
            partition_column="capture_ts"),
            } if hasattr(topics, "review_frames") else {}),
    }


# Server error codes worth retrying: overload, timeouts, too many parts, memory, readonly replica.
# 252 (TOO_MANY_PARTS) is also "too many partitions for single INSERT block", which no retry of the
# same INSERT fixes: `is_too_many_partitions` tells them apart, and the sink splits such an INSERT.
_RETRYABLE_CODES = {3, 159, 202, 209, 210, 241, 242, 252, 319, 425, 999}


def is_too_many_partitions(exc: BaseException) -> bool:
    """Whether an INSERT was refused for touching more partitions than `max_partitions_per_insert_block`.

    clickhouse-driver raises a ServerException with code 252; chdb a ChdbError (a RuntimeError)
    whose text starts with "Code: 252". Both carry "Too many partitions for single INSERT block".
    """
    text = str(exc)
    if "partitions for single insert block" not in text.lower():
        return False
    code = getattr(exc, "code", None)
    return code == 252 or (code is None and "Code: 252" in text)


def month_utc(ts_ms: int) -> int:
    """YYYYMM of an epoch-ms timestamp in UTC (the sink's stand-in for the server's `toYYYYMM(event_time)`).

    The server computes the partition in its own timezone, less than a day off UTC, so the rows of
    one UTC month fall into at most two server months (see `split_by_partition`).
    """
    d = dt.datetime.fromtimestamp(max(0, int(ts_ms)) // 1000, tz=dt.timezone.utc)
    return d.year * 100 + d.month


def split_by_partition(rows: Sequence[tuple], ts_index: int, max_months: int) -> list[list[tuple]]:
    """`rows` in chunks that each hold the rows of at most `max_months` UTC months (all rows of a month in one).

    A chunk of k UTC months touches at most 2·k partitions in any server timezone (see `month_utc`).
    Months are taken oldest first; rows keep their order within a month. One chunk when the rows
    span `max_months` months or fewer.
    """
    by_month: dict[int, list[tuple]] = {}
    for row in rows:
        by_month.setdefault(month_utc(row[ts_index]), []).append(row)
    if len(by_month) <= max_months:
        return [list(rows)] if rows else []
    months = sorted(by_month)
    return [[r for m in months[i:i + max_months] for r in by_month[m]] for i in range(0, len(months), max_months)]


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed INSERT may succeed later (network/overload) rather than never (bad SQL/types)."""
    from clickhouse_driver import errors

    if isinstance(exc, errors.ServerException):
        return exc.code in _RETRYABLE_CODES
    return isinstance(exc, (errors.NetworkError, errors.SocketTimeoutError, errors.UnexpectedPacketFromServerError,
                            OSError, EOFError, ConnectionError, TimeoutError))


# Server error codes that mean "this value does not fit": the row's fault, not the server's.
_ROW_ERROR_CODES = {
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH (also clickhouse-driver's client-side TypeMismatchError)
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
}


def is_row_error(exc: BaseException) -> bool:
    """Whether a failed INSERT was refused for a value in it (retrying the same rows never helps).

    clickhouse-driver serialises rows on the client and raises `TypeMismatchError` (code 53) for a
    value its column cannot hold (e.g. a negative UInt64); plain ValueError/OverflowError come from
    serialising (or, for chdb, quoting) a value. TypeError is left out on purpose: it is far more
    often a bug, and a bug must not dead-letter a whole stream row by row.
    """
    import struct

    from clickhouse_driver import errors

    if isinstance(exc, (errors.ServerException, errors.TypeMismatchError)):
        return getattr(exc, "code", None) in _ROW_ERROR_CODES
    return isinstance(exc, (ValueError, OverflowError, struct.error))


class _TooManyPartitions(Exception):
    """An INSERT touched more partitions than the server allows (internal: `write` splits it)."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class ClickHouseSink(BatchingSink):
    """Batches decoded events per topic partition and INSERTs them into their table.

    `write()` retries a failed INSERT `settings.max_retries` times with exponential backoff and
    jitter, then raises `SinkBackpressureError` so the runner holds the partitions; no retry of one
    `flush()` starts after `settings.flush_budget_s` (the consumer must poll again within its
    max.poll.interval). A value that can never be stored raises `SinkRejectedError` (the base class
    splits the batch to find the row); other errors a retry cannot fix (unknown table, access
    denied) raise `SinkBackpressureError` with `hold_max_s`, logged as errors.
    """

    def __init__(
        self,
        clickhouse: ClickHouseSettings,
        specs: dict[str, TableSpec],
        settings: SinkSettings | None = None,
        *,
        executor_factory: Callable[[], Executor] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.clickhouse = clickhouse
        self.specs = specs
        self.settings = settings or SinkSettings()
        self._factory = executor_factory or (lambda: DriverExecutor.connect(clickhouse))
        self._ex: Executor | None = None
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._deadline: float | None = None  # no retry starts after this (set per flush)
        self._last_version = 0
        self._runs_seen: set[tuple[str, str]] = set()
        self.rows_written: dict[str, int] = {spec.table: 0 for spec in specs.values()}
        self.retries = 0
        self.inserts = 0  # INSERT statements acknowledged (a batch spanning many months takes several)
        # Months per INSERT; halved for the rest of the process when a server refuses a chunk as too many partitions.
        self.max_partitions_per_insert = self.settings.max_partitions_per_insert

    # -- contract -------------------------------------------------------------------------
    def setup(self) -> None:
        self._executor()

    def add(self, value: Any, *, topic: str, partition: int, offset: int, timestamp_ms: int = 0) -> None:
        """Convert a decoded record to its row now, so a record that does not fit fails here.

        Raises:
            KeyError: no table for `topic`.
            ValueError / TypeError / KeyError: the record does not fit the table (dead-letter it).
        """
        spec = self.specs[topic]
        now = int(self._clock() * 1000)
        row = spec.to_row(value, now)
        if "version" in spec.columns:
            row = self._stamp_version(row, spec.columns.index("version"), now)
        super().add(row, topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms)

    def _stamp_version(self, row: tuple, at: int, now_ms: int) -> tuple:
        """Give the row a `version` above every one this sink wrote before: ingest ms × 1024 plus a
        counter, so two deliveries of one event id (a part re-closed after a crash, consumed in one
        batch) never tie: the one consumed last wins, in ReplacingMergeTree's merges and in the
        queries' argMax alike (issue 12 finding 6)."""
        version = max(now_ms * 1024, self._last_version + 1)
        self._last_version = version
        return row[:at] + (version,) + row[at + 1:]

    def flush(self) -> FlushResult:
        self._deadline = self._monotonic() + self.settings.flush_budget_s
        try:
            return super().flush()
        finally:
            self._deadline = None

    def write(self, batch: SinkBatch) -> None:
        """INSERT the batch's rows, one INSERT per chunk of at most `max_partitions_per_insert` months.

        Returns only once every chunk was acknowledged; raises (see `BatchingSink.write`) otherwise,
        chunks already written being written again with the whole batch later (idempotent tables).
        """
        spec = self.specs[batch.topic]
        rows = [it.value for it in batch]
        self._insert_split(spec, rows)
        self.rows_written[spec.table] = self.rows_written.get(spec.table, 0) + len(rows)
        if spec.run_key is not None:
            self._record_runs(spec, rows)

    def _insert_split(self, spec: TableSpec, rows: list[tuple]) -> None:
        if spec.partition_column is None:
            months: list[list[tuple]] = [rows]
        else:
            months = split_by_partition(rows, spec.columns.index(spec.partition_column), 1)  # one list per month
        i = 0
        while i < len(months):
            k = 1 if spec.partition_column is None else self.max_partitions_per_insert
            chunk = [r for m in months[i:i + k] for r in m]
            try:
                self._with_retries(lambda ex: ex.insert(spec.table, spec.columns, chunk),
                                   f"{spec.table} ({len(chunk)} rows)")
            except _TooManyPartitions as exc:
                span = len(months[i:i + k])
                if span <= 1 or spec.partition_column is None:
                    raise SinkBackpressureError(
                        self.settings.hold_max_s,
                        f"INSERT {spec.table} refused even with one month per INSERT: {exc.cause}", cause=exc.cause,
                    ) from exc.cause
                self.max_partitions_per_insert = max(1, span // 2)
                log.warning("ClickHouse refused an INSERT into %s as touching too many partitions (%s); "
                            "writing at most %d months per INSERT from now on", spec.table, exc.cause,
                            self.max_partitions_per_insert)
                continue  # the same rows again, in smaller chunks
            self.inserts += 1
            i += k

    def healthy(self) -> bool:
        try:
            self._executor().query("SELECT 1")
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            log.debug("ClickHouse not healthy: %s", exc)
            self._reset()
            return False

    def close(self) -> None:
        super().close()
        self._reset()

    # -- internals ------------------------------------------------------------------------
    def _executor(self) -> Executor:
        if self._ex is None:
            self._ex = self._factory()
        return self._ex

    def _reset(self) -> None:
        if self._ex is not None and hasattr(self._ex, "close"):
            try:
                self._ex.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass
        self._ex = None

    def _with_retries(self, op: Callable[[Executor], Any], what: str) -> Any:
        s = self.settings
        delay = s.backoff_initial_s
        for attempt in range(s.max_retries + 1):
            try:
                return op(self._executor())
            except Exception as exc:
                self._reset()  # a failed INSERT may leave the connection mid-protocol
                if is_too_many_partitions(exc):
                    raise _TooManyPartitions(exc) from exc  # the same INSERT never succeeds: split it
                if is_row_error(exc):
                    raise SinkRejectedError(f"INSERT {what} rejected: {type(exc).__name__}: {exc}", cause=exc) from exc
                if not is_retryable(exc):
                    log.error("INSERT %s failed with an error a retry cannot fix (%s: %s); holding until it is "
                              "fixed (next probe in %.0fs)", what, type(exc).__name__, exc, s.hold_max_s)
                    raise SinkBackpressureError(
                        s.hold_max_s, f"INSERT {what} failed: {type(exc).__name__}: {exc}", cause=exc
                    ) from exc
                out_of_time = self._deadline is not None and self._monotonic() >= self._deadline
                if attempt == s.max_retries or out_of_time:
                    raise SinkBackpressureError(
                        s.hold_initial_s, f"INSERT {what} failed {attempt + 1} times: {exc}", cause=exc
                    ) from exc
                self.retries += 1
                wait = min(delay, s.backoff_max_s) * (0.5 + random.random() / 2)
                if self._deadline is not None:
                    wait = max(0.0, min(wait, self._deadline - self._monotonic()))
                log.warning("INSERT %s failed (%s); retry %d/%d in %.2fs", what, exc, attempt + 1, s.max_retries, wait)
                self._sleep(wait)
                delay *= 2

    def _record_runs(self, spec: TableSpec, rows: list[tuple]) -> None:
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for row in rows:
            run_id, model_version, ts = spec.run_key(row)  # type: ignore[misc]
            if (run_id, model_version) in self._runs_seen:
                continue
            lo, hi = spans.get((run_id, model_version), (ts, ts))
            spans[(run_id, model_version)] = (min(lo, ts), max(hi, ts))
        if not spans:
            return
        now = int(self._clock() * 1000)
        new = [
            (run, mv, "production" if run == "production" else "replay", lo, hi, "first seen by the sink", now, now)
            for (run, mv), (lo, hi) in sorted(spans.items())
        ]
        self._with_retries(lambda ex: ex.insert("model_runs", MODEL_RUN_COLUMNS, new), f"model_runs ({len(new)} rows)")
        self._runs_seen.update(spans)
