"""Western Electric and Nelson run rules on z-score sequences built to trip exactly one rule."""
from __future__ import annotations

import pytest

from streams.spc import rules as spc


def fired(z, rule):
    return [(v.index, v.side) for v in spc.evaluate_rules(z, [rule])]


def test_rule_1_beyond_three_sigma_both_sides():
    z = [0, 3.1, 0, -3.5, 3.0]
    assert fired(z, "WE1") == [(1, 1), (3, -1)]
    assert fired(z, "N1") == fired(z, "WE1")


def test_rule_2_two_of_three_beyond_two_sigma_same_side():
    assert fired([2.1, 0.5, 2.2], "WE2") == [(2, 1)]
    assert fired([2.1, -2.2, 0.0], "WE2") == []  # opposite sides
    assert fired([-2.5, -2.1, 0], "N5") == [(1, -1)]
    assert fired([2.1, 0.5, 0.4, 2.2], "WE2") == []  # 4 apart


def test_rule_3_four_of_five_beyond_one_sigma():
    assert fired([1.2, 1.5, 0.2, 1.1, 1.3], "WE3") == [(4, 1)]
    assert fired([1.2, 1.5, 0.2, 0.1, 1.3], "WE3") == []
    assert fired([-1.2, -1.5, -1.1, -1.3, 0], "N6") == [(3, -1)]


def test_rule_4_eight_in_a_row_one_side():
    z = [0.1] * 8
    assert fired(z, "WE4") == [(7, 1)]
    assert fired([0.1] * 7 + [-0.1], "WE4") == []
    assert fired([-0.2] * 9, "WE4") == [(7, -1), (8, -1)]


def test_nelson_2_nine_in_a_row():
    assert fired([0.3] * 8, "N2") == []
    assert fired([0.3] * 9, "N2") == [(8, 1)]


def test_nelson_3_six_trending():
    assert fired([0, 0.1, 0.2, 0.3, 0.4, 0.5], "N3") == [(5, 1)]
    assert fired([0, 0.1, 0.2, 0.3, 0.4, 0.4], "N3") == []  # a tie breaks the trend
    assert fired([1, 0.5, 0, -0.5, -1, -1.5], "N3") == [(5, -1)]


def test_nelson_4_fourteen_alternating():
    z = [(-1) ** i * 0.5 for i in range(14)]
    assert fired(z, "N4") == [(13, 0)]
    assert fired(z[:13], "N4") == []


def test_nelson_7_fifteen_within_one_sigma():
    assert fired([0.5, -0.5] * 7 + [0.1], "N7") == [(14, 0)]
    assert fired([0.5, -0.5] * 7 + [1.1], "N7") == []


def test_nelson_8_eight_beyond_one_sigma_either_side():
    assert fired([1.5, -1.5] * 4, "N8") == [(7, 0)]
    assert fired([1.5, -1.5] * 3 + [0.5, 1.5], "N8") == []


def test_shorthands_and_unknown_rule():
    assert [v.rule for v in spc.evaluate_rules([4.0], ["WE"])] == ["WE1"]
    assert {v.rule for v in spc.nelson([4.0])} == {"N1"}
    with pytest.raises(ValueError, match="unknown rule"):
        spc.evaluate_rules([0.0], ["X9"])


def test_rules_on_a_p_chart_with_stepped_limits():
    # A sustained shift: 8 subgroups just above p̄ — no point beyond 3σ but WE4 fires.
    d = [10] * 10 + [13] * 8
    n = [1000] * 18
    base = spc.phase_one("p", d[:10], n[:10])
    ch = spc.phase_two(base.limits, d, n, rules=spc.WE_RULES)
    assert ch.beyond_limits() == ()
    assert any(v.rule == "WE4" and v.index == 17 for v in ch.violations)
    assert ch.violations_at(17)[0].text
