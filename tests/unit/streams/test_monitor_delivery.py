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
    """The monitor's queries over parts rows kept in memory; INSERTs fail while `down`.

    By default one spiking camera: 200 parts, 60 defective (30% against a 2% centre line), at any time
    (`parts=None`); with `parts` a list of (line, camera, capture ts, defective, ingested_at) rows,
    the window, ingest-watermark and late-row queries are answered from them. The alerts query is
    answered from the rows inserted.
    """

    def __init__(self, parts: list[tuple] | None = None):
        self.down = False
        self.inserted: list[tuple] = []
        self.parts = parts

    def query(self, sql):
        import re

        if self.down == "queries":
            raise ConnectionRefusedError("ClickHouse down")

        from sinks.clickhouse import ALERT_COLUMNS

        if "FROM alerts" in sql:
            col = {c: i for i, c in enumerate(ALERT_COLUMNS)}
            last: dict = {}
            for r in sorted(self.inserted, key=lambda r: r[col["created_at"]]):
                key = (r[col["line_id"]], r[col["camera_id"]])
                spike = r[col["created_at"]] if r[col["kind"]] == "SPIKE" else last.get(key, (0, 0, 0))[2]
                last[key] = (r[col["kind"]], r[col["rule"]], spike)
            return [(line, cam, *v) for (line, cam), v in sorted(last.items())]
        rows = self.parts
        if "max(ingested_at)" in sql:
            return [(max((r[4] for r in rows), default=0) if rows is not None else 0,)]
        since, until = (int(x) for x in re.search(r"first_frame_ts >= (\d+) AND first_frame_ts < (\d+)", sql).groups())
        if "ingested_at >" in sql:
            after = int(re.search(r"ingested_at > (-?\d+)", sql).group(1))
            late = [r[2] for r in rows or [] if r[4] > after and since <= r[2] < until]
            return [(len(late), min(late, default=0), max(late, default=0))]
        if rows is None:
            return [("line-1", "cam-3", 0, 200, 60, "m1")]
        acc: dict = {}
        for line, cam, ts, bad, _ing in rows:
            if since <= ts < until:
                a = acc.setdefault((line, cam), [0, 0])
                a[0] += 1
                a[1] += int(bad)
        return [(line, cam, 0, n, d, "m1") for (line, cam), (n, d) in sorted(acc.items())]

    def insert(self, table, columns, rows):
        if self.down:  # True or "queries": INSERTs fail too
            raise ConnectionRefusedError("ClickHouse down")
        self.inserted.extend(rows)
        return len(rows)


def monitor(ex, settings: MonitorSettings | None = None, **kw) -> Monitor:
    mon = Monitor(ex, settings or MonitorSettings(scopes=["camera"], min_window_parts=1), **kw)
    mon.limits = {CAM: spc.Limits("p", 0.02)}
    return mon


def test_a_failed_insert_does_not_lose_the_alert():
    ex = FakeClickHouse()
    mon = monitor(ex)
    ex.down = True
    with pytest.raises(ConnectionRefusedError):
        mon.tick(NOW)
    assert mon.delivery_failures == 1 and [o.alert.kind for o in mon.outbox] == ["SPIKE"]  # kept, to be retried
    ex.down = False
    (alert,) = mon.tick(NOW + 60_000)  # delivered by the next tick
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


# -- issue 17 item 7: late data, delivery until acknowledged, restarts ---------------------------
MIN = 60_000


def _window(line_cam, start, n, bad, ingested_at):
    """n parts of one camera spread over [start, start + 5 min), `bad` of them defective."""
    return [(*line_cam, start + i * (5 * MIN // n), i < bad, ingested_at) for i in range(n)]


def test_rows_ingested_after_their_window_was_judged_are_judged_again():
    """A ClickHouse hold (or a backlog, or a camera clock behind) stores a window's parts after the
    window was judged: the old monitor never saw them; now the window is judged again."""
    t0 = NOW - 10 * MIN
    ex = FakeClickHouse(_window(("line-1", "cam-3"), t0, 100, 2, ingested_at=t0 + 5 * MIN))  # in control
    mon = monitor(ex, MonitorSettings(scopes=["camera"], min_window_parts=1, window_s=300, interval_s=300))
    assert mon.tick(t0 + 5 * MIN) == []
    assert mon.tick(t0 + 10 * MIN) == []  # the next window: no parts yet (the sink is held)
    # the hold ends: the first window's missing parts (all defective) arrive, ingested now
    ex.parts += _window(("line-1", "cam-3"), t0 + 1_000, 100, 100, ingested_at=t0 + 14 * MIN)
    (spike,) = mon.tick(t0 + 15 * MIN)
    assert spike.kind == "SPIKE" and (spike.window_start, spike.window_end) == (t0, t0 + 5 * MIN)
    assert spike.inspected == 200 and spike.defective == 102 and mon.rejudged >= 1
    assert mon.states[CAM].alerting
    assert mon.tick(t0 + 20 * MIN) == []  # the late rows were judged once, not at every tick


def test_a_spike_whose_kafka_publish_failed_is_published_after_the_spike_is_over():
    ex = FakeClickHouse(_window(("line-1", "cam-3"), NOW - 5 * MIN, 200, 60, ingested_at=NOW))
    published, down = [], [True]

    def publish(alert):
        if down[0]:
            raise TimeoutError("KafkaTimeoutError: alert not acknowledged")
        published.append(alert)

    mon = monitor(ex, publish=publish)
    with pytest.raises(TimeoutError):
        mon.tick(NOW)
    assert ex.inserted == []  # not stored before Kafka acknowledged it: a restart must not take it as sent
    ex.parts += _window(("line-1", "cam-3"), NOW, 200, 2, ingested_at=NOW + 5 * MIN)  # back in control
    down[0] = False
    delivered = mon.tick(NOW + 5 * MIN)
    assert [(a.kind, a.window_start) for a in delivered] == [("SPIKE", NOW - 5 * MIN), ("RECOVERY", NOW)]
    assert [a.kind for a in published] == ["SPIKE", "RECOVERY"] and len(ex.inserted) == 2 and mon.outbox == []


def test_after_a_restart_no_recovery_is_sent_for_a_spike_that_was_never_published():
    ex = FakeClickHouse(_window(("line-1", "cam-3"), NOW - 5 * MIN, 200, 60, ingested_at=NOW))

    def kafka_down(alert):
        raise TimeoutError("KafkaTimeoutError")

    with pytest.raises(TimeoutError):
        monitor(ex, publish=kafka_down).tick(NOW)
    # the monitor restarts (its outbox is gone); its state comes from the alerts stored
    published = []
    again = monitor(ex, publish=published.append)
    again.restore_state()
    ex.parts += _window(("line-1", "cam-3"), NOW, 200, 2, ingested_at=NOW + 5 * MIN)
    again.tick(NOW + 5 * MIN)
    assert [a.kind for a in published] == []  # no RECOVERY with no SPIKE before it
    assert not again.states[CAM].alerting


def test_the_webhook_is_retried_until_it_answers_and_keeps_the_order():
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import threading

    received, status = [], [503]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if status[0] < 300:
                import json

                received.append(json.loads(body)["kind"])
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ex = FakeClickHouse(_window(("line-1", "cam-3"), NOW - 5 * MIN, 200, 60, ingested_at=NOW))
        mon = monitor(ex, webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        (spike,) = mon.tick(NOW)  # stored and published; the webhook answers 503
        ex.parts += _window(("line-1", "cam-3"), NOW, 200, 2, ingested_at=NOW + 5 * MIN)
        (recovery,) = mon.tick(NOW + 5 * MIN)
        assert received == [] and mon.webhook_failures == 2 and len(mon.outbox) == 2
        status[0] = 204
        assert mon.tick(NOW + 10 * MIN) == []  # nothing new is raised, the webhook gets both, in order
        assert received == ["SPIKE", "RECOVERY"] and mon.outbox == []
    finally:
        server.shutdown()
        server.server_close()


# -- issue 17 item 12: secrets in exception messages ----------------------------------------------
@pytest.mark.parametrize("url, secrets", [
    ("https://bot:pa55word@hooks.example.com/hook", ["pa55word"]),  # http.client: "nonnumeric port: 'pa55word@…'"
    ("https://T0KEN123@hooks.example.com/services/B456?token=S3CRET", ["T0KEN123", "S3CRET", "B456"]),
    ("htps://u:pa55word@hooks.example.com/x?token=S3CRET", ["pa55word", "S3CRET"]),  # "unknown url type: …"
])
def test_no_exception_message_carries_the_webhook_secrets(caplog, url, secrets):
    mon = monitor(FakeClickHouse(), webhook_url=url)
    with caplog.at_level(logging.DEBUG):
        (alert,) = mon.tick(NOW)
    assert mon.webhook_failures == 1 and alert.kind == "SPIKE"
    assert "hooks.example.com" in caplog.text
    for secret in secrets:
        assert secret not in caplog.text


def test_redact_replaces_every_secret_piece():
    from streams.spc.monitor import redact

    url = "https://bot:pa55word@hooks.example.com/services/T0KEN123?token=S3CRET&x=1"
    text = f"nonnumeric port: 'pa55word@hooks.example.com' ({url}) token=S3CRET /services/T0KEN123"
    out = redact(text, url)
    assert all(s not in out for s in ("pa55word", "S3CRET", "T0KEN123")) and "hooks.example.com" in out
    assert redact("nothing here", None) == "nothing here"


# -- issue 17 item 13: non-production monitors stay out of production ------------------------------
def test_a_non_production_monitor_publishes_to_a_topic_of_its_own(monkeypatch):
    from streams.kafka import clients
    from streams.settings import Settings, TopicNames
    from streams.spc.monitor import alerts_topic, kafka_publisher

    names = TopicNames()
    assert alerts_topic(names, "production") == "alerts"
    assert alerts_topic(names, "replay-2025-11-21 v2") == "alerts.replay-2025-11-21_v2"
    sent: list[str] = []

    class Producer:
        def send(self, topic, **kw):
            sent.append(topic)
            return type("F", (), {"get": lambda self, timeout=None: None})()

        def flush(self, timeout=None):
            pass

        def close(self):
            pass

    monkeypatch.setattr(clients, "producer", lambda *a, **kw: Producer())
    from sinks.testing import make_alert

    for run in ("production", "replay-7"):
        settings = Settings(monitor=MonitorSettings(run_id=run))
        publish, close = kafka_publisher(settings)
        publish(make_alert(NOW))
        close()
    assert sent == ["alerts", "alerts.replay-7"]


def test_alert_ids_of_a_replay_run_differ_from_production():
    ex = FakeClickHouse()
    prod = monitor(ex).tick(NOW)[0]
    replay_settings = MonitorSettings(scopes=["camera"], min_window_parts=1, run_id="replay-7")
    replay = monitor(FakeClickHouse(), replay_settings).tick(NOW)[0]
    assert prod.alert_id != replay.alert_id


def test_late_rows_that_move_a_spike_earlier_do_not_announce_it_twice():
    """The spike was announced for window 2; late rows show it had started in window 1: judged again,
    window 1 breaches, but the episode was announced already and is not announced a second time."""
    t0 = NOW - 20 * MIN
    cam = ("line-1", "cam-3")
    ex = FakeClickHouse(_window(cam, t0, 100, 2, ingested_at=t0 + 5 * MIN)
                        + _window(cam, t0 + 5 * MIN, 100, 60, ingested_at=t0 + 10 * MIN))
    mon = monitor(ex, MonitorSettings(scopes=["camera"], min_window_parts=1, window_s=300, interval_s=300))
    assert mon.tick(t0 + 5 * MIN) == []
    (spike,) = mon.tick(t0 + 10 * MIN)
    assert spike.window_start == t0 + 5 * MIN
    ex.parts += _window(cam, t0 + 1_000, 100, 100, ingested_at=t0 + 14 * MIN)  # window 1 was bad too
    assert mon.tick(t0 + 15 * MIN) == [] and mon.rejudged >= 2 and mon.states[CAM].alerting
    ex.parts += _window(cam, t0 + 15 * MIN, 200, 2, ingested_at=t0 + 20 * MIN)
    assert [a.kind for a in mon.tick(t0 + 20 * MIN)] == ["RECOVERY"]


def test_the_outbox_is_published_while_clickhouse_cannot_be_queried():
    ex = FakeClickHouse(_window(("line-1", "cam-3"), NOW - 5 * MIN, 200, 60, ingested_at=NOW))
    published, kafka_down = [], [True]

    def publish(alert):
        if kafka_down[0]:
            raise TimeoutError("KafkaTimeoutError")
        published.append(alert)

    mon = monitor(ex, publish=publish)
    with pytest.raises(TimeoutError):
        mon.tick(NOW)
    ex.down, kafka_down[0] = "queries", False
    with pytest.raises(ConnectionRefusedError):
        mon.tick(NOW + 5 * MIN)  # the window cannot be judged, the SPIKE is published all the same
    assert [a.kind for a in published] == ["SPIKE"] and not mon.outbox[0].stored
    ex.down = False
    mon.tick(NOW + 10 * MIN)
    assert len(ex.inserted) == 1 and mon.outbox == [] and len(published) == 1  # stored, not published again
