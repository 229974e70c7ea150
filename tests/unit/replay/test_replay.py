"""Replay on a fake consumer and a fake Inspector into chdb: range, whole parts, resume, retention."""
from __future__ import annotations

import pytest

from streams.kafka.records import OutRecord
from streams.replay.replayer import (
    SKIP_AFTER,
    SKIP_CAMERA,
    SKIP_PARTIAL,
    ClickHouseEmitter,
    OffsetAt,
    PartitionPlan,
    RangeGate,
    RangeRemovedError,
    Replayer,
    ReplayError,
    ReplayRequest,
    plan_partitions,
    validate_run_id,
)
from streams.replay.runlog import STATUS_DONE, STATUS_RUNNING, load_run_record
from streams.settings import PlantSettings, Settings

from ..fakes import FakeInspector
from .conftest import T0, FakeConsumer, part_frames

TOPIC = "frames-test"


def settings() -> Settings:
    s = Settings(plant=PlantSettings(timezone="UTC"))
    s.kafka.topics.frames = TOPIC
    s.kafka.topics.cameras = "cameras-test"
    s.model.device = "cpu"
    s.model.batch_size = 2
    return s


def recorded() -> dict[int, list]:
    """Partition 0: cam-1 parts at T0, T0+1000, T0+2000 (+ one that began before T0);
    partition 1: cam-2 parts at T0+500 (no defect) and T0+1500."""
    p0 = part_frames("cam-1", T0 - 1000)[1:] + part_frames("cam-1", T0) + part_frames("cam-1", T0 + 1000) \
        + part_frames("cam-1", T0 + 2000)
    # the first frames of the earlier part, published late: frames before the range of cam-1
    p1 = part_frames("cam-2", T0 + 500, defect=False) + part_frames("cam-2", T0 + 1500, width=16)
    return {0: p0, 1: p1}


def run(chdb, *, until=T0 + 1650, run_id="r1", consumer=None, inspector=None, **kw) -> Replayer:
    req = ReplayRequest(run_id=run_id, from_ms=T0 - 900, until_ms=until, model_path=None, progress=False,
                        checkpoint_every_s=0.0, **kw)
    return Replayer(settings(), req, chdb, consumer=consumer or FakeConsumer({TOPIC: recorded()}),
                    inspector=inspector or FakeInspector("fake-strong", crack_width=14))


def parts(chdb, run_id="r1"):
    return chdb.query(f"SELECT part_id, verdict, model_version, closed_reason FROM parts WHERE run_id = '{run_id}' "
                      "ORDER BY part_id")


def test_run_id_production_is_refused():
    with pytest.raises(ReplayError, match="reserved"):
        validate_run_id("production")
    with pytest.raises(ReplayError):
        validate_run_id("  ")


def test_plan_uses_time_offsets_and_detects_retention():
    plans = plan_partitions(from_ms=100, at_from={0: OffsetAt(3, 120), 1: None}, at_until={0: OffsetAt(7, 300), 1: None},
                            beginning={0: 0, 1: 0}, end={0: 10, 1: 4})
    assert plans == {0: PartitionPlan(3, 7, 10), 1: PartitionPlan(4, 4, 4)}
    # log start advanced to 5 and its first record is later than --from: range start deleted
    with pytest.raises(RangeRemovedError, match="retention"):
        plan_partitions(from_ms=100, at_from={0: OffsetAt(5, 150)}, at_until={0: None}, beginning={0: 5}, end={0: 9})
    # same, but the first retained record is before --from: nothing of the range is missing
    assert plan_partitions(from_ms=100, at_from={0: OffsetAt(6, 150)}, at_until={0: None}, beginning={0: 5},
                           end={0: 9}) == {0: PartitionPlan(6, 9, 9)}
    assert plan_partitions(from_ms=100, at_from={0: OffsetAt(5, 150)}, at_until={0: None}, beginning={0: 5},
                           end={0: 9}, allow_partial=True) == {0: PartitionPlan(5, 9, 9)}


def test_gate_keeps_whole_parts():
    g = RangeGate(stop={0: 10}, cameras=frozenset({"a"}))
    assert g.admit(0, 0, "b", "b1", 0, False) == SKIP_CAMERA
    assert g.admit(0, 1, "a", "a0", 2, False) == SKIP_PARTIAL  # a part that began before the range
    assert g.admit(0, 2, "a", "a1", 0, False) is None
    assert g.admit(0, 10, "a", "a1", 1, False) is None  # past stop, but finishes the open part
    assert not g.draining_done(0)
    assert g.admit(0, 11, "a", "a2", 0, False) == SKIP_AFTER
    assert g.admit(0, 12, "a", "a1", 2, True) is None
    assert g.draining_done(0)
    assert g.admit(0, 13, "a", "a1", 3, False) == SKIP_AFTER
    h = RangeGate(stop={0: 10})
    h.restore(g.to_dict())
    assert h.to_dict() == g.to_dict()


def test_replay_writes_one_verdict_per_whole_part_tagged(chdb):
    rec = run(chdb).run()
    assert rec.status == STATUS_DONE
    got = parts(chdb)
    # cam-1 T0 and T0+1000 (T0+2000 starts after --until), cam-2 both (T0+1500 is finished past stop)
    assert [p[0] for p in got] == [f"cam-1-{T0}", f"cam-1-{T0 + 1000}", f"cam-2-{T0 + 500}", f"cam-2-{T0 + 1500}"]
    assert {p[2] for p in got} == {"fake-strong"} and {p[3] for p in got} == {"LAST_FRAME"}
    assert dict((p[0], p[1]) for p in got)[f"cam-2-{T0 + 1500}"] == "FAIL"  # wide square: crack
    assert dict((p[0], p[1]) for p in got)[f"cam-2-{T0 + 500}"] == "PASS"
    assert rec.frames_skipped == {SKIP_PARTIAL: 2}  # reading stops at the stop offset once no part is open
    assert rec.parts == 4 and rec.defects == 3 and rec.frames_read == 12
    stored = load_run_record(chdb, "r1")
    assert stored.status == STATUS_DONE and stored.model_version == "fake-strong" and stored.parts == 4
    # a finished run is not replayed again
    again = run(chdb).run()
    assert again.status == STATUS_DONE
    assert chdb.query("SELECT count() FROM parts WHERE run_id = 'r1'") == [(4,)]
    assert chdb.query("SELECT count() FROM parts WHERE run_id = 'production'") == [(0,)]


def test_cameras_filter_and_open_part_closed_at_end(chdb):
    data = recorded()
    data[0] = data[0][:-1]  # the last part of cam-1 never gets its last frame
    rec = run(chdb, until=T0 + 2950, cameras=["cam-1"], consumer=FakeConsumer({TOPIC: data})).run()
    got = parts(chdb)
    assert [p[0] for p in got] == [f"cam-1-{T0}", f"cam-1-{T0 + 1000}", f"cam-1-{T0 + 2000}"]
    assert got[-1][3] == "TIMEOUT"
    assert rec.frames_skipped[SKIP_CAMERA] == 6


class FailingExecutor:
    """Delegates to chdb until the n-th INSERT into `parts`; from then on every INSERT fails (a crash)."""

    def __init__(self, ex, fail_on: int):
        self.ex, self.fail_on, self.inserts, self.down = ex, fail_on, 0, False

    def query(self, sql):
        return self.ex.query(sql)

    def insert(self, table, columns, rows):
        if table == "parts":
            self.inserts += 1
            self.down = self.down or self.inserts >= self.fail_on
        if self.down:
            raise ConnectionError("ClickHouse went away")
        return self.ex.insert(table, columns, rows)


def test_interrupted_replay_resumes_without_duplicates(chdb):
    failing = FailingExecutor(chdb, fail_on=2)
    rep = run(chdb, poll_records=3)
    rep.ex = failing
    rep.runlog.ex = failing
    with pytest.raises(ConnectionError):
        rep.run()
    stored = load_run_record(chdb, "r1")
    assert stored.status == STATUS_RUNNING and 0 < stored.parts < 4  # progress of the last good checkpoint
    done_before = chdb.query("SELECT count() FROM defects WHERE run_id = 'r1'")[0][0]
    assert done_before >= 1  # the defects of the failed flush were written, their parts were not
    rec = run(chdb, poll_records=3).run()
    assert rec.status == STATUS_DONE and rec.parts == 4
    assert chdb.query("SELECT count(), uniqExact(event_id) FROM parts WHERE run_id = 'r1'") == [(4, 4)]
    assert chdb.query("SELECT count(), uniqExact(event_id) FROM defects WHERE run_id = 'r1'") == [(3, 3)]


def test_resume_with_another_model_is_refused(chdb):
    run(chdb).run()
    with pytest.raises(ReplayError, match="other settings"):
        run(chdb, inspector=FakeInspector("fake-other", crack_width=14)).run()


def test_retention_error_names_the_partition(chdb):
    data = recorded()
    consumer = FakeConsumer({TOPIC: {0: data[0][4:], 1: data[1]}}, log_start={(TOPIC, 0): 4})
    with pytest.raises(RangeRemovedError, match="partition 0"):
        run(chdb, consumer=consumer).run()
    assert load_run_record(chdb, "r1") is None


def test_emitter_skips_stored_ids_on_resume(chdb):
    import asyncio

    from sinks.testing import make_defect, make_part

    s = settings()
    p = make_part(1, T0, fail=True, run_id="r9", plant=s.plant)
    d = make_defect(p, 0)
    em = ClickHouseEmitter(chdb, s, "r9")
    asyncio.run(em.send_all([OutRecord("defects", b"c", d), OutRecord("parts", b"c", p)]))
    assert em.flush() == 0  # not complete yet
    em.mark_complete()
    assert em.flush() == 2
    again = ClickHouseEmitter(chdb, s, "r9", skip_existing=True)
    asyncio.run(again.send_all([OutRecord("defects", b"c", d), OutRecord("parts", b"c", p)]))
    again.mark_complete()
    assert again.flush() == 0 and again.counts.skipped_existing == 2
