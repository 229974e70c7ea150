"""SPC charts against published reference values (Montgomery, Introduction to SQC) and hand computation."""
from __future__ import annotations

import math

import pytest

from streams.spc import rules as spc

# Montgomery, Example 7.1: frozen orange juice cans, 30 samples of n = 50, nonconforming cans.
OJ = [12, 15, 8, 10, 4, 7, 16, 9, 14, 10, 5, 6, 17, 12, 22, 8, 10, 5, 13, 11, 20, 18, 24, 15, 9, 12, 7, 13, 9, 6]
# Montgomery, Example 7.3: nonconformities on 26 samples of 100 printed circuit boards.
PCB = [21, 24, 16, 12, 15, 5, 28, 20, 31, 25, 20, 24, 16, 19, 10, 17, 13, 22, 18, 39, 30, 24, 16, 19, 17, 15]
# Montgomery, Example 7.5: nonconformities in 20 samples of 5 personal computers.
PC = [10, 12, 8, 14, 10, 16, 11, 7, 10, 15, 9, 5, 7, 11, 12, 6, 8, 10, 7, 5]


def test_p_chart_montgomery_7_1_trial_limits():
    ch = spc.p_chart(OJ, [50] * 30)
    assert ch.limits.center == pytest.approx(0.2313, abs=5e-5)
    assert ch.points[0].ucl == pytest.approx(0.4102, abs=5e-5)
    assert ch.points[0].lcl == pytest.approx(0.0524, abs=5e-5)
    # samples 15 and 23 (1-based) are above the UCL
    assert ch.beyond_limits() == (14, 22)
    assert ch.out_of_control == (14, 22)
    assert all(v.rule == "WE1" and v.side == 1 for v in ch.violations)


def test_phase_one_montgomery_7_1_revised_limits():
    # One revision (samples 15 and 23 dropped): p̄ = 0.2150, UCL 0.3893, LCL 0.0407 in the book.
    one = spc.phase_one("p", OJ, [50] * 30, max_iterations=2)
    assert one.excluded == (14, 22)
    assert one.limits.center == pytest.approx(0.2150, abs=5e-5)
    assert one.chart.points[0].ucl == pytest.approx(0.3893, abs=5e-5)
    assert one.chart.points[0].lcl == pytest.approx(0.0407, abs=5e-5)
    # Sample 21 (0.40) is beyond the revised UCL, as the book notes.
    assert 20 in one.chart.beyond_limits()


def test_phase_one_iterates_until_in_control():
    one = spc.phase_one("p", OJ, [50] * 30)
    assert one.excluded == (14, 20, 22)
    assert one.limits.center == pytest.approx((347 - 22 - 24 - 20) / (27 * 50))
    kept = [d for i, d in enumerate(OJ) if i not in one.excluded]
    assert not spc.p_chart(kept, [50] * len(kept), limits=one.limits).beyond_limits()


def test_phase_one_without_iteration_is_trial_limits():
    one = spc.phase_one("p", OJ, [50] * 30, iterate=False)
    assert one.excluded == () and one.limits.center == pytest.approx(347 / 1500)


def test_p_chart_limits_step_with_subgroup_size():
    d, n = [2, 10, 3], [100, 400, 25]
    ch = spc.p_chart(d, n)
    p = 15 / 525
    for pt, ni in zip(ch.points, n):
        s = math.sqrt(p * (1 - p) / ni)
        assert pt.center == pytest.approx(p)
        assert pt.ucl == pytest.approx(p + 3 * s)
        assert pt.lcl == pytest.approx(max(0.0, p - 3 * s))
        assert pt.sigma == pytest.approx(s)
    assert ch.points[2].ucl > ch.points[0].ucl > ch.points[1].ucl  # smaller subgroup, wider limits
    assert ch.points[2].lcl == 0.0  # clipped


def test_np_chart_matches_p_chart_times_n():
    ch = spc.np_chart(OJ, 50)
    assert ch.points[0].center == pytest.approx(50 * 347 / 1500)
    assert ch.points[0].ucl == pytest.approx(20.51, abs=5e-3)
    assert ch.beyond_limits() == (14, 22)
    with pytest.raises(ValueError):
        spc.chart("np", [1, 2], [10, 20])


def test_c_chart_montgomery_7_3():
    ch = spc.c_chart(PCB)
    assert ch.limits.center == pytest.approx(19.85, abs=5e-3)
    assert ch.points[0].ucl == pytest.approx(33.22, abs=1e-2)
    assert ch.points[0].lcl == pytest.approx(6.48, abs=1e-2)
    assert ch.beyond_limits() == (5, 19)  # samples 6 and 20


def test_c_chart_montgomery_7_3_revised():
    one = spc.phase_one("c", PCB)
    assert one.excluded == (5, 19)
    assert one.limits.center == pytest.approx(19.67, abs=5e-3)
    assert one.chart.points[0].ucl == pytest.approx(32.97, abs=1e-2)
    assert one.chart.points[0].lcl == pytest.approx(6.36, abs=1e-2)


def test_u_chart_montgomery_7_5():
    ch = spc.u_chart(PC, [5] * 20)
    assert ch.limits.center == pytest.approx(1.93)
    assert ch.points[0].ucl == pytest.approx(3.79, abs=5e-3)
    assert ch.points[0].lcl == pytest.approx(0.07, abs=5e-3)
    assert ch.beyond_limits() == ()


def test_u_chart_variable_units_step():
    ch = spc.u_chart([3, 10], [2, 8])
    u = 13 / 10
    assert ch.points[0].ucl == pytest.approx(u + 3 * math.sqrt(u / 2))
    assert ch.points[1].ucl == pytest.approx(u + 3 * math.sqrt(u / 8))


def test_laney_p_chart_hand_computed():
    d = [120, 80, 160, 70, 140, 95]
    n = [10_000, 9_500, 10_500, 9_000, 10_200, 9_800]
    p = sum(d) / sum(n)
    z = [(di / ni - p) / math.sqrt(p * (1 - p) / ni) for di, ni in zip(d, n)]
    sigma_z = sum(abs(b - a) for a, b in zip(z, z[1:])) / 5 / 1.128
    ch = spc.laney_p_chart(d, n)
    assert ch.limits.sigma_z == pytest.approx(sigma_z)
    assert sigma_z > 1  # overdispersed: the plain p chart would flag points that are common cause
    for pt, ni in zip(ch.points, n):
        assert pt.ucl == pytest.approx(p + 3 * math.sqrt(p * (1 - p) / ni) * sigma_z)
    plain = spc.p_chart(d, n)
    assert plain.beyond_limits() and not ch.beyond_limits()


def test_laney_sigma_z_near_one_for_binomial_data():
    import random

    rng = random.Random(7)
    n = [5000] * 200
    d = [sum(rng.random() < 0.02 for _ in range(5000)) for _ in n]
    assert spc.laney_sigma_z(d, n, sum(d) / sum(n)) == pytest.approx(1.0, abs=0.15)


def test_phase_two_uses_frozen_limits():
    base = spc.phase_one("p", [5, 4, 6, 5], [100] * 4)
    new = spc.phase_two(base.limits, [5, 20], [100, 100])
    assert new.points[0].center == pytest.approx(0.05)
    assert new.beyond_limits() == (1,)
    assert new.limits is base.limits


def test_phase_two_laney_keeps_sigma_z():
    base = spc.phase_one("laney_p", [120, 95, 150, 80, 130, 101], [10_000] * 6, iterate=False)
    new = spc.phase_two(base.limits, [100], [10_000])
    assert new.limits.sigma_z == base.limits.sigma_z
    p = base.limits.center
    assert new.points[0].ucl == pytest.approx(p + 3 * math.sqrt(p * (1 - p) / 10_000) * base.limits.sigma_z)


def test_zero_center_gives_infinite_z_for_any_defect():
    ch = spc.p_chart([0, 0, 1], [10, 10, 10], limits=spc.Limits("p", 0.0))
    assert ch.points[2].z == math.inf and ch.out_of_control == (2,)


@pytest.mark.parametrize("d,n", [([1], [0]), ([5], [4]), ([1, 2], [3])])
def test_p_chart_rejects_bad_input(d, n):
    with pytest.raises(ValueError):
        spc.p_chart(d, n)
