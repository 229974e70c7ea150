"""The monitor's pure decision: spike once, stay quiet while alerting, recover once, cool down."""
from __future__ import annotations

from streams.spc import rules as spc
from streams.spc.monitor import Scope, ScopeState, WindowCounts, baseline_limits, judge, line_totals

LIM = spc.Limits("p", 0.02)
CAM = Scope("line-1", "cam-3")
MIN = 60_000


def step(state, defective, inspected=200, t=0, **kw):
    return judge(WindowCounts(CAM, inspected, defective, "m1"), LIM, state, window_start=t - 5 * MIN, window_end=t,
                 now_ms=t, **kw)


def test_in_control_window_raises_nothing():
    d = step(ScopeState(), 4)
    assert d.alert is None and not d.state.alerting and d.point.ucl > d.point.value


def test_spike_alerts_once_then_recovers_once():
    d1 = step(ScopeState(), 30, t=0)
    a = d1.alert
    assert a is not None and a.kind == "SPIKE" and a.rule == "WE1" and a.camera_id == "cam-3"
    assert a.rate == 0.15 and a.center == 0.02 and a.limit == d1.point.ucl and (a.inspected, a.defective) == (200, 30)
    assert "cam-3" in a.message and "WE1" in a.message
    d2 = step(d1.state, 40, t=5 * MIN)
    d3 = step(d2.state, 35, t=10 * MIN)
    assert d2.alert is None and d3.alert is None and d3.state.alerting  # sustained: still one alert
    d4 = step(d3.state, 3, t=15 * MIN)
    assert d4.alert is not None and d4.alert.kind == "RECOVERY" and d4.alert.rule == "WE1"
    assert not d4.state.alerting
    assert d4.alert.alert_id != a.alert_id


def test_a_new_spike_within_the_cooldown_is_not_announced():
    d1 = step(ScopeState(), 30, t=0, cooldown_s=3600)
    d2 = step(d1.state, 3, t=5 * MIN, cooldown_s=3600)  # recovery announced
    d3 = step(d2.state, 30, t=10 * MIN, cooldown_s=3600)  # again within the hour: quiet
    d4 = step(d3.state, 3, t=15 * MIN, cooldown_s=3600)  # and its recovery is quiet too
    assert [d.alert.kind if d.alert else None for d in (d1, d2, d3, d4)] == ["SPIKE", "RECOVERY", None, None]
    d5 = step(d4.state, 30, t=70 * MIN, cooldown_s=3600)
    assert d5.alert is not None and d5.alert.kind == "SPIKE"


def test_falling_rate_is_not_an_alert_and_small_windows_are_not_judged():
    low = judge(WindowCounts(CAM, 200, 0), spc.Limits("p", 0.2), ScopeState(), window_start=0, window_end=1, now_ms=1)
    assert low.alert is None and low.point.z < -3
    small = step(ScopeState(), 5, inspected=5, min_window_parts=20)
    assert small.alert is None and small.point is None and small.state == ScopeState()


def test_run_rules_over_recent_windows():
    state = ScopeState()
    alerts = []
    for t in range(8):  # 8 windows a little above the centre line: WE4
        d = step(state, 7, t=t * 5 * MIN, rules=("WE1", "WE4"))
        state = d.state
        alerts.append(d.alert)
    assert alerts[:7] == [None] * 7 and alerts[7] is not None and alerts[7].rule == "WE4"


def test_alert_ids_are_deterministic():
    assert step(ScopeState(), 30, t=0).alert.alert_id == step(ScopeState(), 30, t=0).alert.alert_id


def test_baseline_limits_phase_one_and_floors():
    groups = {CAM: [(2, 100)] * 10 + [(40, 100)], Scope("line-1", "cam-9"): [(0, 50)] * 2,
              Scope("line-2", "cam-1"): [(0, 100)] * 10}
    lim = baseline_limits(groups, min_parts=200)
    assert lim[CAM].center == 0.02  # the 40% hour was dropped (Phase I, iterated)
    assert Scope("line-1", "cam-9") not in lim  # too little baseline
    assert lim[Scope("line-2", "cam-1")].center == 1 / 2000  # no defect in baseline: floored


def test_line_totals_sum_cameras():
    rows = [WindowCounts(Scope("l1", "a"), 10, 1), WindowCounts(Scope("l1", "b"), 20, 2), WindowCounts(Scope("l2", "c"), 5, 0)]
    assert [(w.scope, w.inspected, w.defective) for w in line_totals(rows)] == [(Scope("l1"), 30, 3), (Scope("l2"), 5, 0)]


def test_overlapping_windows_update_one_point_per_window_length():
    state = ScopeState()
    for t in range(0, 10 * MIN + 1, MIN):  # interval 1 min, window 5 min
        state = step(state, 4, t=t).state
    # windows ending 0, 5, 10 min open points; the others update the newest one
    assert len(state.z_history) == 3 and state.anchor_end == 10 * MIN
