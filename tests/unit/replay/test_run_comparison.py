"""Pure comparison logic (streams.replay.comparison) and the compare queries (streams.replay.queries) on chdb."""
from __future__ import annotations

import json

from sinks.clickhouse import DEFECT_COLUMNS, PART_COLUMNS, defect_row, part_row
from sinks.testing import make_defect, make_part
from streams.commands import compare
from streams.replay import queries
from streams.replay.comparison import DefectRow, PartRow, compare_runs, match_defects, match_score, score_sides
from streams.settings import PlantSettings
from streams.sim.simulator import GroundTruthPart

from .conftest import T0

PLANT = PlantSettings(timezone="UTC")


def d(part: str, track: int, cls: str, box, best: int, t0: int = 0, t1: int = 400, cam: str = "c1") -> DefectRow:
    return DefectRow(f"{part}-{track}-{cls}", cam, part, track, cls, tuple(box), best, t0, t1)


def p(part: str, verdict: str, shift: str = "s1", cam: str = "c1", ts: int = 0) -> PartRow:
    return PartRow(cam, part, verdict, shift, ts, 0, "m")


def test_same_frame_iou_and_moved_part_cross_axis():
    a = d("p", 0, "crack", (10, 20, 30, 40), best=1)
    assert match_score(a, d("p", 0, "crack", (12, 20, 32, 40), 1)) > 1.0  # same frame, same class
    assert 0 < match_score(a, d("p", 0, "scratch", (12, 20, 32, 40), 1)) < 1.0  # class differs: weaker
    assert match_score(a, d("p", 0, "crack", (60, 20, 80, 40), 1)) == 0.0  # same frame, elsewhere
    # another best frame: the part moved along x; same rows (y) and overlapping track times match
    moved = d("p", 0, "crack", (60, 21, 80, 41), best=2)
    assert match_score(a, moved) > 1.0
    assert match_score(a, moved._replace(bbox=(60, 50, 80, 70))) == 0.0
    assert match_score(a, moved._replace(first_frame_ts=500, last_frame_ts=600)) == 0.0
    assert match_score(a, d("p", 0, "crack", (10, 60, 30, 80), 2), travel_axis="-y") > 1.0  # moved along y
    assert match_score(a, moved, travel_axis="-y") == 0.0  # moved across the travel axis


def test_matching_prefers_same_class_and_is_one_to_one():
    base = [d("p", 0, "crack", (10, 20, 30, 40), 1), d("p", 1, "scratch", (100, 20, 120, 40), 1)]
    cand = [d("p", 0, "scratch", (10, 20, 30, 40), 1), d("p", 1, "crack", (11, 20, 31, 40), 1),
            d("p", 2, "dent", (200, 5, 210, 15), 1)]
    matches, only_b, only_c = match_defects(base, cand)
    assert [(m.baseline.track_id, m.candidate.track_id) for m in matches] == [(0, 1)]
    assert [r.track_id for r in only_b] == [1] and sorted(r.track_id for r in only_c) == [0, 2]


def test_compare_runs_confusion_only_one_side_class_change_and_groups():
    bp = [p("a", "PASS", "s1"), p("b", "FAIL", "s1"), p("c", "PASS", "s2"), p("z", "PASS", "s2")]
    cp = [p("a", "FAIL", "s1"), p("b", "FAIL", "s1"), p("c", "PASS", "s2"), p("y", "PASS", "s2")]
    bd = [d("b", 0, "imprint_mild", (10, 10, 20, 20), 1)]
    cd = [d("a", 0, "crack", (50, 10, 60, 20), 1), d("b", 0, "imprint_severe", (10, 10, 20, 20), 1)]
    c = compare_runs("production", "r1", baseline_parts=bp, candidate_parts=cp, baseline_defects=bd,
                     candidate_defects=cd, by="shift")
    assert len(c.parts) == 3 and c.only_in_baseline_parts == 1 and c.only_in_candidate_parts == 1
    assert c.confusion == {"PASS": {"PASS": 1, "FAIL": 1}, "FAIL": {"PASS": 0, "FAIL": 1}}
    assert round(c.agreement, 3) == 0.667
    assert (c.defects_matched, c.defects_only_baseline, c.defects_only_candidate) == (1, 0, 1)
    assert dict(c.class_changes) == {("imprint_mild", "imprint_severe"): 1}
    s1, s2 = c.groups
    assert (s1.group, s1.parts, s1.baseline_defective, s1.candidate_defective) == ("s1", 2, 1, 2)
    assert s1.rate_diff == 0.5 and s2.rate_diff == 0.0 and s1.only_candidate == 1 and s1.class_changes == 1
    by_class = {g.group: g for g in compare_runs("production", "r1", baseline_parts=bp, candidate_parts=cp,
                                                 baseline_defects=bd, candidate_defects=cd, by="class").groups}
    assert by_class["crack"].candidate_defective == 1 and by_class["crack"].baseline_defective == 0
    assert by_class["imprint_mild"].baseline_defects == 1 and by_class["imprint_severe"].candidate_defects == 1
    doc = json.loads(json.dumps(c.to_dict()))
    assert doc["verdict_changes"] == [{"camera_id": "c1", "part_id": "a", "baseline": "PASS", "candidate": "FAIL"}]


def test_ground_truth_precision_recall_per_side():
    gt = [GroundTruthPart("c1", "l", "a", 1, "f", 2, [10, 20], [10, 20], 5.0,
                          [{"defect_id": 0, "defect_class": "crack", "boxes": {"0": [50, 10, 60, 20]}}], {}),
          GroundTruthPart("c1", "l", "c", 1, "f", 2, [30, 40], [30, 40], 5.0, [], {})]
    c = compare_runs("b", "k", baseline_parts=[p("a", "PASS"), p("c", "PASS")],
                     candidate_parts=[p("a", "FAIL"), p("c", "FAIL")], baseline_defects=[],
                     candidate_defects=[d("a", 0, "crack", (50, 10, 60, 20), 10), d("c", 0, "crack", (1, 1, 9, 9), 30)])
    scores = score_sides(c, gt, {"b": [], "k": [d("a", 0, "crack", (50, 10, 60, 20), 10),
                                               d("c", 0, "crack", (1, 1, 9, 9), 30)]})
    assert scores["b"].defect_recall == 0.0 and scores["b"].part_recall == 0.0
    assert scores["k"].defect_recall == 1.0 and scores["k"].defect_precision == 0.5
    assert scores["k"].part_precision == 0.5 and scores["k"].part_recall == 1.0 and scores["k"].gt_defects == 1


def test_compare_queries_deduplicate_on_current_clickhouse(chdb, tmp_path):
    rows_p, rows_d = [], []
    for run, mv, fail in (("production", "m1", False), ("r1", "m2", True)):
        for i in range(3):
            part = make_part(i, T0 + 60_000 * i, fail=fail and i == 0, run_id=run, model_version=mv, plant=PLANT)
            part = part.__class__(**{**part.__dict__, "part_id": f"cam-1-{i}"})
            rows_p += [part_row(part, PLANT, 1)] * 2  # every row delivered twice
            if fail and i == 0:
                rows_d += [defect_row(make_defect(part, 0), PLANT, 1)] * 2
    extra = make_part(9, T0, run_id="production", model_version="m1", plant=PLANT)  # not replayed
    chdb.insert("parts", PART_COLUMNS, rows_p + [part_row(extra, PLANT, 1)])
    chdb.insert("defects", DEFECT_COLUMNS, rows_d)
    c = queries.run_compare(chdb, "production", "r1", PLANT, by="camera")
    assert len(c.parts) == 3 and c.only_in_baseline_parts == 0
    assert c.confusion["PASS"] == {"PASS": 2, "FAIL": 1} and c.defects_only_candidate == 1
    assert [g.group for g in c.groups] == ["cam-1"]
    assert len(queries.fetch_parts(chdb, "production", PLANT, cameras=["cam-1"], since_ms=T0, until_ms=T0 + 60_001)) == 3  # parts 0, 1 and the extra
    text = compare.render_table(c)
    assert "baseline PASS" in text and "per shift" in text
    compare.plot_comparison(c, str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_compare_reads_one_verdict_and_the_defect_set_of_the_winning_close(chdb):
    """A part the candidate run closed twice (re-processed after a crash: other track ids) counts once,
    with the defects of its latest close only; a part written before emission ids keeps its defects."""
    from dataclasses import replace

    from schemas.events import emission_id_of

    def close(part, defects):
        eid = emission_id_of(part, defects)
        return replace(part, emission_id=eid), [replace(x, emission_id=eid) for x in defects]

    base = replace(make_part(1, T0, run_id="production", model_version="m1", plant=PLANT), part_id="cam-1-1")
    a = replace(make_part(1, T0, fail=True, run_id="r1", model_version="m2", plant=PLANT), part_id="cam-1-1")
    first = close(a, [make_defect(a, 0, "crack"), make_defect(a, 1, "scratch")])
    second = close(a, [make_defect(a, 0, "crack"), make_defect(a, 2, "pit")])
    legacy = replace(make_part(2, T0, fail=True, run_id="r1", model_version="m2", plant=PLANT), part_id="cam-1-2")
    assert first[0].event_id == second[0].event_id and first[0].emission_id != second[0].emission_id
    for (part, defects), version in ((first, 1), (second, 2), ((legacy, [make_defect(legacy, 0, "dent")]), 1)):
        chdb.insert("parts", PART_COLUMNS, [part_row(part, PLANT, version)])
        chdb.insert("defects", DEFECT_COLUMNS, [defect_row(x, PLANT, version) for x in defects])
    chdb.insert("parts", PART_COLUMNS, [part_row(base, PLANT, 1)])
    parts = queries.fetch_parts(chdb, "r1", PLANT)
    assert sorted(p.part_id for p in parts) == ["cam-1-1", "cam-1-2"]
    got = sorted((x.part_id, x.track_id, x.defect_class) for x in queries.fetch_defects(chdb, "r1"))
    assert got == [("cam-1-1", 0, "crack"), ("cam-1-1", 2, "pit"), ("cam-1-2", 0, "dent")]
    c = queries.run_compare(chdb, "production", "r1", PLANT, by="camera")
    assert len(c.parts) == 1 and c.defects_only_candidate == 2  # the part both runs saw: its latest close's two
