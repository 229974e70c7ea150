"""The replay gate (streams.review.promotion_gate.check_replay) on the real ClickHouse 18.16 server:
reviewed labels, production verdicts and two replay runs, one better and one worse."""
from __future__ import annotations

import pytest

from sinks.migrations import migrate
from sinks.sql import DriverExecutor
from sinks.testing import make_part, seed
from streams.replay.runlog import RunLog, RunRecord
from streams.review import queries as q
from streams.review.promotion_gate import Margins, check_replay
from streams.settings import ClickHouseSettings, PlantSettings

T0 = 1_763_700_000_000
PLANT = PlantSettings(timezone="UTC")


@pytest.fixture
def ex(stack, fresh_database):
    e = DriverExecutor.connect(ClickHouseSettings(host=stack.host, port=stack.clickhouse_port, database=fresh_database))
    migrate(e)
    yield e
    e.close()


def seed_runs(ex, n: int = 60) -> None:
    """n reviewed parts, every third defective; production catches 3 of 4 defective parts and fails 1 good part in
    20; 'better' catches all with no false alarm, 'worse' catches 1 in 2 and fails 1 good part in 4."""
    events, clock = [], iter(range(T0, T0 + 10_000_000, 1000))
    for i in range(n):
        ts = T0 + i * 60_000
        defective = i % 3 == 0
        k = i // 3
        prod_fail = (defective and k % 4 != 0) or (not defective and i % 20 == 1)
        better_fail = defective
        worse_fail = (defective and k % 2 == 0) or (not defective and i % 4 == 1)
        for run, fail in (("production", prod_fail), ("better", better_fail), ("worse", worse_fail)):
            events.append(make_part(i, ts, camera="cam-1", fail=fail, run_id=run, model_version=f"m-{run}"))
        part_id = events[-1].part_id
        frame = q.FrameInfo(f"f{i}", "cam-1", "line-1", part_id, 1, ts, "PNG", 64, 32, 1, "m-production", "production", ())
        action = "confirm" if defective else "reject"
        q.insert_label(ex, q.new_label(frame, f"c{i}", action, "crack", q.Box(1, 1, 9, 9), "alice", next(clock)))
        ex.insert("review_frames", ("frame_id", "camera_id", "part_id", "capture_ts", "version"),
                  [(f"f{i}", "cam-1", part_id, ts, 1)])
    seed(ex, events, PLANT)
    log = RunLog(ex)
    for run in ("better", "worse"):
        log.write(RunRecord(run, f"m-{run}", None, {}, T0, T0 + n * 60_000, "frames", ["cam-1"], T0))


def test_the_better_replay_is_allowed_and_the_worse_refused(ex):
    seed_runs(ex)
    m = Margins(recall_margin=0.1, false_alarm_margin=5.0)
    good = check_replay(ex, "better", "m-better", PLANT, m)
    assert good.allowed, good.reasons
    assert good.production.defective_parts == 20 and good.production.caught == 15 and good.production.parts == 60
    assert good.candidate.caught == 20 and good.candidate.false_alarms == 0
    assert "60 of 60 reviewed parts" in good.reasons[0]
    bad = check_replay(ex, "worse", "m-worse", PLANT, m)
    assert not bad.allowed
    assert bad.candidate.caught == 10 and bad.candidate.false_alarms == 10
    assert sum("NOT proven no worse" in r for r in bad.reasons) == 2
    # the replay must be of the model being promoted
    other = check_replay(ex, "better", "m-something-else", PLANT, m)
    assert not other.allowed and other.reasons[0].startswith("replay better ran model m-better, not m-something-else")
    with pytest.raises(LookupError, match="no replay run 'nope'"):
        check_replay(ex, "nope", "m", PLANT, m)


def test_models_promote_prints_why_it_refuses(ex, stack, fresh_database, monkeypatch, capsys):
    from pathlib import Path

    from streams.cli import main

    seed_runs(ex)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PORT", str(stack.clickhouse_port))
    packaged = str(Path(__file__).resolve().parents[2] / "models" / "checkpoints")
    rc = main(["models", "promote", packaged, "--require-replay", "better", "--no-record", "--database", fresh_database])
    err = capsys.readouterr().err
    assert rc == 1 and "models promote: refused" in err
    assert "gate: replay better ran model m-better, not " in err and "gate: recall: candidate 20/20" in err
