"""The report: rows with limits and violations, table/CSV/JSON output, the PNG chart, time arguments."""
from __future__ import annotations

import csv
import io
import json

import pytest

from streams.commands.report import parse_time
from streams.settings import PlantSettings
from streams.spc import report
from streams.spc import rules as spc

PLANT = PlantSettings()
GROUPS = [report.Subgroup(i * 3_600_000, f"2025-11-21 {i:02d}:00", 500, d, d + 3)
          for i, d in enumerate([10, 12, 9, 11, 40, 10, 8, 12])]


def test_phase_one_rows_with_stepped_limits_and_violation():
    rep = report.build_report(GROUPS, by="hour", scope="line L1", kind="p")
    assert len(rep.rows) == 8 and rep.chart is not None
    bad = [r for r in rep.rows if r.violations]
    assert [r.period for r in bad] == ["2025-11-21 04:00"] and "WE1" in bad[0].violations
    r0 = rep.rows[0]
    assert r0.rate == 10 / 500 and r0.defects_per_part == 13 / 500 and r0.lcl < r0.cl < r0.ucl
    assert rep.title.startswith("p chart") and "line L1" in rep.title


def test_phase_two_against_frozen_limits_and_u_chart():
    rep = report.build_report(GROUPS, by="hour", scope="x", limits=spc.Limits("p", 0.02), phase_note=" from baseline")
    assert rep.phase.startswith("II") and rep.rows[0].cl == 0.02
    u = report.build_report(GROUPS, by="hour", scope="x", kind="u", iterate=False)
    assert u.rows[0].cl == pytest.approx(sum(g.defects for g in GROUPS) / 4000)


def test_auto_chart_for_constant_subgroups_is_np():
    rep = report.build_report(GROUPS, by="hour", scope="line L1")
    assert rep.chart_kind == "np" and "constant n = 500" in rep.subtitle and rep.title.startswith("np chart")


def test_renderers():
    rep = report.build_report(GROUPS, by="hour", scope="line L1", kind="p")
    table = report.render_table(rep)
    assert "inspected" in table and "!! WE1" in table and "1 of 8 hours out of control (worse)" in table
    rows = list(csv.DictReader(io.StringIO(report.render_csv(rep))))
    assert len(rows) == 8 and rows[4]["violations"] == "WE1" and float(rows[0]["rate"]) == 0.02
    doc = json.loads(report.render_json(rep))
    assert doc["limits"]["kind"] == "p" and doc["rows"][4]["violations"] == ["WE1"]


def test_empty_report():
    rep = report.build_report([], by="shift", scope="all lines")
    assert rep.rows == () and "no inspected parts" in report.render_table(rep)


@pytest.mark.parametrize("kind", ["p", "u", "laney_p"])
def test_chart_png(tmp_path, kind):
    path = tmp_path / "chart.png"
    report.plot_chart(report.build_report(GROUPS, by="hour", scope="line L1", kind=kind), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_parse_time_forms():
    now = 1_763_700_000_000
    assert parse_time("now", PLANT, now) == now
    assert parse_time("7d", PLANT, now) == now - 7 * 86_400_000
    assert parse_time("-12h", PLANT, now) == now - 12 * 3_600_000
    # naive ISO is plant-local (Berlin, UTC+1 in November)
    assert parse_time("2025-11-21T06:00", PLANT, now) == 1_763_701_200_000
    assert parse_time("2025-11-21T05:00+00:00", PLANT, now) == 1_763_701_200_000
    with pytest.raises(Exception, match="cannot read time"):
        parse_time("yesterday-ish", PLANT, now)


def test_sql_escapes_filters():
    sql = report.subgroups_sql("shift", report.ReportFilters(0, 1, run_id="r'1", line="L\\1", defect_class="c'"))
    assert "run_id = 'r\\'1'" in sql and "line_id = 'L\\\\1'" in sql and "k = 'c\\''" in sql
