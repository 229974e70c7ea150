"""A misconfigured command stops at start-up with one line that names the setting (issue 12).

Each case runs the real `defectstream` entry point in a subprocess, as an operator would, with one
setting wrong: exit status 2, an ``error: …`` line naming the DEFECTSTREAM_* variable, no traceback,
within a bounded time.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import unique_name

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "streams.cli"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict[str, str], timeout_s: float = 60) -> tuple[int, str, float]:
    t0 = time.monotonic()
    p = subprocess.run(CLI + args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=timeout_s)
    return p.returncode, p.stderr, time.monotonic() - t0


def _one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_worker_with_a_wrong_broker(stack):
    port = _closed_port()
    rc, err, took = _run(["worker"], {"DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    _one_line_error(rc, err, f"cannot reach the Kafka broker 127.0.0.1:{port}", "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS")
    assert took < 45


def test_worker_with_a_missing_checkpoint(stack, tmp_path):
    rc, err, _ = _run(["worker"], {"DEFECTSTREAM_MODEL__PATH": str(tmp_path / "no-model")})
    _one_line_error(rc, err, "DEFECTSTREAM_MODEL__PATH", "does not exist")


def test_worker_with_a_bad_shift_calendar(stack):
    shifts = '[{"name": "early", "start": "06:00", "end": "14:00"}, {"name": "late", "start": "12:00", "end": "22:00"}]'
    rc, err, _ = _run(["worker"], {"DEFECTSTREAM_PLANT__SHIFTS": shifts})
    _one_line_error(rc, err, "DEFECTSTREAM_PLANT__SHIFTS", "'early'", "'late'", "overlap")


@pytest.mark.parametrize("command", [["report"], ["monitor", "--once"], ["db", "status"]])
def test_clickhouse_commands_with_clickhouse_unreachable(stack, command):
    port = _closed_port()
    rc, err, took = _run(command, {"DEFECTSTREAM_CLICKHOUSE__PORT": str(port)})
    _one_line_error(rc, err, "cannot use ClickHouse", "DEFECTSTREAM_CLICKHOUSE__HOST")
    assert took < 45


def test_report_with_a_wrong_clickhouse_password(stack):
    rc, err, _ = _run(["report"], {"DEFECTSTREAM_CLICKHOUSE__PASSWORD": "not-the-password",
                                   "DEFECTSTREAM_CLICKHOUSE__USER": "default"})
    _one_line_error(rc, err, "wrong user or password")


def test_sink_with_clickhouse_unreachable_exits_at_once(stack):
    # at start-up an unreachable ClickHouse is a misconfiguration: one line, not a sink paused forever
    port = _closed_port()
    rc, err, took = _run(["sink", "--max-seconds", "60"], {"DEFECTSTREAM_CLICKHOUSE__PORT": str(port)})
    _one_line_error(rc, err, f"cannot use ClickHouse at 127.0.0.1:{port}", "DEFECTSTREAM_CLICKHOUSE__HOST")
    assert took < 20


def test_sink_with_kafka_down_exits_at_once(stack, fresh_database):
    from sinks.migrations import migrate
    from sinks.sql import DriverExecutor
    from streams.settings import ClickHouseSettings

    ex = DriverExecutor.connect(ClickHouseSettings(port=stack.clickhouse_port), database=fresh_database)
    try:
        migrate(ex)
    finally:
        ex.close()
    port = _closed_port()
    rc, err, took = _run(["sink", "--max-seconds", "60"], {"DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
                                                           "DEFECTSTREAM_CLICKHOUSE__DATABASE": fresh_database})
    _one_line_error(rc, err, f"cannot reach the Kafka broker 127.0.0.1:{port}", "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS")
    assert took < 20


def test_demo_refuses_to_drop_a_database_it_did_not_create(stack, fresh_database, clickhouse_client):
    clickhouse_client.execute(f"CREATE TABLE {fresh_database}.keep (x UInt8) ENGINE = TinyLog")
    rc, err, took = _run(["demo", "--database", fresh_database, "--out", "/tmp/defectstream-demo-refused"], {})
    _one_line_error(rc, err, f"database {fresh_database} exists and was not created by `defectstream demo`")
    tables = {r[0] for r in clickhouse_client.execute(f"SHOW TABLES FROM {fresh_database}")}
    assert tables == {"keep"} and took < 30


def test_demo_rebuilds_only_its_own_database_and_report_names_it(stack, request, clickhouse_client):
    from sinks.sql import DriverExecutor
    from streams.commands.demo import MARKER_TABLE, rebuild_demo_database
    from streams.settings import ClickHouseSettings

    name = unique_name(request, "demo")
    admin = DriverExecutor.connect(ClickHouseSettings(port=stack.clickhouse_port), database="default")
    try:
        rebuild_demo_database(admin, name)  # created: marked
        admin.query(f"CREATE TABLE `{name}`.stale (x UInt8) ENGINE = TinyLog")
        rebuild_demo_database(admin, name)  # its own: dropped and rebuilt
        assert {r[0] for r in admin.query(f"SHOW TABLES FROM `{name}`")} == {MARKER_TABLE}
        # after `make demo`, a report on the (missing) configured database says where the demo's data is
        missing = unique_name(request, "nodb")
        rc, err, _ = _run(["report"], {"DEFECTSTREAM_CLICKHOUSE__DATABASE": missing})
        _one_line_error(rc, err, f"the database {missing} does not exist", "DEFECTSTREAM_CLICKHOUSE__DATABASE=")
    finally:
        admin.query(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()
