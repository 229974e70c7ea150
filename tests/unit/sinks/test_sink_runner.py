"""The Kafka → sink loop against in-memory doubles: commits after writes, holds, rewinds, dead letters."""
from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from schemas.events import DeadLetter, PartInspected, deterministic_id
from sinks.base import TP, ListSink
from sinks.runner import SinkRunner, import_kafka
from streams.settings import KafkaSettings, SinkSettings

structs = import_kafka("kafka.structs")
TOPICS = KafkaSettings().topics


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 0


class FakeConsumer:
    """Just enough of kafka-python's KafkaConsumer: a log per partition, positions, pause, seek, commit."""

    def __init__(self, logs: dict[TP, list[bytes]]):
        self.logs = logs
        self.pos = {tp: 0 for tp in logs}
        self._paused: set = set()
        self.committed: dict[TP, int] = {}
        self.commit_calls = 0
        self.polls_while_paused = 0

    def subscribe(self, topics, listener=None):
        self.topics = topics

    def assignment(self):
        return {structs.TopicPartition(*tp) for tp in self.logs}

    def poll(self, timeout_ms=0, max_records=None):
        out = {}
        for tp, log in self.logs.items():
            if tp in self._paused:
                self.polls_while_paused += 1
                continue
            recs = [Rec(tp.topic, tp.partition, o, b"k", log[o]) for o in range(self.pos[tp], len(log))]
            if recs:
                out[structs.TopicPartition(*tp)] = recs
                self.pos[tp] = len(log)
        return out

    def pause(self, *tps):
        self._paused |= {TP(t.topic, t.partition) for t in tps}

    def resume(self, *tps):
        self._paused -= {TP(t.topic, t.partition) for t in tps}

    def paused(self):
        return {structs.TopicPartition(*tp) for tp in self._paused}

    def seek(self, tp, offset):
        self.pos[TP(tp.topic, tp.partition)] = offset

    def commit(self, offsets):
        self.commit_calls += 1
        for tp, om in offsets.items():
            self.committed[TP(tp.topic, tp.partition)] = om.offset

    def close(self, autocommit=False):
        pass


class Acked:
    """A send future Kafka acknowledged."""

    def get(self, timeout=None):
        return None


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes]] = []

    def send(self, topic, value, key=None):
        self.sent.append((topic, value))
        return Acked()

    def flush(self):
        pass


def part(i: int) -> bytes:
    ev = PartInspected(deterministic_id("part", i), "cam-1", "line-1", f"p{i}", "PASS", 0, 4, 1_000 + i, 1_100 + i,
                       "LAST_FRAME", "m1", "production", "early", 0)
    return PartInspected.codec().encode(ev.to_avro())


def make(logs: dict[TP, list[bytes]], sink: Any = None, **kw: Any) -> tuple[SinkRunner, FakeConsumer, FakeProducer, ListSink]:
    sink = sink or ListSink()
    consumer, producer = FakeConsumer(logs), FakeProducer()
    settings = SinkSettings(**{"flush_interval_s": 0.01, "hold_initial_s": 0.01, "hold_max_s": 0.05, **kw})
    runner = SinkRunner(sink, settings, TOPICS, {"parts": "PartInspected"}, consumer=consumer, producer=producer)
    return runner, consumer, producer, sink


def test_round_trip_commits_after_write_and_dead_letters_bad_bytes():
    tp = TP("parts", 0)
    runner, consumer, producer, sink = make({tp: [part(0), b"\x00garbage", part(1), b""]})
    stats = runner.run(idle_s=0.05, max_seconds=5)
    assert [v["part_id"] for v in sink.values] == ["p0", "p1"]
    assert consumer.committed == {tp: 4}  # dead letters advance the offset too
    assert stats.deadlettered == 2 and stats.consumed == 4
    assert [t for t, _ in producer.sent] == ["deadletter", "deadletter"]
    dl = DeadLetter.codec().decode(producer.sent[0][1])
    assert dl["offset"] == 1 and dl["original"] == b"\x00garbage" and dl["error_class"].startswith("decode_error")


def test_flush_by_size():
    tp = TP("parts", 0)
    runner, consumer, _, sink = make({tp: [part(i) for i in range(5)]}, batch_size=2, flush_interval_s=60)
    runner.run(idle_s=0.05, max_seconds=5)
    assert len(sink.values) == 5 and consumer.committed[tp] == 5


def test_destination_down_holds_rewinds_and_resumes_without_loss():
    a, b = TP("parts", 0), TP("parts", 1)
    sink = ListSink()
    sink.down = True
    runner, consumer, _, _ = make({a: [part(0), part(1)], b: [part(2)]}, sink=sink)
    import threading

    t = threading.Thread(target=runner.run, kwargs={"idle_s": 0.3, "max_seconds": 10})
    t.start()
    for _ in range(200):
        if runner.holding and consumer.polls_while_paused > 3:
            break
        threading.Event().wait(0.01)
    assert runner.holding
    assert consumer.committed == {}  # nothing acknowledged, nothing committed
    assert consumer.pos == {a: 0, b: 0}  # rewound to the first uncommitted offset
    assert consumer.paused() == consumer.assignment()  # fetching stopped: bounded memory
    consumer.logs[a].append(part(3))  # more arrives while held
    sink.down = False
    t.join(10)
    assert sorted(v["part_id"] for v in sink.values) == ["p0", "p1", "p2", "p3"]
    assert consumer.committed == {a: 3, b: 1}
    assert runner.stats.holds >= 1 and runner.stats.rewinds >= 2


def test_permanent_error_propagates_and_commits_nothing():
    class Broken(ListSink):
        def write(self, batch):
            raise RuntimeError("bug")

    tp = TP("parts", 0)
    runner, consumer, _, _ = make({tp: [part(0)]}, sink=Broken())
    with pytest.raises(RuntimeError, match="bug"):
        runner.run(idle_s=0.05, max_seconds=5)
    assert consumer.committed == {}


def test_failed_commit_does_not_stop_the_loop():
    class NoCommit(FakeConsumer):
        def commit(self, offsets):
            raise RuntimeError("CommitFailedError: rebalance in progress")

    tp = TP("parts", 0)
    sink = ListSink()
    consumer, producer = NoCommit({tp: [part(0), part(1)]}), FakeProducer()
    runner = SinkRunner(sink, SinkSettings(flush_interval_s=0.01), TOPICS, {"parts": "PartInspected"},
                        consumer=consumer, producer=producer)
    stats = runner.run(idle_s=0.05, max_seconds=5)
    assert len(sink.values) == 2 and stats.commit_failures >= 1


def bad_part(i: int) -> bytes:
    ev = PartInspected(deterministic_id("part", i), "cam-1", "line-1", f"p{i}", "PASS", 0, 4, -5000, 1_100 + i,
                       "LAST_FRAME", "m1", "production", "early", 0)
    return PartInspected.codec().encode(ev.to_avro())


def test_a_row_the_destination_rejects_is_dead_lettered_and_the_batch_goes_on():
    tp = TP("parts", 0)
    sink = ListSink(reject=lambda v: v["first_frame_ts"] < 0)
    runner, consumer, producer, _ = make({tp: [part(0), bad_part(1), part(2), part(3)]}, sink=sink)
    stats = runner.run(idle_s=0.05, max_seconds=5)
    assert sorted(v["part_id"] for v in sink.values) == ["p0", "p2", "p3"]
    assert consumer.committed == {tp: 4}  # past the rejected row
    assert stats.dead_reasons == {"sink_rejected": 1} and stats.rows_written == 3 and stats.holds == 0
    (topic, raw), = producer.sent
    dl = DeadLetter.codec().decode(raw)
    assert topic == "deadletter" and dl["offset"] == 1 and dl["original"] == bad_part(1)
    assert dl["error_class"] == "sink_rejected" and dl["reason"]


def test_dead_letters_kafka_refuses_hold_and_commit_nothing():
    class Failing:
        def get(self, timeout=None):
            raise RuntimeError("KafkaTimeoutError: deadletter not acknowledged")

    class RefusingProducer(FakeProducer):
        def send(self, topic, value, key=None):
            super().send(topic, value, key)
            return Failing()

    tp = TP("parts", 0)
    sink = ListSink()
    consumer, producer = FakeConsumer({tp: [part(0), b"\x00garbage", part(2)]}), RefusingProducer()
    runner = SinkRunner(sink, SinkSettings(flush_interval_s=0.01, hold_initial_s=5), TOPICS,
                        {"parts": "PartInspected"}, consumer=consumer, producer=producer)
    runner.run(max_seconds=0.5)
    assert consumer.committed == {} and runner.holding and consumer.pos == {tp: 0}  # rewound, re-read later


def test_a_revoke_writes_and_commits_nothing_it_only_drops_the_revoked_partitions():
    # kafka-python runs rebalance listeners on its IO loop (heartbeats): no INSERT, no commit there.
    a, b = TP("parts", 0), TP("parts", 1)
    runner, consumer, _, sink = make({a: [part(0), part(1)], b: [part(2)]}, flush_interval_s=60)
    runner.consumer = consumer
    for ktp, recs in consumer.poll().items():
        for rec in recs:
            runner._handle(rec)
    runner._on_revoked({a})
    assert sink.write_calls == 0 and consumer.commit_calls == 0
    assert sink.buffered == 1 and set(runner._next_offset) == {b} and runner.stats.revoked_dropped == 2
    runner._flush_and_commit()
    assert [v["part_id"] for v in sink.values] == ["p2"] and consumer.committed == {b: 1}


def test_metrics_rows_written_rejected_dead_letters_queue_and_lag():
    from prometheus_client import generate_latest

    from streams.metrics import by_label, parse, total

    class LaggingConsumer(FakeConsumer):
        def highwater(self, ktp):
            return len(self.logs[TP(ktp.topic, ktp.partition)]) + 3  # 3 records the poll did not return yet

        def position(self, ktp):
            return self.pos[TP(ktp.topic, ktp.partition)]

    tp = TP("parts", 0)
    sink = ListSink(reject=lambda v: v["first_frame_ts"] < 0)
    consumer, producer = LaggingConsumer({tp: [part(0), bad_part(1), b"\x00garbage", part(2)]}), FakeProducer()
    runner = SinkRunner(sink, SinkSettings(flush_interval_s=0.01), TOPICS, {"parts": "PartInspected"},
                        consumer=consumer, producer=producer)
    runner.run(idle_s=0.05, max_seconds=5)
    samples = parse(generate_latest(runner.metrics.registry).decode())
    assert total(samples, "defectstream_sink_records_total") == 4
    assert total(samples, "defectstream_sink_rows_written_total") == 2
    assert total(samples, "defectstream_sink_rows_rejected_total") == 1
    assert total(samples, "defectstream_sink_deadletters_total", reason="sink_rejected") == 1
    assert total(samples, "defectstream_sink_deadletters_total") == 2  # + the undecodable record
    assert runner.stats.dead_reasons == {k[0]: int(v) for k, v in by_label(samples, "defectstream_sink_deadletters_total", "reason").items()}
    assert total(samples, "defectstream_sink_queue_rows") == 0  # all flushed
    assert total(samples, "defectstream_sink_consumer_lag", topic="parts", partition="0") == 3
    assert total(samples, "defectstream_sink_holding") == 0


def test_the_runner_builds_its_clients_only_through_the_factories_it_is_given():
    """sinks/ builds no Kafka client: `defectstream sink` injects factories bound to the Kafka settings."""
    tp = TP("parts", 0)
    built: dict[str, dict] = {}
    consumer, producer = FakeConsumer({tp: [part(0), b"\x00garbage"]}), FakeProducer()

    def consumer_factory(**options):
        # the group's consumer; a group-less one only reads topic metadata at start (FakeConsumer has none)
        built.setdefault("consumer", options) if options.get("group_id") else built.setdefault("probe", options)
        return consumer

    def producer_factory(**options):
        built["producer"] = options
        return producer

    settings = SinkSettings(flush_interval_s=0.01, group_id="g-1")
    runner = SinkRunner(ListSink(), settings, TOPICS, {"parts": "PartInspected"}, consumer_factory=consumer_factory,
                        producer_factory=producer_factory)
    stats = runner.run(idle_s=0.05, max_seconds=5)
    assert stats.deadlettered == 1 and [t for t, _v in producer.sent] == [TOPICS.deadletter]
    assert built["consumer"]["group_id"] == "g-1" and built["consumer"]["enable_auto_commit"] is False
    assert built["producer"] == {"acks": "all", "linger_ms": 5}
    with pytest.raises(ValueError, match="consumer_factory"):
        SinkRunner(ListSink(), settings, TOPICS).run(max_seconds=0.1)


class CreatingConsumer(FakeConsumer):
    """A broker whose topics exist only after `appear_after` metadata fetches; records the calls in order."""

    def __init__(self, logs, appear_after: int):
        super().__init__(logs)
        self.fetches, self.appear_after, self.calls = 0, appear_after, []

    def topics(self):  # noqa: F811 - kafka-python's method; FakeConsumer.subscribe sets an attribute of that name
        self.fetches += 1
        return {tp.topic for tp in self.logs} if self.fetches > self.appear_after else set()

    def partitions_for_topic(self, topic):
        return {tp.partition for tp in self.logs if tp.topic == topic} if self.fetches > self.appear_after else set()

    def subscribe(self, topics, listener=None):
        self.calls.append(("subscribe", self.fetches > self.appear_after))
        self.subscribed = topics

    def unsubscribe(self):
        self.calls.append(("unsubscribe", None))


def test_the_sink_joins_its_group_only_once_its_topics_exist():
    """A consumer that joins while its topics are being created can get an assignment without them and
    then read nothing from them: the runner waits for the topics first."""
    tp = TP("parts", 0)
    consumer = CreatingConsumer({tp: [part(0), part(1)]}, appear_after=3)
    sink = ListSink()
    runner = SinkRunner(sink, SinkSettings(flush_interval_s=0.01, topic_wait_s=30), TOPICS,
                        {"parts": "PartInspected"}, consumer=consumer, producer=FakeProducer())
    runner.run(idle_s=0.05, max_seconds=10)
    assert consumer.calls == [("subscribe", True)] and len(sink.values) == 2


def test_a_topic_missing_after_the_wait_is_joined_when_it_appears(monkeypatch):
    import sinks.runner as runner_mod

    monkeypatch.setattr(runner_mod, "TOPIC_RECHECK_S", 0.0)
    tp = TP("parts", 0)
    consumer = CreatingConsumer({tp: [part(0)]}, appear_after=4)
    runner = SinkRunner(ListSink(), SinkSettings(flush_interval_s=0.01, topic_wait_s=0), TOPICS,
                        {"parts": "PartInspected"}, consumer=consumer, producer=FakeProducer())
    runner.run(max_seconds=1.0)
    assert consumer.calls == [("subscribe", False), ("unsubscribe", None), ("subscribe", True)]
