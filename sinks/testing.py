"""Test helpers shipped with the sinks: event builders and a catalogue of every query defectstream runs.

The catalogue lets one test run each statement on the ClickHouse 18.16 server and on chdb (the
current engine): a query that only works on one of them fails there.
"""
from __future__ import annotations

import random
from typing import Iterator

from schemas.events import Alert, DefectEvent, PartInspected, deterministic_id
from streams.settings import PlantSettings
from streams.shifts import shift_at


def make_part(i: int, ts_ms: int, *, line: str = "line-1", camera: str = "cam-1", fail: bool = False,
              counts: dict[str, int] | None = None, run_id: str = "production", model_version: str = "m1",
              plant: PlantSettings | None = None) -> PartInspected:
    """A PartInspected with a deterministic id (same arguments → same event)."""
    slot = shift_at(ts_ms, plant or PlantSettings())
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


def query_catalog(start_ms: int, end_ms: int) -> dict[str, str]:
    """Every SELECT of the report and the monitor, rendered for [start, end): name → SQL."""
    from streams.spc import monitor, report

    out: dict[str, str] = {}
    variants = {
        "all": report.ReportFilters(start_ms, end_ms),
        "line": report.ReportFilters(start_ms, end_ms, line="line-1"),
        "camera": report.ReportFilters(start_ms, end_ms, line="line-1", camera="cam-1"),
        "class": report.ReportFilters(start_ms, end_ms, defect_class="crack"),
        "quote": report.ReportFilters(start_ms, end_ms, run_id="it's a \\ replay", camera="cam'1"),
    }
    for by in ("shift", "hour", "day"):
        for name, f in variants.items():
            out[f"report_{by}_{name}"] = report.subgroups_sql(by, f)
    for name, f in variants.items():
        out[f"pareto_{name}"] = report.pareto_sql(f)
    out["monitor_window"] = monitor.window_sql("production", start_ms, end_ms)
    out["monitor_baseline"] = monitor.baseline_sql("production", start_ms, end_ms, 3_600_000)
    out["monitor_alert_state"] = monitor.alert_state_sql("production")
    out["model_runs"] = (
        "SELECT run_id, model_version, min(first_event_ts), max(last_event_ts) FROM model_runs "
        "GROUP BY run_id, model_version ORDER BY run_id, model_version"
    )
    return out


def seed(ex, events, plant: PlantSettings | None = None, *, ingested_at: int = 1) -> dict[str, int]:
    """Insert events (PartInspected / DefectEvent / Alert) straight into their tables; rows per table."""
    from sinks.clickhouse import ALERT_COLUMNS, DEFECT_COLUMNS, PART_COLUMNS, alert_row, defect_row, part_row

    plant = plant or PlantSettings()
    tables: dict[str, tuple[tuple, list]] = {
        "parts": (PART_COLUMNS, []), "defects": (DEFECT_COLUMNS, []), "alerts": (ALERT_COLUMNS, [])}
    for ev in events:
        if isinstance(ev, PartInspected):
            tables["parts"][1].append(part_row(ev, plant, ingested_at))
        elif isinstance(ev, DefectEvent):
            tables["defects"][1].append(defect_row(ev, plant, ingested_at))
        elif isinstance(ev, Alert):
            tables["alerts"][1].append(alert_row(ev, ingested_at))
        else:
            raise TypeError(f"cannot seed {type(ev).__name__}")
    return {t: ex.insert(t, cols, rows) for t, (cols, rows) in tables.items() if rows}


def catalog_answers(ex, start_ms: int, end_ms: int) -> dict[str, list[tuple]]:
    """The answer of every catalogue query (rows sorted), to compare a database before and after a change."""
    return {name: sorted(ex.query(sql), key=repr) for name, sql in query_catalog(start_ms, end_ms).items()}


def write_through_sink(ex, events, *, ingested_at_s: float = 1_000_000.0, repeat: int = 1):
    """Write events as the ClickHouse sink does (row mapping, one batch per topic), each batch `repeat` times.

    `repeat=2` is an INSERT whose acknowledgement was lost and which was sent again, byte for byte.
    Returns the sink (its `rows_written` counts every write).
    """
    from sinks.base import SinkBatch
    from sinks.clickhouse import ClickHouseSink, table_specs
    from streams.settings import KafkaSettings, SinkSettings

    topics = KafkaSettings().topics
    sink = ClickHouseSink(None, table_specs(topics, PlantSettings()), SinkSettings(),  # type: ignore[arg-type]
                          executor_factory=lambda: ex, clock=lambda: ingested_at_s)
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
