"""The monitor's default rules alert on the worse side only, on chdb (the current ClickHouse engine)."""
from __future__ import annotations

import pytest

from .monitor_sides import run_sides_scenario


def test_improvements_raise_nothing_and_a_spike_one_alert_on_chdb(tmp_path):
    pytest.importorskip("chdb")
    from sinks.sql import ChdbExecutor

    ex = ChdbExecutor(str(tmp_path / "chdb"))
    try:
        assert run_sides_scenario(ex) == [("SPIKE", 10, 0.4)]
    finally:
        ex.close()
