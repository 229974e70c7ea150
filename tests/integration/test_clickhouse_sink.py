"""The ClickHouse sink on the real stack: Kafka topics → ClickHouse, duplicates, bad bytes, an outage."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

from clickhouse_driver import Client

from schemas.events import DeadLetter, DefectEvent, PartInspected
from sinks.migrations import migrate
from sinks.runner import SinkRunner, import_kafka
from sinks.sql import DriverExecutor
from sinks.testing import make_alert, sample_events
from streams.commands.sink import run_sink
from streams.settings import ClickHouseSettings, KafkaSettings, Settings, SinkSettings, TopicNames

kafka = import_kafka()
T0 = 1_763_700_000_000


# --------------------------------------------------------------------------------------------- helpers
def topics(fresh_topic, partitions: int = 2) -> TopicNames:
    # every topic the sink reads is the test's own (the review topics too: other tests write the shared ones)
    return TopicNames(defects=fresh_topic(partitions), parts=fresh_topic(partitions), alerts=fresh_topic(1),
                      deadletter=fresh_topic(1), review_frames=fresh_topic(1), review_queue=fresh_topic(1))


def settings_for(kafka_bootstrap: str, names: TopicNames, host: str, port: int, database: str,
                 **sink: object) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=names),
        clickhouse=ClickHouseSettings(host=host, port=port, database=database, user="writer",
                                      password="writer", connect_timeout_s=1.0),
        sink=SinkSettings(**{"group_id": f"test-sink-{uuid.uuid4().hex[:8]}", "flush_interval_s": 0.2,
                             "max_retries": 1, "backoff_initial_s": 0.05, "hold_initial_s": 0.2,
                             "hold_max_s": 1.0, **sink}),
    )


def produce(bootstrap: str, names: TopicNames, events, extra: list[tuple[str, bytes]] = ()) -> None:
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for ev in events:
            topic = names.parts if isinstance(ev, PartInspected) else names.defects if isinstance(ev, DefectEvent) else names.alerts
            producer.send(topic, key=ev.camera_id.encode() if ev.camera_id else None,
                          value=ev.codec().encode(ev.to_avro()))
        for topic, raw in extra:
            producer.send(topic, value=raw)
        producer.flush()
    finally:
        producer.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def unique_ids(client: Client, table: str) -> int:
    return client.execute(f"SELECT uniqExact(event_id) FROM {table}")[0][0]


def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {(tp.topic, tp.partition): om.offset for tp, om in admin.list_group_offsets(group)[group].items()}
    finally:
        admin.close()


def start_runner(settings: Settings, **run_kw) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target():
        try:
            box["stats"] = run_sink(settings, runner_hook=lambda r: box.setdefault("runner", r), **run_kw)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    wait_for(lambda: "runner" in box or "error" in box, 30, "the sink runner to start")
    return t, box


# ----------------------------------------------------------------------------------------------- tests
def test_round_trip_duplicates_and_dead_letters(stack, kafka_bootstrap, fresh_topic, clickhouse_connect, fresh_database):
    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    names = topics(fresh_topic)
    events = list(sample_events(T0, 40, p=0.3))
    alert = make_alert(T0 + 60_000)
    bad = [(names.parts, b"\x00\x01not avro"), (names.defects, b"")]
    produce(kafka_bootstrap, names, events + [alert], bad)
    produce(kafka_bootstrap, names, events)  # every part/defect delivered twice
    settings = settings_for(kafka_bootstrap, names, stack.host, stack.clickhouse_port, fresh_database)

    stats = run_sink(settings, idle_s=2.0, max_seconds=90)

    parts = [e for e in events if isinstance(e, PartInspected)]
    defects = [e for e in events if isinstance(e, DefectEvent)]
    assert stats.deadlettered == 2 and stats.consumed == 2 * len(events) + 1 + 2
    ch = clickhouse_connect(database=fresh_database)
    assert unique_ids(ch, "parts") == len(parts)
    assert unique_ids(ch, "defects") == len(defects)
    assert ch.execute("SELECT count() FROM parts")[0][0] == 2 * len(parts)  # stored twice, counted once:
    inspected, defective = ch.execute(
        "SELECT count(), sum(d) FROM (SELECT event_id, any(verdict = 'FAIL') AS d FROM parts GROUP BY event_id)")[0]
    assert (inspected, defective) == (len(parts), sum(p.verdict == "FAIL" for p in parts))
    assert ch.execute("SELECT alert_id, kind, camera_id FROM alerts") == [(alert.alert_id, "SPIKE", "cam-1")]
    assert ch.execute("SELECT run_id, model_version FROM model_runs") == [("production", "m1")]
    row = ch.execute("SELECT shift_name, shift_start, class_votes_class FROM defects LIMIT 1")[0]
    assert row[0] in ("early", "late", "night") and row[1] > 0 and "crack" in row[2]
    # offsets committed to the end of every topic
    offsets = committed(kafka_bootstrap, settings.sink.group_id)
    assert sum(v for (t, _), v in offsets.items() if t == names.parts) == 2 * len(parts) + 1
    # dead letters carry the original bytes
    consumer = kafka.KafkaConsumer(names.deadletter, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                   consumer_timeout_ms=5000)
    dead = [DeadLetter.codec().decode(m.value) for m in consumer]
    consumer.close()
    assert sorted(d["original"] for d in dead) == [b"", b"\x00\x01not avro"]


def test_clickhouse_outage_holds_and_resumes_without_loss_or_duplicates(
        kafka_bootstrap, fresh_topic, clickhouse_server_factory):
    server = clickhouse_server_factory()  # a throwaway server: only it goes down, never the stack's
    server.query("CREATE DATABASE sinktest")
    ex = DriverExecutor(Client("127.0.0.1", port=server.tcp_port, database="sinktest"))
    migrate(ex)
    ex.close()
    names = topics(fresh_topic)
    settings = settings_for(kafka_bootstrap, names, "127.0.0.1", server.tcp_port, "sinktest")
    first = [e for e in sample_events(T0, 30) if isinstance(e, PartInspected)]
    second = [e for e in sample_events(T0 + 10_000_000, 30, seed=2) if isinstance(e, PartInspected)]
    produce(kafka_bootstrap, names, first)
    thread, box = start_runner(settings, max_seconds=150)
    runner: SinkRunner = box["runner"]
    try:
        count = lambda: server.query("SELECT count() FROM parts", "sinktest")[0][0]  # noqa: E731
        wait_for(lambda: count() == len(first), 120, "the first batch in ClickHouse")
        wait_for(lambda: sum(committed(kafka_bootstrap, settings.sink.group_id).values()) == len(first), 30,
                 "offsets of the first batch")

        server.stop()  # ClickHouse goes down
        produce(kafka_bootstrap, names, second)
        wait_for(lambda: runner.holding, 60, "the runner to hold")
        time.sleep(2.0)  # held for a while: probes fail, nothing is committed
        assert runner.holding
        assert sum(committed(kafka_bootstrap, settings.sink.group_id).values()) == len(first)
        assert runner.sink.buffered == 0  # bounded memory: paused, nothing kept

        server.start()  # ClickHouse is back
        wait_for(lambda: count() >= len(first) + len(second), 60, "the held records in ClickHouse")
        wait_for(lambda: sum(committed(kafka_bootstrap, settings.sink.group_id).values()) == len(first) + len(second),
                 30, "offsets of the held records")
    finally:
        runner.stop()
        thread.join(60)
    assert "error" not in box, box.get("error")
    assert server.query("SELECT uniqExact(event_id), count() FROM parts", "sinktest")[0] == (len(first) + len(second),) * 2
    stats = box["stats"]
    assert stats.holds >= 1 and stats.rewinds >= 1


def test_sink_cli_runs_until_idle(stack, kafka_bootstrap, fresh_topic, clickhouse_connect, fresh_database, monkeypatch, capsys):
    from streams.cli import main

    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    names = topics(fresh_topic, 1)
    events = list(sample_events(T0, 5))
    produce(kafka_bootstrap, names, events)
    env = {
        "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "DEFECTSTREAM_KAFKA__TOPICS__PARTS": names.parts, "DEFECTSTREAM_KAFKA__TOPICS__DEFECTS": names.defects,
        "DEFECTSTREAM_KAFKA__TOPICS__ALERTS": names.alerts, "DEFECTSTREAM_KAFKA__TOPICS__DEADLETTER": names.deadletter,
        "DEFECTSTREAM_KAFKA__TOPICS__REVIEW_FRAMES": names.review_frames,
        "DEFECTSTREAM_KAFKA__TOPICS__REVIEW_QUEUE": names.review_queue,
        "DEFECTSTREAM_CLICKHOUSE__HOST": stack.host, "DEFECTSTREAM_CLICKHOUSE__PORT": str(stack.clickhouse_port),
        "DEFECTSTREAM_CLICKHOUSE__DATABASE": fresh_database, "DEFECTSTREAM_CLICKHOUSE__USER": "writer",
        "DEFECTSTREAM_CLICKHOUSE__PASSWORD": "writer", "DEFECTSTREAM_SINK__FLUSH_INTERVAL_S": "0.2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["sink", "--until-idle", "2", "--max-seconds", "60", "--group-id", f"cli-{uuid.uuid4().hex[:6]}"]) == 0
    assert f"rows written {len(events)}," in capsys.readouterr().out
    assert unique_ids(clickhouse_connect(database=fresh_database), "parts") == 10


def test_a_sink_started_before_its_topics_exist_reads_them_once_they_are_created(
        stack, kafka_broker_factory, clickhouse_connect, fresh_database):
    """A sink started before the worker creates `parts`/`defects` (a broker that does not auto-create
    topics, as in production) reads them once they exist, without a restart."""
    broker = kafka_broker_factory()
    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    names = TopicNames(**{f: f"late-{f}" for f in TopicNames.model_fields})
    settings = settings_for(broker.bootstrap, names, stack.host, stack.clickhouse_port, fresh_database)
    t, box = start_runner(settings, max_seconds=120)
    try:
        time.sleep(3)  # the sink has joined its group with none of its topics there
        admin = kafka.KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            spec = {"num_partitions": 1, "replication_factor": 1, "configs": {}}
            admin.create_topics({getattr(names, f): spec for f in TopicNames.model_fields},
                                timeout_ms=10_000, wait_for_metadata=True)
        finally:
            admin.close()
        events = list(sample_events(T0, 5))
        produce(broker.bootstrap, names, events)
        ch = clickhouse_connect(database=fresh_database)
        parts = sum(isinstance(e, PartInspected) for e in events)
        wait_for(lambda: unique_ids(ch, "parts") == parts, 45, "the parts of topics created after the sink started")
    finally:
        if "runner" in box:
            box["runner"].stop()
        t.join(30)
    assert "error" not in box, box.get("error")


def test_db_migrate_cli_is_idempotent(stack, clickhouse_connect, fresh_database, monkeypatch, capsys):
    from streams.cli import main

    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__HOST", stack.host)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PORT", str(stack.clickhouse_port))
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__DATABASE", fresh_database)
    assert main(["db", "migrate"]) == 0
    assert "applied 0001_defects" in capsys.readouterr().out
    assert main(["db", "migrate"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "status"]) == 0
    from sinks.migrations import load_migrations

    assert capsys.readouterr().out.count(" applied ") == len(load_migrations())


def test_a_row_clickhouse_refuses_is_dead_lettered_and_its_batch_stored(
        stack, kafka_bootstrap, fresh_topic, clickhouse_connect, fresh_database):
    """A negative capture time (UInt64 column) used to kill the sink on every run; now only that row is set aside."""
    from dataclasses import replace

    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    names = topics(fresh_topic, 1)
    good = [e for e in sample_events(T0, 6) if isinstance(e, PartInspected)]
    bad = replace(good[5], event_id="bad-capture-ts", part_id="bad", first_frame_ts=-5000)
    produce(kafka_bootstrap, names, good[:5] + [bad] + good[5:])  # the bad row in the middle of one batch
    settings = settings_for(kafka_bootstrap, names, stack.host, stack.clickhouse_port, fresh_database,
                            flush_interval_s=1.0)

    stats = run_sink(settings, idle_s=2.0, max_seconds=60)

    ch = clickhouse_connect(database=fresh_database)
    assert sorted(r[0] for r in ch.execute("SELECT part_id FROM parts")) == sorted(p.part_id for p in good)
    assert stats.dead_reasons == {"sink_rejected": 1} and stats.holds == 0
    assert committed(kafka_bootstrap, settings.sink.group_id)[(names.parts, 0)] == len(good) + 1
    consumer = kafka.KafkaConsumer(names.deadletter, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                   consumer_timeout_ms=5000)
    (dead,) = [DeadLetter.codec().decode(m.value) for m in consumer]
    consumer.close()
    assert dead["error_class"] == "sink_rejected" and "first_frame_ts" in dead["reason"]
    assert dead["topic"] == names.parts and dead["offset"] == 5
    assert PartInspected.codec().decode(dead["original"])["first_frame_ts"] == -5000


def test_parts_from_200_months_are_stored_without_a_hold(stack, kafka_bootstrap, fresh_topic, clickhouse_connect,
                                                         fresh_database):
    """One batch of 200 one-frame parts, each in another month (intake takes frames ten years old): the
    sink writes it in INSERTs of at most `max_partitions_per_insert` months (a current ClickHouse
    refuses more than 100 partitions per INSERT; 18.16 has no limit), stores every part once, holds
    nothing, and commits every offset."""
    import datetime as dt

    from sinks.testing import make_part

    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    names = topics(fresh_topic, partitions=1)
    stamps = [int(dt.datetime(2009 + m // 12, m % 12 + 1, 15, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)
              for m in range(200)]
    parts = [make_part(i, ts) for i, ts in enumerate(stamps)]
    produce(kafka_bootstrap, names, parts)
    settings = settings_for(kafka_bootstrap, names, stack.host, stack.clickhouse_port, fresh_database,
                            flush_interval_s=2.0, max_partitions_per_insert=40)
    box: dict = {}
    stats = run_sink(settings, idle_s=3.0, max_seconds=90, runner_hook=lambda r: box.setdefault("runner", r))
    assert stats.holds == 0 and stats.deadlettered == 0 and stats.consumed == 200
    ch = clickhouse_connect(database=fresh_database)
    stored = ch.execute("SELECT uniqExact(event_id), count(), uniqExact(toYYYYMM(event_time)) FROM parts")
    assert stored == [(200, 200, 200)]
    assert box["runner"].sink.inserts >= 5  # 200 months, at most 40 per INSERT
    assert sum(v for (t, _), v in committed(kafka_bootstrap, settings.sink.group_id).items() if t == names.parts) == 200
