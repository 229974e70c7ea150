"""Test helpers shipped with the sinks: event builders, and writing events into ClickHouse as the sink does.

The catalogue of every query defectstream runs (for the dialect tests) is `streams.spc.queries`.
"""
from __future__ import annotations

import datetime as dt
import random
from types import SimpleNamespace
from typing import Any, Iterator, NamedTuple
from zoneinfo import ZoneInfo

from schemas.events import Alert, DefectEvent, PartInspected, deterministic_id
from sinks.clickhouse import ShiftOf


class _Shift(NamedTuple):
    name: str
    start: dt.time
    end: dt.time


# The calendar of test events when none is given: the default plant calendar of `PlantSettings`.
DEFAULT_PLANT = SimpleNamespace(timezone="Europe/Berlin", shifts=(
    _Shift("early", dt.time(6), dt.time(14)), _Shift("late", dt.time(14), dt.time(22)),
    _Shift("night", dt.time(22), dt.time(6))))


class _Slot(NamedTuple):
    name: str
    start_ms: int
    date: dt.date


def calendar_shift(ts_ms: int, plant: Any = None) -> _Slot:
    """The shift of test data at `ts_ms` in `plant`'s calendar (anything with `timezone` and `shifts`
    of `name`/`start`/`end`, e.g. `PlantSettings`; `DEFAULT_PLANT` when None).

    The same rule as the product's `streams.shifts.shift_at` (wall-clock shifts in the plant timezone,
    a shift crossing midnight belongs to the day it starts on), kept here so that the sink's test
    helpers need nothing from `streams`. Raises LookupError in a calendar gap.
    """
    plant = plant or DEFAULT_PLANT
    tz = ZoneInfo(plant.timezone)
    when = dt.datetime.fromtimestamp(ts_ms / 1000.0, tz=dt.timezone.utc)
    local_day = when.astimezone(tz).date()
    for day in (local_day, local_day - dt.timedelta(days=1)):
        for shift in plant.shifts:
            start = dt.datetime.combine(day, shift.start, tzinfo=tz)
            crosses = (shift.end.hour, shift.end.minute) <= (shift.start.hour, shift.start.minute)
            end = dt.datetime.combine(day + dt.timedelta(days=1) if crosses else day, shift.end, tzinfo=tz)
            if start <= when < end:
                return _Slot(shift.name, int(start.timestamp() * 1000), day)
    raise LookupError(f"no shift of the calendar covers {when.astimezone(tz).isoformat()} ({plant.timezone})")


def calendar(plant: Any = None) -> ShiftOf:
    """`plant`'s calendar as the sink takes it (`shift_of`), for events that carry no shift."""
    return lambda ts_ms: calendar_shift(ts_ms, plant)


def make_part(i: int, ts_ms: int, *, line: str = "line-1", camera: str = "cam-1", fail: bool = False,
              counts: dict[str, int] | None = None, run_id: str = "production", model_version: str = "m1",
              plant: Any = None) -> PartInspected:
    """A PartInspected with a deterministic id (same arguments → same event), its shift from `plant`'s calendar."""
    slot = calendar_shift(ts_ms, plant)
    counts = dict(counts if counts is not None else ({"crack": 1} if fail else {}))
    part_id = f"{camera}-{ts_ms}-{i}"
    return PartInspected(
        event_id=deterministic_id(camera, part_id, model_version, run_id), camera_id=camera, line_id=line,
        part_id=part_id, verdict="FAIL" if fail else "PASS", defects_total=sum(counts.values()), frames=6,
        first_frame_ts=ts_ms, last_frame_ts=ts_ms + 400, closed_reason="LAST_FRAME", model_version=model_version,
        run_id=run_id, shift_name=slot.name, shift_start=slot.start_ms, defect_counts=counts,
    )


def make_defect(part: PartInspected, track: int, defect_class: str = "crack") -> DefectEvent:
    """A DefectEvent on `part` with a deterministic id."""
    return DefectEvent(
        event_id=deterministic_id(part.camera_id, part.part_id, track, part.model_version, part.run_id),
        camera_id=part.camera_id, line_id=part.line_id, part_id=part.part_id, track_id=track,
        defect_class=defect_class, severity=7.5, severity_max=9.0, confidence=0.8,
        bbox={"x0": 10, "y0": 20, "x1": 40, "y1": 50}, best_frame_seq=3, area_px=900, frames_seen=3, frames_total=4,
        first_frame_ts=part.first_frame_ts + 50, last_frame_ts=part.last_frame_ts, model_version=part.model_version,
        run_id=part.run_id, class_votes={defect_class: 2.4, "scratch": 0.6},
    )


def make_alert(ts_ms: int, *, line: str = "line-1", camera: str | None = "cam-1", kind: str = "SPIKE") -> Alert:
    return Alert(
        alert_id=deterministic_id("alert", line, camera, kind, ts_ms), kind=kind, line_id=line, metric="p", rate=0.3,
        center=0.02, limit=0.06, rule="WE1", inspected=100, defective=30, window_start=ts_ms - 300_000,
        window_end=ts_ms, created_at=ts_ms, message="test", camera_id=camera,
    )


def sample_events(start_ms: int, n: int = 600, *, seed: int = 1, cameras: tuple[str, ...] = ("cam-1", "cam-2"),
                  step_ms: int = 60_000, p: float = 0.05) -> Iterator[PartInspected | DefectEvent]:
    """Parts (one per camera per step) with their defects, ~`p` defective."""
    rng = random.Random(seed)
    for i in range(n):
        for cam in cameras:
            fail = rng.random() < p
            counts = {"crack": 1, "scratch": rng.randint(0, 2)} if fail else {}
            part = make_part(i, start_ms + i * step_ms, camera=cam, fail=fail, counts={k: v for k, v in counts.items() if v})
            yield part
            track = 0
            for cls, k in sorted(part.defect_counts.items()):
                for _ in range(k):
                    yield make_defect(part, track, cls)
                    track += 1


def seed(ex, events, plant: Any = None, *, ingested_at: int = 1, shift_of: ShiftOf | None = None) -> dict[str, int]:
    """Insert events (PartInspected / DefectEvent / Alert) straight into their tables; rows per table.

    `plant` (timezone and calendar, `DEFAULT_PLANT` when None) dates the shifts; an event that
    carries no shift gets the one `shift_of` gives (default: `plant`'s calendar), as in the sink.
    """
    from sinks.clickhouse import ALERT_COLUMNS, DEFECT_COLUMNS, PART_COLUMNS, alert_row, defect_row, part_row

    plant = plant or DEFAULT_PLANT
    shift_of = shift_of or calendar(plant)
    tables: dict[str, tuple[tuple, list]] = {
        "parts": (PART_COLUMNS, []), "defects": (DEFECT_COLUMNS, []), "alerts": (ALERT_COLUMNS, [])}
    for ev in events:
        if isinstance(ev, PartInspected):
            tables["parts"][1].append(part_row(ev, plant, ingested_at, shift_of=shift_of))
        elif isinstance(ev, DefectEvent):
            tables["defects"][1].append(defect_row(ev, plant, ingested_at, shift_of=shift_of))
        elif isinstance(ev, Alert):
            tables["alerts"][1].append(alert_row(ev, ingested_at))
        else:
            raise TypeError(f"cannot seed {type(ev).__name__}")
    return {t: ex.insert(t, cols, rows) for t, (cols, rows) in tables.items() if rows}


def write_through_sink(ex, events, *, ingested_at_s: float = 1_000_000.0, repeat: int = 1, plant: Any = None,
                       shift_of: ShiftOf | None = None):
    """Write events as the ClickHouse sink does (row mapping, one batch per topic), each batch `repeat` times.

    `repeat=2` is an INSERT whose acknowledgement was lost and which was sent again, byte for byte.
    `plant` and `shift_of` as for `seed`. Returns the sink (its `rows_written` counts every write).
    """
    from sinks.base import SinkBatch
    from sinks.clickhouse import ClickHouseSink, table_specs
    from sinks.settings import SinkSettings

    plant = plant or DEFAULT_PLANT
    topics = SimpleNamespace(defects="defects", parts="parts", alerts="alerts")  # the default topic names
    sink = ClickHouseSink(None, table_specs(topics, plant, shift_of=shift_of or calendar(plant)),  # type: ignore[arg-type]
                          SinkSettings(), executor_factory=lambda: ex, clock=lambda: ingested_at_s)
    for off, ev in enumerate(events):
        topic = (topics.parts if isinstance(ev, PartInspected) else topics.defects if isinstance(ev, DefectEvent)
                 else topics.alerts)
        sink.add(ev.codec().decode(ev.codec().encode(ev.to_avro())), topic=topic, partition=0, offset=off)
    batches: list[SinkBatch] = list(sink._batches.values())  # noqa: SLF001 - the exact batches flush() would send
    sink._batches.clear()  # noqa: SLF001
    for batch in batches:
        for _ in range(repeat):
            sink.write(batch)
    return sink
