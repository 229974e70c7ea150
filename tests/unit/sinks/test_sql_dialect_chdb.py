"""Every migration and every report/monitor query on chdb, the current ClickHouse engine in-process.

tests/integration/test_clickhouse_dialect.py runs the same on the ClickHouse 18.16 server.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from schemas.events import DefectEvent, PartInspected
from sinks.clickhouse import ClickHouseSink, table_specs
from sinks.migrations import load_migrations, migrate, status
from sinks.sql import ChdbExecutor
from sinks.testing import make_alert, sample_events, seed
from streams.settings import KafkaSettings, PlantSettings, SinkSettings
from streams.spc import monitor, report
from streams.spc.queries import query_catalog

T0 = 1_763_700_000_000  # 2025-11-21 04:40 UTC
PLANT = PlantSettings()


@pytest.fixture(scope="module")
def chdb_ex(tmp_path_factory):
    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb")))
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def seeded(chdb_ex):
    assert [m.version for m in migrate(chdb_ex)] == [m.version for m in load_migrations()]
    events = list(sample_events(T0, 600))
    # Through the sink (row mapping + INSERT), twice: every event delivered twice.
    sink = ClickHouseSink(None, table_specs(KafkaSettings().topics, PLANT), SinkSettings(),  # type: ignore[arg-type]
                          executor_factory=lambda: chdb_ex)
    for rnd in range(2):
        for off, ev in enumerate(events):
            topic = "parts" if isinstance(ev, PartInspected) else "defects"
            sink.add(ev.codec().decode(ev.codec().encode(ev.to_avro())), topic=topic, partition=rnd, offset=off)
        assert sink.flush().ok
    seed(chdb_ex, [make_alert(T0 + 3_600_000), make_alert(T0 + 3_600_000)])
    return events


@contextmanager
def _scratch_database(ex, name: str) -> Iterator[None]:
    """The block runs in database `name`, created and migrated here; afterwards the previous
    database is current again and `name` is dropped."""
    home = ex.query("SELECT currentDatabase()")[0][0]
    try:
        ex.query(f"CREATE DATABASE IF NOT EXISTS {name}")
        ex.query(f"USE {name}")
        migrate(ex)
        yield
    finally:
        ex.query(f"USE {home}")
        ex.query(f"DROP DATABASE IF EXISTS {name}")


def test_migrations_are_idempotent(chdb_ex, seeded):
    before = chdb_ex.query("SELECT name, engine, partition_key, sorting_key FROM system.tables "
                           "WHERE database = currentDatabase() ORDER BY name")
    assert migrate(chdb_ex) == []
    after = chdb_ex.query("SELECT name, engine, partition_key, sorting_key FROM system.tables "
                          "WHERE database = currentDatabase() ORDER BY name")
    assert before == after
    assert {r[0] for r in after} == {"alerts", "defects", "labels", "model_runs", "parts", "review_frames", "review_queue", "schema_migrations"}
    assert all(s.state == "applied" for s in status(chdb_ex))
    parts = next(r for r in after if r[0] == "parts")
    assert parts[1] == "ReplacingMergeTree" and parts[2] == "toYYYYMM(event_time)"


@pytest.mark.parametrize("name", sorted(query_catalog(0, 1)))
def test_every_query_runs(chdb_ex, seeded, name):
    chdb_ex.query(query_catalog(T0, T0 + 600 * 60_000)[name])


def test_duplicates_count_once(chdb_ex, seeded):
    parts = [e for e in seeded if isinstance(e, PartInspected)]
    defects = [e for e in seeded if isinstance(e, DefectEvent)]
    assert chdb_ex.query("SELECT count() FROM parts")[0][0] == 2 * len(parts)  # stored twice (no merge yet)
    f = report.ReportFilters(T0, T0 + 600 * 60_000)
    groups = report.fetch_subgroups(chdb_ex, "day", f, PLANT)
    assert sum(g.inspected for g in groups) == len(parts)
    assert sum(g.defective for g in groups) == sum(p.verdict == "FAIL" for p in parts)
    assert sum(g.defects for g in groups) == len(defects)
    pareto = dict(chdb_ex.query(report.pareto_sql(f)))
    assert pareto == {c: sum(d.defect_class == c for d in defects) for c in {d.defect_class for d in defects}}
    cls = report.fetch_subgroups(chdb_ex, "shift", report.ReportFilters(T0, T0 + 600 * 60_000, defect_class="scratch"), PLANT)
    assert sum(g.defects for g in cls) == sum(d.defect_class == "scratch" for d in defects)
    assert chdb_ex.query("SELECT count() FROM model_runs")[0] == (1,)


def test_per_shift_groups_follow_the_calendar(chdb_ex, seeded):
    f = report.ReportFilters(T0, T0 + 600 * 60_000, line="line-1", camera="cam-1")
    groups = report.fetch_subgroups(chdb_ex, "shift", f, PLANT)
    parts = [e for e in seeded if isinstance(e, PartInspected) and e.camera_id == "cam-1"]
    expect: dict[int, int] = {}
    for p in parts:
        expect[p.shift_start] = expect.get(p.shift_start, 0) + 1
    assert [(g.start_ms, g.inspected) for g in groups] == sorted(expect.items())
    assert groups[1].label.endswith(("early", "late", "night"))


def test_monitor_queries_on_chdb(chdb_ex, seeded):
    rows = chdb_ex.query(monitor.window_sql("production", T0, T0 + 600 * 60_000))
    assert {(r[0], r[1]) for r in rows} == {("line-1", "cam-1"), ("line-1", "cam-2")}
    state = chdb_ex.query(monitor.alert_state_sql("production"))
    assert state == [("line-1", "cam-1", "SPIKE", "WE1", T0 + 3_600_000)]


def test_a_resent_batch_changes_no_answer_of_the_report_or_monitor(chdb_ex):
    """ClickHouse's insert deduplication does not exist for these tables on 18.16 (and needs a table
    setting 18.16 cannot declare on a current server); one row per id in every query is the
    equivalent: a batch sent again after a lost acknowledgement doubles no count."""
    from sinks.testing import write_through_sink
    from streams.spc.queries import catalog_answers

    with _scratch_database(chdb_ex, "resent"):
        for table in ("parts", "defects", "alerts", "model_runs"):
            chdb_ex.query(f"SYSTEM STOP MERGES {table}")  # the queries, not a merge, must fold the copies
        events = list(sample_events(T0, 200, p=0.2)) + [make_alert(T0 + 3_600_000)]
        span = (T0, T0 + 200 * 60_000)
        write_through_sink(chdb_ex, events)
        once = catalog_answers(chdb_ex, *span)
        parts = sum(isinstance(e, PartInspected) for e in events)
        assert chdb_ex.query("SELECT count() FROM parts")[0][0] == parts
        write_through_sink(chdb_ex, events, repeat=2)  # the same batch again, twice (a lost ack, resent)
        write_through_sink(chdb_ex, events, ingested_at_s=2_000_000.0)  # re-read after a rewind: newer version
        assert chdb_ex.query("SELECT count() FROM parts")[0][0] == 4 * parts  # stored 4 times, not merged yet
        assert catalog_answers(chdb_ex, *span) == once
        assert any(rows for rows in once.values() if rows)  # the answers are not all empty


def test_a_part_reprocessed_under_other_track_ids_counts_one_defect_set(chdb_ex):
    """Finding 6 of issue 12: re-processing after a crash may re-run inference on other batch
    boundaries (or under fp16) and give a part's tracks other ids, so its DefectEvents get other
    event ids while its verdict keeps its id (camera, part, model version, run). Every count must
    come from one defect set per (part, model version): the one of its latest verdict."""
    from sinks.testing import make_defect, make_part, write_through_sink

    span = (T0, T0 + 60 * 60_000)
    f = report.ReportFilters(*span)

    def answers() -> tuple:
        groups = report.fetch_subgroups(chdb_ex, "day", f, PLANT)
        one_class = report.fetch_subgroups(chdb_ex, "day", report.ReportFilters(*span, defect_class="scratch"), PLANT)
        return (dict(chdb_ex.query(report.pareto_sql(f))), [(g.inspected, g.defective, g.defects) for g in groups],
                sum(g.defects for g in one_class), sorted(chdb_ex.query(monitor.window_sql("production", *span))))

    # first close: tracks 0 (crack) and 1 (scratch); after the crash: 0 (crack) and 2 (scratch) — same
    # defects under other ids; a third close (the latest) lost the scratch (fp16 moved its score)
    first = make_part(1, T0 + 1_000, fail=True, counts={"crack": 1, "scratch": 1})
    latest = make_part(1, T0 + 1_000, fail=True, counts={"crack": 1})
    ok = make_part(2, T0 + 2_000)
    assert first.event_id == latest.event_id
    emissions = [
        ([first, make_defect(first, 0, "crack"), make_defect(first, 1, "scratch"), ok], 1_000_000.0),
        ([first, make_defect(first, 0, "crack"), make_defect(first, 2, "scratch")], 1_000_050.0),
        ([latest, make_defect(latest, 3, "crack")], 1_000_100.0),
    ]
    with _scratch_database(chdb_ex, "reemitted"):
        chdb_ex.query("SYSTEM STOP MERGES parts")  # the queries, not a merge, must choose the verdict
        for events, at in emissions[:2]:
            write_through_sink(chdb_ex, events, ingested_at_s=at)
        assert chdb_ex.query("SELECT uniqExact(event_id) FROM defects")[0][0] == 3  # rows under 3 ids for 2 defects
        assert answers()[:3] == ({"crack": 1, "scratch": 1}, [(2, 1, 2)], 1)
        write_through_sink(chdb_ex, emissions[2][0], ingested_at_s=emissions[2][1])
        pareto, groups, scratch, window = answers()
        assert pareto == {"crack": 1} and groups == [(2, 1, 1)] and scratch == 0  # the latest verdict's set
        assert [(r[0], r[1], r[3], r[4]) for r in window] == [("line-1", "cam-1", 2, 1)]

    # Two closes the sink stored in one flush (same version): one whole verdict wins, the same one
    # whatever order the rows were written in, never a mix of the two rows' columns.
    got = []
    for order in ((first, latest), (latest, first)):
        with _scratch_database(chdb_ex, "reemitted"):
            for ev in order:
                write_through_sink(chdb_ex, [ev], ingested_at_s=1_000_000.0)
            got.append(answers()[:3])
    assert got[0] == got[1]
    assert got[0] in (({"crack": 1, "scratch": 1}, [(1, 1, 2)], 1), ({"crack": 1}, [(1, 1, 1)], 0))


def _closes_of_one_part(t0: int):
    """Two closes of one part with other defect sets (the second after a crash: other batch boundaries,
    track 1 became track 2 and another class, track 0 re-scored), each with its emission id, and a part
    written before emission ids ('' on the verdict and its defect)."""
    from dataclasses import replace

    from schemas.events import emission_id_of
    from sinks.testing import make_defect, make_part

    def close(part, defects):
        eid = emission_id_of(part, defects)
        return [replace(part, emission_id=eid)] + [replace(d, emission_id=eid) for d in defects]

    a = make_part(1, t0 + 1_000, fail=True, counts={"crack": 1, "scratch": 1})
    b = make_part(1, t0 + 1_000, fail=True, counts={"crack": 1, "pit": 1})
    first = close(a, [make_defect(a, 0, "crack"), make_defect(a, 1, "scratch")])
    second = close(b, [replace(make_defect(b, 0, "crack"), severity=8.5), make_defect(b, 2, "pit")])
    legacy = make_part(2, t0 + 2_000, fail=True, counts={"crack": 1})
    assert first[0].event_id == second[0].event_id and first[0].emission_id != second[0].emission_id
    return first, second, [legacy, make_defect(legacy, 0, "crack")]


def reemission_answers(ex, t0: int) -> dict:
    """What the report, the monitor and the defect set say about [t0, t0 + 1 h)."""
    from streams.spc import queries as q

    f = q.ReportFilters(t0, t0 + 3_600_000)
    day = ex.query(q.subgroups_sql("day", f))
    return {
        "report": [(r[2], r[3], r[4]) for r in day],
        "pareto": dict(ex.query(q.pareto_sql(f))),
        "monitor": [(r[0], r[1], r[3], r[4]) for r in ex.query(q.window_sql("production", f.since_ms, f.until_ms))],
        "defects": sorted((r[3], r[4], r[5], round(float(r[6]), 3)) for r in ex.query(q.defect_set_sql(f))),
    }


def test_two_closes_of_a_part_count_once_with_the_defect_set_of_the_winning_verdict(chdb_ex):
    """Finding 6 of issue 12: a part closed twice with other defect sets counts once in the report and
    the monitor, and its defect rows are those of the winning verdict only (its emission id), before any merge."""
    from sinks.testing import write_through_sink

    first, second, legacy = _closes_of_one_part(T0)
    pid = first[0].part_id
    with _scratch_database(chdb_ex, "closes"):
        for table in ("parts", "defects"):
            chdb_ex.query(f"SYSTEM STOP MERGES {table}")  # the queries, not a merge, must choose
        write_through_sink(chdb_ex, first + legacy, ingested_at_s=1_000_000.0)
        write_through_sink(chdb_ex, second, ingested_at_s=1_000_100.0)  # re-emitted after a crash: newer
        assert chdb_ex.query("SELECT count() FROM defects")[0][0] == 5  # both closes' rows are stored
        got = reemission_answers(chdb_ex, T0)
        assert got["report"] == [(2, 2, 3)] and got["pareto"] == {"crack": 2, "pit": 1}
        assert got["monitor"] == [("line-1", "cam-1", 2, 2)]
        assert got["defects"] == sorted([(pid, 0, "crack", 8.5), (pid, 2, "pit", 7.5),
                                         (legacy[0].part_id, 0, "crack", 7.5)])

    # both closes stored in one flush (same version): one close wins, the same in every query and
    # whatever order the rows were written in; its defect set is the one its verdict counts
    got = []
    for order in ((first, second), (second, first)):
        with _scratch_database(chdb_ex, "closes"):
            for events in order:
                write_through_sink(chdb_ex, events, ingested_at_s=1_000_000.0)
            got.append(reemission_answers(chdb_ex, T0))
    assert got[0] == got[1]
    assert got[0]["report"] == [(1, 1, 2)]
    assert got[0]["pareto"] in ({"crack": 1, "scratch": 1}, {"crack": 1, "pit": 1})
    assert sorted(c for _p, _t, c, _s in got[0]["defects"]) == sorted(got[0]["pareto"])


def _closes_under_two_models(t0: int):
    """One part emitted under v2 (a whole part in one batch, the worker died before saving its state) and
    closed again under v1 by the worker that took over (v2 not loadable there): other event ids."""
    from dataclasses import replace

    from schemas.events import emission_id_of
    from sinks.testing import make_defect, make_part

    def close(part, defects):
        eid = emission_id_of(part, defects)
        return [replace(part, emission_id=eid)] + [replace(d, emission_id=eid) for d in defects]

    v2 = make_part(1, t0 + 1_000, fail=True, counts={"crack": 1, "scratch": 1}, model_version="v2")
    v1 = make_part(1, t0 + 1_000, fail=True, counts={"pit": 1}, model_version="v1")
    assert v1.part_id == v2.part_id and v1.event_id != v2.event_id
    other = make_part(2, t0 + 2_000, model_version="v1")
    return (close(v2, [make_defect(v2, 0, "crack"), make_defect(v2, 1, "scratch")]),
            close(v1, [make_defect(v1, 0, "pit")]), [other])


def model_switch_answers(ex, t0: int) -> dict:
    from streams.replay import queries as cq

    got = reemission_answers(ex, t0)
    got["compare_parts"] = sorted((r[2], r[3], r[8]) for r in ex.query(cq.parts_sql("production")))
    got["compare_defects"] = sorted(r[4] for r in ex.query(cq.defects_sql("production")))
    return got


def test_a_part_closed_under_two_model_versions_counts_once_in_every_query(chdb_ex):
    """Item 5 of issue 17: one verdict per part whatever the model version (the later close wins), in the
    report, the pareto, the monitor, the defect set and compare."""
    from sinks.testing import write_through_sink

    under_v2, under_v1, other = _closes_under_two_models(T0)
    pid = under_v2[0].part_id
    with _scratch_database(chdb_ex, "switch"):
        for table in ("parts", "defects"):
            chdb_ex.query(f"SYSTEM STOP MERGES {table}")
        write_through_sink(chdb_ex, under_v2 + other, ingested_at_s=1_000_000.0)
        write_through_sink(chdb_ex, under_v1, ingested_at_s=1_000_100.0)  # the re-close, later
        got = model_switch_answers(chdb_ex, T0)
    assert got["report"] == [(2, 1, 1)] and got["pareto"] == {"pit": 1}
    assert got["monitor"] == [("line-1", "cam-1", 2, 1)]
    assert got["defects"] == [(pid, 0, "pit", 7.5)]
    assert got["compare_parts"] == sorted([(pid, "FAIL", "v1"), (other[0].part_id, "PASS", "v1")])
    assert got["compare_defects"] == ["pit"]


def test_a_batch_of_parts_from_200_months_is_stored_by_a_current_clickhouse(chdb_ex):
    """A current ClickHouse refuses an INSERT touching more than max_partitions_per_insert_block (100)
    partitions (code 252); intake accepts frames ten years old, so one batch can span 200 months.
    The sink splits it by month: everything stored, nothing held, nothing dead-lettered."""
    import datetime as dt

    from sinks.base import TP
    from sinks.testing import make_defect, make_part

    limit = chdb_ex.query("SELECT value FROM system.settings WHERE name = 'max_partitions_per_insert_block'")
    assert limit == [("100",)]
    stamps = [int(dt.datetime(2009 + m // 12, m % 12 + 1, 15, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)
              for m in range(200)]
    parts = [make_part(i, ts, fail=i % 3 == 0) for i, ts in enumerate(stamps)]
    defects = [make_defect(p, 0, "crack") for p in parts if p.verdict == "FAIL"]
    with _scratch_database(chdb_ex, "months"):
        specs = table_specs(KafkaSettings().topics, PLANT)
        sink = ClickHouseSink(None, specs, SinkSettings(), executor_factory=lambda: chdb_ex)  # type: ignore[arg-type]
        for topic, events in (("parts", parts), ("defects", defects)):
            for off, ev in enumerate(events):
                sink.add(ev.codec().decode(ev.codec().encode(ev.to_avro())), topic=topic, partition=0, offset=off)
        res = sink.flush()
        assert res.ok and not res.rejected, res.failed
        assert res.written == {TP("parts", 0): len(parts), TP("defects", 0): len(defects)}
        assert chdb_ex.query("SELECT uniqExact(event_id), uniqExact(_partition_id) FROM parts") == [(200, 200)]
        assert chdb_ex.query("SELECT uniqExact(event_id) FROM defects") == [(len(defects),)]
        assert sink.inserts > 2  # parts and defects each took several INSERTs


def test_unknown_line_camera_or_class_filters_are_named(chdb_ex, seeded):
    check = report.check_filters(chdb_ex, "production", line="line-1", cameras=["cam-1", "cam-9"], defect_class="crack")
    assert check.unknown == ["no camera 'cam-9' on line line-1 in run production (cameras: cam-1, cam-2)"]
    assert check.unseen == []
    assert report.check_filters(chdb_ex, "production", line="line-7").unknown == [
        "no line 'line-7' in run production (lines: line-1)"]
    assert "never recorded" in report.check_filters(chdb_ex, "production", defect_class="rust").unseen[0]
    assert report.check_filters(chdb_ex, "replay-x", cameras=["cam-1"]).unknown  # another run knows no camera


@pytest.mark.parametrize("argv,needle", [
    (["report", "--camera", "cam-9"], "no camera 'cam-9'"),
    (["report", "--line", "line-7", "--camera", "cam-1"], "no line 'line-7'"),
    (["compare", "--candidate", "production-2", "--camera", "cam-9"], "no camera 'cam-9'"),
])
def test_report_and_compare_say_an_unknown_filter_in_one_line(chdb_ex, seeded, monkeypatch, capsys, argv, needle):
    from sinks import sql
    from streams.cli import main

    monkeypatch.setattr(sql.DriverExecutor, "connect", classmethod(lambda cls, *a, **k: _Unclosed(chdb_ex)))
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err, err


def test_report_warns_of_a_class_never_recorded_and_still_reports(chdb_ex, seeded, monkeypatch, capsys):
    from sinks import sql
    from streams.cli import main

    monkeypatch.setattr(sql.DriverExecutor, "connect", classmethod(lambda cls, *a, **k: _Unclosed(chdb_ex)))
    assert main(["report", "--class", "rust", "--since", "2025-11-20", "--until", "2025-11-23"]) == 0
    out = capsys.readouterr()
    assert "warning: class 'rust' was never recorded" in out.err and out.out.strip()


class _Unclosed:
    """The module's chdb executor handed to a command, which closes what it connected."""

    def __init__(self, ex):
        self._ex = ex

    def __getattr__(self, name):
        return getattr(self._ex, name)

    def close(self) -> None:
        pass
