"""A scenario for the monitor's default rules on a real engine: rates that improve (zero-defect windows,
below the LCL and nine in a row below the centre) raise nothing; a spike raises one SPIKE. Run on chdb
(tests/unit/spc/test_monitor_sides_chdb.py) and on the stack's ClickHouse 18.16
(tests/integration/test_monitor_alerts.py), with the same data and the same settings."""
from __future__ import annotations

from sinks.migrations import migrate
from sinks.testing import make_part, seed
from streams.settings import MonitorSettings
from streams.spc.monitor import Monitor, Scope

T0 = 1_763_700_000_000  # 2025-11-21 04:40 UTC
HOUR = 3_600_000
WINDOW = 300_000
PER_WINDOW = 100


def _parts(start: int, n: int, defective: int, base: int):
    step = WINDOW // n if n else WINDOW
    return [make_part(base + i, start + i * step, camera="cam-1", fail=i < defective) for i in range(n)]


def run_sides_scenario(ex) -> list[tuple[str, int, float]]:
    """Migrate `ex`'s database, store the scenario, run the monitor with its default rules over it.

    Returns (kind, window index, rate) of every alert delivered, in order: the windows 0..9 hold no
    defective part (improvement), window 10 holds 40 % (a spike).
    """
    migrate(ex)
    rows = []
    for h in range(10):  # baseline: ten hourly subgroups of 100 parts, 10 defective each
        rows += _parts(T0 + h * HOUR, 100, 10, h * 1000)
    start = T0 + 10 * HOUR
    rates = [0.0] * 10 + [0.4]
    for w, rate in enumerate(rates):
        rows += _parts(start + w * WINDOW, PER_WINDOW, int(rate * PER_WINDOW), 100_000 + w * 1000)
    seed(ex, rows)
    settings = MonitorSettings(window_s=WINDOW / 1000, baseline_subgroup_s=HOUR / 1000, min_baseline_parts=100,
                               min_window_parts=20, scopes=["camera"], rejudge_s=0, lateness_s=0)
    assert settings.rules == ["WE1", "WE2", "WE3", "WE4"]  # the defaults: Tests 1-4, yet only the worse side alerts
    mon = Monitor(ex, settings, publish=None, webhook_url=None, clock=lambda: (start + len(rates) * WINDOW) / 1000)
    assert mon.freeze(T0, start)
    out = []
    for w in range(len(rates)):
        for a in mon.tick(now_ms=start + (w + 1) * WINDOW):
            out.append((a.kind, w, a.rate))
        if w == 9:  # the ten improving windows were judged: each below the LCL (z < -3), nine in a row below p̄
            zs = mon.states[Scope("line-1", "cam-1")].z_history
            assert len(zs) == 10 and all(z < -3 for z in zs), zs
    return out
