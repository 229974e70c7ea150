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
