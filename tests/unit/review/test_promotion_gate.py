"""The replay gate of `models promote --require-replay` (streams.review.promotion_gate): Wilson bounds and
the decision, both ways, and the counts from reviewed labels."""
from __future__ import annotations

import math

import pytest

from streams.review.promotion_gate import Margins, SideCounts, count_side, decide, part_truth, wilson
from streams.review.queries import Box, Label


def test_wilson_bounds_match_the_closed_form():
    lo, hi = wilson(0, 20, 0.95)
    z = 1.6448536269514722
    assert lo == 0.0 and hi == pytest.approx(z * z / (20 + z * z))  # k = 0: upper = z²/(n+z²)
    lo, hi = wilson(20, 20, 0.95)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(20 / (20 + z * z))
    lo, hi = wilson(45, 50, 0.95)
    assert lo == pytest.approx(0.8085, abs=1e-4) and hi == pytest.approx(0.9505, abs=1e-4)  # by hand: z = 1.645
    assert wilson(0, 0) == (0.0, 1.0)


PROD = SideCounts(defective_parts=60, caught=51, parts=200, false_alarms=4)  # recall 0.85, 2 false alarms / 100


def test_a_candidate_proven_no_worse_is_allowed():
    cand = SideCounts(defective_parts=60, caught=57, parts=200, false_alarms=2)  # recall 0.95, 1 / 100
    d = decide(PROD, cand, Margins())
    assert d.allowed, d.reasons
    assert d.recall_lower >= PROD.recall - 0.05 and d.false_alarms_upper_per_100 <= 2.0 + 2.0
    assert [r.endswith("no worse") and "NOT" not in r for r in d.reasons] == [True, True]
    assert d.to_dict()["candidate"]["recall"] == 0.95


def test_a_worse_candidate_is_refused_and_told_why():
    worse_recall = SideCounts(defective_parts=60, caught=42, parts=200, false_alarms=2)  # recall 0.70
    d = decide(PROD, worse_recall)
    assert not d.allowed
    assert any(r.startswith("recall:") and "NOT proven no worse" in r for r in d.reasons)
    assert any(r.startswith("false alarms:") and r.endswith(": no worse") for r in d.reasons)
    noisy = SideCounts(defective_parts=60, caught=57, parts=200, false_alarms=16)  # 8 / 100
    d = decide(PROD, noisy)
    assert not d.allowed and any(r.startswith("false alarms:") and "NOT" in r for r in d.reasons)


def test_too_few_reviewed_parts_prove_nothing():
    tiny = SideCounts(defective_parts=3, caught=3, parts=8, false_alarms=0)
    d = decide(SideCounts(3, 3, 8, 0), tiny)
    assert not d.allowed and "too few reviewed parts" in d.reasons[0]
    # the same perfect candidate on enough parts passes; a margin of 0 with a perfect production is still met
    assert decide(SideCounts(40, 40, 150, 0), SideCounts(40, 40, 150, 0), Margins(recall_margin=0.1)).allowed
    assert not decide(SideCounts(40, 40, 150, 0), SideCounts(40, 40, 150, 0), Margins(recall_margin=0.0)).allowed


def lab(frame: str, part: str, action: str, cls: str = "crack", at: int = 1) -> Label:
    return Label(f"{frame}{action}{at}", frame, f"c-{frame}", "cam", "l", part, action, cls, Box(1, 1, 4, 4), "m", "r", at)


def test_parts_truth_and_counts_from_labels():
    truth = part_truth([lab("f1", "p1", "confirm"), lab("f2", "p1", "reject"),  # one defective frame: defective part
                        lab("f3", "p2", "reject"), lab("f4", "p3", "missed"), lab("f5", "p4", "confirm", cls="")])
    assert truth == {("cam", "p1"): True, ("cam", "p2"): False, ("cam", "p3"): True, ("cam", "p4"): False}
    verdicts = {("cam", "p1"): "FAIL", ("cam", "p2"): "FAIL", ("cam", "p3"): "PASS", ("cam", "p4"): "PASS"}
    s = count_side(truth, verdicts, sorted(truth))
    assert s == SideCounts(defective_parts=2, caught=1, parts=4, false_alarms=1)
    assert s.recall == 0.5 and s.false_alarms_per_100 == 25.0
    assert math.isnan(SideCounts(0, 0, 0, 0).recall)
