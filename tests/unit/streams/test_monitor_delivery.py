"""The monitor's I/O shell without services: an alert is delivered before its state is kept; webhook URLs are redacted."""
from __future__ import annotations

import logging
import socket

import pytest

from streams.settings import MonitorSettings
from streams.spc import rules as spc
from streams.spc.monitor import Monitor, Scope, redact_url

CAM = Scope("line-1", "cam-3")
NOW = 1_763_700_000_000


class FakeClickHouse:
    """Answers the window query with one spiking camera; INSERTs fail while `down`."""

    def __init__(self):
        self.down = False
        self.inserted: list[tuple] = []

    def query(self, sql):
        return [("line-1", "cam-3", 0, 200, 60, "m1")]  # 30% defective against a 2% centre line

    def insert(self, table, columns, rows):
        if self.down:
            raise ConnectionRefusedError("ClickHouse down")
        self.inserted.extend(rows)
        return len(rows)


def monitor(ex, **kw) -> Monitor:
    mon = Monitor(ex, MonitorSettings(scopes=["camera"], min_window_parts=1), **kw)
    mon.limits = {CAM: spc.Limits("p", 0.02)}
    return mon


def test_a_failed_insert_does_not_lose_the_alert():
    ex = FakeClickHouse()
    mon = monitor(ex)
    ex.down = True
    with pytest.raises(ConnectionRefusedError):
        mon.tick(NOW)
    assert mon.delivery_failures == 1 and not mon.states.get(CAM, None)  # the scope is not marked alerting
    ex.down = False
    (alert,) = mon.tick(NOW + 60_000)  # decided and delivered again
    assert alert.kind == "SPIKE" and len(ex.inserted) == 1 and mon.states[CAM].alerting
    assert mon.tick(NOW + 120_000) == []  # and then announced only once


def test_a_failed_kafka_publish_does_not_lose_the_alert():
    ex = FakeClickHouse()
    published = []
    fail = [True]

    def publish(alert):
        if fail[0]:
            raise TimeoutError("KafkaTimeoutError: alert not acknowledged")
        published.append(alert)

    mon = monitor(ex, publish=publish)
    with pytest.raises(TimeoutError):
        mon.tick(NOW)
    fail[0] = False
    (alert,) = mon.tick(NOW + 60_000)
    assert published == [alert] and mon.states[CAM].alerting


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_webhook_url_and_its_token_are_never_logged(caplog):
    port = closed_port()
    url = f"http://bot:pa55word@127.0.0.1:{port}/hooks/T0KEN123/B456?token=S3CRET"
    mon = monitor(FakeClickHouse(), webhook_url=url)
    with caplog.at_level(logging.DEBUG):
        (alert,) = mon.tick(NOW)
    assert mon.webhook_failures == 1 and alert.kind == "SPIKE"  # a dead webhook does not stop the monitor
    assert f"127.0.0.1:{port}" in caplog.text
    for secret in ("pa55word", "T0KEN123", "S3CRET", "hooks"):
        assert secret not in caplog.text


def test_webhook_url_from_settings_is_a_secret():
    settings = MonitorSettings(webhook_url="https://hooks.example.com/services/T0KEN")
    assert "T0KEN" not in repr(settings) and "T0KEN" not in str(settings.model_dump())
    assert Monitor(FakeClickHouse(), settings).webhook_url == "https://hooks.example.com/services/T0KEN"


def test_redact_url():
    assert redact_url("https://u:p@hooks.example.com:8443/a/b?x=1") == "https://hooks.example.com:8443/…"
    assert redact_url("not a url") == "?://?/…"
