"""Kafka or ClickHouse unreachable: every command that needs it stops within seconds with one `error:` line
naming the setting, never minutes of client retries and logs (issue 20). A closed loopback port stands
for the service that is down, so no service is needed."""
from __future__ import annotations

import os
import socket
import time

import pytest

from streams import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KAFKA_COMMANDS = [
    ["worker"],
    ["simulate", "--cameras", "1", "--parts", "1", "--no-progress"],
    ["monitor", "--once"],
    ["replay", "--since", "1h", "--until", "now", "--model", "models/checkpoints", "--run-id", "r1"],
    ["cameras", "reset", "cam-1"],
    ["cameras", "alias", "cam-2", "cam-1"],
    ["camera-config", "cam-1", "--line", "line-1"],
    ["kafka-init"],
    ["models", "promote", "models/checkpoints"],
    ["smoke"],
    ["score", "--ground-truth", "GT", "--defects-topic", "defects"],
]


def _run(argv: list[str], capsys) -> tuple[int, str, float]:
    t0 = time.monotonic()
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err, time.monotonic() - t0


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("argv", KAFKA_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_kafka_down_fails_fast_with_one_line(argv, monkeypatch, capsys, tmp_path):
    (tmp_path / "gt.jsonl").write_text("")
    argv = [str(tmp_path / "gt.jsonl") if a == "GT" else a for a in argv]
    port = _closed_port()
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    for role in ("CAMERA", "WORKER", "SINK", "MONITOR"):
        monkeypatch.setenv(f"KAFKA_{role}_PASSWORD", "x")
    code, err, took = _run(argv, capsys)
    line = _one_error_line(err)
    assert code == 2 and f"cannot reach the Kafka broker 127.0.0.1:{port}" in line, err
    assert "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS" in line
    assert took < 20, took  # generous: the check itself gives up after 10 s; a refused port at once


@pytest.mark.parametrize("argv", [["sink", "--max-seconds", "30"], ["demo", "--out", "OUT"]], ids=lambda a: a[0])
def test_clickhouse_unreachable_sink_and_demo_exit_non_zero_with_one_line(argv, monkeypatch, capsys, tmp_path):
    port = _closed_port()
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PORT", str(port))
    monkeypatch.setenv("DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{_closed_port()}")
    before = {k: v for k, v in os.environ.items() if k.startswith("DEFECTSTREAM_")}
    code, err, took = _run([str(tmp_path / "out") if a == "OUT" else a for a in argv], capsys)
    line = _one_error_line(err)
    assert code == 2 and f"cannot use ClickHouse at 127.0.0.1:{port}" in line, err
    assert took < 20, took
    assert {k: v for k, v in os.environ.items() if k.startswith("DEFECTSTREAM_")} == before  # checked before any change
