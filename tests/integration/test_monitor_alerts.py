"""The SPC monitor on the real stack: one camera spikes → exactly one alert (ClickHouse, Kafka, webhook)."""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from schemas.events import Alert
from sinks.migrations import migrate
from sinks.runner import import_kafka
from sinks.sql import DriverExecutor
from sinks.testing import make_part, seed
from streams.settings import KafkaSettings, MonitorSettings, Settings, TopicNames
from streams.spc.monitor import Monitor, Scope, kafka_publisher

kafka = import_kafka()
MIN = 60_000
HOUR = 3_600_000
CAMERAS = {"line-1": ["cam-1", "cam-2", "cam-3", "cam-4"], "line-2": ["cam-5"]}
SPIKING = ("line-1", "cam-3")


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
    server.server_close()


def parts_between(start: int, end: int, per_camera: int, p: dict[tuple[str, str], float], seed_: int):
    """`per_camera` parts per camera spread over [start, end), defective with probability p[(line, cam)]."""
    rng = random.Random(seed_)
    out = []
    for line, cams in CAMERAS.items():
        for cam in cams:
            step = (end - start) // per_camera
            for i in range(per_camera):
                out.append(make_part(i, start + i * step, line=line, camera=cam, fail=rng.random() < p.get((line, cam), 0.02)))
    return out


@pytest.fixture
def scenario(clickhouse_connect, fresh_database):
    ex = DriverExecutor(clickhouse_connect(database=fresh_database))
    migrate(ex)
    now = (int(time.time() * 1000) // MIN) * MIN
    window = 5 * MIN
    baseline_start, baseline_end = now - window - 48 * HOUR, now - window
    for h in range(48):  # 48 hourly baseline subgroups, 30 parts per camera each, ~2% defective
        seed(ex, parts_between(baseline_start + h * HOUR, baseline_start + (h + 1) * HOUR, 30, {}, seed_=h))
    spike = parts_between(now - window, now, 100, {SPIKING: 0.35}, seed_=1000)
    seed(ex, spike + spike[:50])  # some parts delivered twice: still counted once
    return ex, now, window, (baseline_start, baseline_end)


def test_one_alert_for_the_spiking_camera_none_for_others(scenario, webhook, kafka_bootstrap, fresh_topic):
    ex, now, window, (b0, b1) = scenario
    url, received = webhook
    alerts_topic = fresh_topic(1)
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=TopicNames(alerts=alerts_topic)))
    publish, close = kafka_publisher(settings)
    ms = MonitorSettings(window_s=window / 1000, interval_s=60, scopes=["camera"], cooldown_s=3600)
    mon = Monitor(ex, ms, publish=publish, webhook_url=url)
    limits = mon.freeze(b0, b1)
    assert set(limits) == {Scope(line, cam) for line, cams in CAMERAS.items() for cam in cams}
    try:
        fired = mon.tick(now) + mon.tick(now + 10_000) + mon.tick(now + 20_000)  # a sustained spike
    except BaseException:
        close()
        raise
    assert [(a.kind, a.line_id, a.camera_id) for a in fired] == [("SPIKE", *SPIKING)]
    assert [(r["kind"], r["camera_id"], r["alert_id"]) for r in received] == [("SPIKE", "cam-3", fired[0].alert_id)]
    assert ex.query("SELECT kind, line_id, camera_id, rule, run_id FROM alerts") == [("SPIKE", "line-1", "cam-3", "WE1", "production")]
    consumer = kafka.KafkaConsumer(alerts_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                   consumer_timeout_ms=5000)
    on_topic = [Alert.codec().decode(m.value) for m in consumer]
    consumer.close()
    assert [(a["kind"], a["camera_id"]) for a in on_topic] == [("SPIKE", "cam-3")]
    a = fired[0]
    assert a.rate > a.limit > a.center and a.inspected == 100

    # The spike ends: the next window is normal → one RECOVERY for cam-3, nothing for the others.
    seed(ex, parts_between(now, now + window, 100, {}, seed_=2000))
    try:
        recovered = mon.tick(now + window)
    finally:
        close()
    assert [(a.kind, a.camera_id) for a in recovered] == [("RECOVERY", "cam-3")]
    assert [r["kind"] for r in received] == ["SPIKE", "RECOVERY"]


def test_line_scope_and_restart_does_not_re_announce(scenario):
    ex, now, window, (b0, b1) = scenario
    ms = MonitorSettings(window_s=window / 1000, scopes=["line", "camera"])
    mon = Monitor(ex, ms)
    mon.freeze(b0, b1)
    fired = mon.tick(now)
    # line-1's rate is really up (one of its four cameras at ~35%); line-2 and the other cameras are not
    assert sorted((a.line_id, a.camera_id or "") for a in fired) == [("line-1", ""), ("line-1", "cam-3")]
    again = Monitor(ex, ms)  # a restarted monitor picks its state up from the alerts table
    again.freeze(b0, b1)
    again.restore_state()
    assert again.tick(now + 30_000) == []


def test_monitor_cli_once(scenario, monkeypatch, capsys, stack, fresh_database):
    from streams.cli import main

    ex, now, window, _ = scenario
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__HOST", stack.host)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PORT", str(stack.clickhouse_port))
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__DATABASE", fresh_database)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__USER", "writer")
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PASSWORD", "writer")
    monkeypatch.setenv("DEFECTSTREAM_MONITOR__SCOPES", '["camera"]')
    assert main(["monitor", "--once", "--no-kafka", "--window", str(window // 1000 + 60)]) == 0
    assert "line line-1 camera cam-3" in capsys.readouterr().out
    assert ex.query("SELECT camera_id FROM alerts") == [("cam-3",)]


def test_an_alert_clickhouse_refused_is_delivered_by_the_next_tick(scenario, clickhouse_connect, fresh_database):
    """The monitor's INSERT fails (here: a read-only ClickHouse user); the alert must not be lost."""
    ex, now, window, (b0, b1) = scenario
    ms = MonitorSettings(window_s=window / 1000, scopes=["camera"])
    readonly = DriverExecutor(clickhouse_connect("reader", "reader", fresh_database))
    mon = Monitor(readonly, ms)
    mon.freeze(b0, b1)
    with pytest.raises(Exception, match="(?i)readonly"):
        mon.tick(now)
    assert ex.query("SELECT count() FROM alerts") == [(0,)] and mon.delivery_failures == 1
    mon.ex = DriverExecutor(clickhouse_connect("writer", "writer", fresh_database))  # writes work again
    fired = mon.tick(now + 30_000)
    assert [(a.kind, a.camera_id) for a in fired] == [("SPIKE", "cam-3")]
    assert ex.query("SELECT kind, camera_id FROM alerts") == [("SPIKE", "cam-3")]


def test_kafka_publish_raises_when_the_broker_refuses(kafka_bootstrap, fresh_topic):
    """A send error used to vanish in flush(); the publisher waits for the acknowledgement and raises."""
    tiny = fresh_topic(1, {"max.message.bytes": "64"})  # an Alert record is larger: the broker refuses it
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=TopicNames(alerts=tiny)))
    publish, close = kafka_publisher(settings, timeout_s=20)
    from sinks.testing import make_alert

    try:
        with pytest.raises(kafka.errors.KafkaError):
            publish(make_alert(1_763_700_000_000))
    finally:
        close()


def test_parts_stored_after_their_window_was_judged_are_judged_again(scenario):
    """Issue 17 item 7: a camera's parts reach ClickHouse after the window they were captured in was
    judged (a ClickHouse hold, a backlog, a camera clock behind). The next tick judges that window
    again and announces the spike it hid, under the window it belongs to."""
    ex, now, window, (b0, b1) = scenario
    ms = MonitorSettings(window_s=window / 1000, scopes=["camera"])
    mon = Monitor(ex, ms)
    mon.freeze(b0, b1)
    assert [(a.kind, a.camera_id) for a in mon.tick(now)] == [("SPIKE", "cam-3")]
    late = [make_part(1000 + i, now - window + 500 + i * 2_900, line="line-1", camera="cam-1", fail=i % 2 == 0)
            for i in range(100)]
    seed(ex, late, ingested_at=now + 60_000)  # captured in [now - window, now), stored a minute later
    seed(ex, parts_between(now, now + window, 100, {}, seed_=3000), ingested_at=now + window)
    fired = mon.tick(now + window)
    assert ("SPIKE", "cam-1", now - window) in [(a.kind, a.camera_id, a.window_start) for a in fired]
    assert mon.rejudged >= 1
    stored = ex.query("SELECT kind, camera_id, window_start FROM alerts WHERE kind = 'SPIKE' ORDER BY camera_id")
    assert stored == [("SPIKE", "cam-1", now - window), ("SPIKE", "cam-3", now - window)]


def test_a_replay_monitor_never_publishes_to_the_production_alerts_topic(kafka_bootstrap, fresh_topic, kafka_admin):
    """Issue 17 item 13: a monitor of another run publishes to `<alerts>.<run_id>`, which the sink
    (and every production consumer) never reads."""
    from sinks.testing import make_alert
    from streams.spc.monitor import alerts_topic

    production = fresh_topic(1)
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=TopicNames(alerts=production)),
                        monitor=MonitorSettings(run_id="replay-it"))
    publish, close = kafka_publisher(settings)
    try:
        publish(make_alert(1_763_700_000_000))
    finally:
        close()

    def records(topic: str) -> list:
        consumer = kafka.KafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                       consumer_timeout_ms=4000)
        try:
            return list(consumer)
        finally:
            consumer.close()

    try:
        assert alerts_topic(settings.kafka.topics, "replay-it") == f"{production}.replay-it"
        assert len(records(f"{production}.replay-it")) == 1
        assert records(production) == []
    finally:
        kafka_admin.delete_topics([f"{production}.replay-it"])


def test_improvements_raise_nothing_and_a_spike_one_alert_on_clickhouse_18(stack, fresh_database):
    """The same scenario as on chdb (tests/unit/spc/monitor_sides.py) on the stack's ClickHouse server."""
    from sinks.sql import DriverExecutor
    from streams.settings import ClickHouseSettings

    from ..unit.spc.monitor_sides import run_sides_scenario

    ex = DriverExecutor.connect(ClickHouseSettings(host=stack.host, port=stack.clickhouse_port), database=fresh_database)
    try:
        assert ex.query("SELECT version()")[0][0].startswith("18.16")
        assert run_sides_scenario(ex) == [("SPIKE", 10, 0.4)]
    finally:
        ex.close()
