"""The chart is chosen from the data, alarms only on the worse side, small subgroups never judged,
and the G chart and Bernoulli CUSUM against hand-computed values (issue 20)."""
from __future__ import annotations

import csv
import io
import json
import math
import random

import pytest

from streams.spc import report
from streams.spc import rules as spc

H = 3_600_000


def demo_cam3_hours() -> list[report.Subgroup]:
    """The shape of `make demo`'s cam-3 hourly data: 23 quiet hours of 2–3 parts at ~10 % defective
    (one hour with 2 of 3 defective), then the spike hour: 25 parts, 22 defective."""
    sizes = [3, 2, 3, 3, 2, 3, 2, 3, 3, 2, 3, 2, 3, 3, 2, 3, 2, 3, 3, 2, 3, 2, 3]
    bad = {2: 1, 7: 2, 12: 1, 16: 1, 20: 1}
    groups = [report.Subgroup(i * H, f"2026-12-01 {i:02d}:00", n, bad.get(i, 0), bad.get(i, 0)) for i, n in enumerate(sizes)]
    return groups + [report.Subgroup(23 * H, "2026-12-01 23:00", 25, 22, 30)]


def test_demo_cam3_hourly_chart_has_the_spike_as_its_only_alarm(tmp_path):
    rep = report.build_report(demo_cam3_hours(), by="hour", scope="line-1, camera cam-3")
    assert [r.period for r in rep.alarms] == ["2026-12-01 23:00"]
    # no 0–100 % limits on a handful of parts: every judged subgroup reaches n ≥ 0.5/p̄
    assert rep.choice is not None and rep.choice.n_min and rep.choice.n_min > 3
    assert all(r.inspected >= rep.choice.n_min for r in rep.rows if r.status != "too_small")
    assert rep.choice.pooled and "0.5/p̄" in rep.subtitle
    # Phase I by default: the spike is left out of p̄
    assert rep.rows[-1].in_limits is False and rep.chart.limits.center == pytest.approx(6 / 60)
    report.plot_chart(rep, str(tmp_path / "cam3.png"))


def test_default_rules_are_test_1_for_attribute_charts_and_runs_below_are_not_alarms():
    # 12 hours at the centre, then 9 hours well below it (zero defects) and nothing above
    groups = [report.Subgroup(i * H, f"h{i}", 400, 20, 20) for i in range(12)]
    groups += [report.Subgroup((12 + i) * H, f"h{12 + i}", 400, 10 if i % 2 else 11, 10) for i in range(9)]
    rep = report.build_report(groups, by="hour", scope="x", kind="p")
    assert rep.rules == ("WE1",) and not rep.alarms
    rep4 = report.build_report(groups, by="hour", scope="x", limits=spc.Limits("p", 0.05), rules=["WE"])
    below = [r for r in rep4.rows if r.violations]
    assert below and all(r.status == "improvement" and r.side == "below" for r in below) and not rep4.alarms


def test_point_below_lcl_is_a_possible_improvement():
    groups = [report.Subgroup(i * H, f"h{i}", 1000, 50 + (i % 3), 50) for i in range(20)]
    groups[10] = groups[10]._replace(defective=5)
    rep = report.build_report(groups, by="hour", scope="x", kind="p")
    r = rep.rows[10]
    assert r.violations == ("WE1",) and r.side == "below" and r.status == "improvement" and not rep.alarms
    assert "improvement" in report.render_table(rep)


def test_every_csv_and_json_point_says_its_side_status_and_rule():
    rep = report.build_report(demo_cam3_hours(), by="hour", scope="x")
    rows = list(csv.DictReader(io.StringIO(report.render_csv(rep))))
    assert {"side", "status", "violations", "in_limits"} <= set(rows[0])
    assert rows[-1]["side"] == "above" and rows[-1]["status"] == "alarm" and rows[-1]["violations"] == "WE1"
    assert {r["side"] for r in rows} <= {"above", "below", "on", ""}
    doc = json.loads(report.render_json(rep))
    assert doc["rows"][-1]["rule_text"] == ["1 point beyond 3σ"] and doc["choice"]["kind"] in ("p", "np")
    assert all("side" in r and "status" in r for r in doc["rows"])


def test_named_kind_marks_too_small_subgroups_instead_of_charting_them():
    groups = [report.Subgroup(i * H, f"h{i}", n, d, d) for i, (n, d) in enumerate([(200, 12), (3, 1), (180, 10), (2, 0)] * 4)]
    rep = report.build_report(groups, by="hour", scope="x", kind="p")
    small = [r for r in rep.rows if r.inspected < 9]
    assert small and all(r.status == "too_small" and r.ucl is None and not r.violations for r in small)
    assert "not judged" in report.render_table(rep)


def test_phase_one_leaves_out_of_control_periods_out_by_default():
    groups = [report.Subgroup(i * H, f"h{i}", 500, d, d) for i, d in enumerate([10, 12, 9, 11, 60, 10, 8, 12, 11, 9])]
    rep = report.build_report(groups, by="hour", scope="x", kind="p")
    assert rep.chart.limits.center == pytest.approx(92 / 4500) and [r.in_limits for r in rep.rows].count(False) == 1


def test_overdispersed_large_subgroups_choose_laney():
    rnd = random.Random(3)
    groups = []
    for i in range(30):  # the true rate itself wanders shift to shift: binomial limits would flag most
        p = 0.05 * math.exp(rnd.gauss(0, 0.25))
        n = 20_000 + rnd.randrange(5000)
        groups.append(report.Subgroup(i * H, f"s{i}", n, round(n * p), round(n * p)))
    rep = report.build_report(groups, by="shift", scope="x")
    assert rep.chart_kind == "laney_p" and "Laney" in rep.subtitle and len(rep.alarms) <= 1


def test_rare_defects_choose_the_g_chart_and_cusum_per_part():
    rnd = random.Random(5)
    parts = [(i * 60_000, int(rnd.random() < 0.002)) for i in range(20_000)]
    groups = []
    for h in range(0, len(parts), 60):  # 60 parts an hour: n ≥ 0.5/0.002 = 250 takes 4 hours
        chunk = parts[h:h + 60]
        d = sum(x for _, x in chunk)
        groups.append(report.Subgroup(chunk[0][0], f"hour {h // 60}", len(chunk), d, d))
    rep = report.build_report(groups, by="hour", scope="x", parts=parts)
    assert rep.chart_kind == "g" and rep.choice.per_part and rep.cusum is not None
    assert rep.rules == ("WE1", "N2") and "G chart" in rep.subtitle
    assert len(rep.cusum.signals) <= 2  # ARL0 = 370 hours of parts: ~1 false signal in 333 hours


# -- hand-computed references ---------------------------------------------------------------------
def test_g_chart_probability_limits_hand_computed():
    # Kaminsky et al. (1992): gaps geometric with p̂ = 1/(ḡ + 1); here ḡ = 99 → p̂ = 0.01.
    # Probability limits (Benneyan 2001) at 0.135 %: UCL = ln(0.00135)/ln(0.99) − 1 = 656.5,
    # median = ln(0.5)/ln(0.99) − 1 = 67.97, LCL = ln(0.99865)/ln(0.99) − 1 < 0 → 0.
    gaps = [99] * 10
    ch = spc.g_chart(gaps)
    pt = ch.points[0]
    assert pt.ucl == pytest.approx(656.5, abs=0.3) and pt.center == pytest.approx(67.97, abs=0.01) and pt.lcl == 0
    short = spc.g_chart([0] * 9, limits=ch.limits)  # nine gaps of 0: far more defects, below the median
    assert [v.rule for v in short.violations] == ["N2"] and short.alarms == (8,)
    long = spc.g_chart([800], limits=ch.limits)
    assert long.violations[0].side == 1 and long.status(0) == "improvement"


def test_gaps_between_defective_parts():
    assert spc.gaps_between([0, 0, 1, 1, 0, 0, 0, 1, 0]) == [2, 0, 3]


def test_bernoulli_cusum_reference_value_and_statistic_hand_computed():
    # Reynolds & Stoumbos (1999): γ = ln((1−p0)/(1−p1)) / ln(p1(1−p0)/(p0(1−p1))).
    # p0 = 0.01, p1 = 0.02: ln(0.99/0.98) = 0.0101523, ln(0.0198/0.0098) = 0.703300 → γ = 0.014435.
    assert spc.cusum_gamma(0.01, 0.02) == pytest.approx(0.014435, abs=1e-6)
    c = spc.bernoulli_cusum([1, 0, 0, 1], 0.01)
    assert c.m == 69 and c.gamma == pytest.approx(1 / 69)
    g = 1 / 69
    assert c.stats == pytest.approx((1 - g, 1 - 2 * g, 1 - 3 * g, 2 - 4 * g))
    assert c.arl0 >= 10_000 and not c.signals


def test_cusum_arl_exact_on_a_two_state_chain():
    # m = 2, H = 2: from 0 a defective part goes to 1, from 1 to a signal; a good part back to 0.
    # L0 = 1 + p·L1 + q·L0, L1 = 1 + q·L0  →  L0 = (1 + p)/p²; p = 0.1 → 110.
    assert spc.cusum_arl(0.1, 2, 2) == pytest.approx(110.0)


def test_cusum_signals_a_doubled_rate_and_restarts():
    rnd = random.Random(1)
    seq = [int(rnd.random() < 0.01) for _ in range(1000)] + [int(rnd.random() < 0.05) for _ in range(3000)]
    c = spc.bernoulli_cusum(seq, 0.01)
    assert c.signals and c.signals[0] >= 1000 and all(b < c.h for i, b in enumerate(c.stats) if i not in c.signals)
