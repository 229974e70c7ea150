"""Every kind of Kafka client defectstream builds works on a SASL/PLAIN broker (issue 12, #7).

The shared local broker is plaintext; this test starts a throwaway KRaft broker (the stack's Kafka
jars, a temporary directory) whose only client listener is SASL_PLAINTEXT with PLAIN users, and
drives through it: topic creation (admin), the camera-config producer, the worker's cameras-topic
follower (aiokafka), the sink runner's consumer, commits and dead-letter producer, the monitor's
publisher and the smoke test's aiokafka consumer. A wrong password is refused, so the broker
really checks.
"""
from __future__ import annotations

import asyncio
import uuid

import pytest

from schemas.events import FrameEvent, PartInspected
from sinks.base import ListSink
from sinks.runner import import_kafka
from sinks.testing import make_alert, make_part
from streams.commands.sink import build_runner
from streams.settings import KafkaSettings, Settings, SinkSettings, TopicNames

from .conftest import KafkaBroker

kafka = import_kafka()
USERS = {"admin": "admin-secret", "plant": "plant-secret"}


class SaslBroker(KafkaBroker):
    """A single-node KRaft broker: SASL_PLAINTEXT (PLAIN) for clients, plaintext controller."""

    protocol = "SASL_PLAINTEXT"
    auto_create_topics = True

    def security_props(self) -> list[str]:
        users = " ".join(f'user_{u}="{p}"' for u, p in USERS.items())
        return [
            "sasl.enabled.mechanisms=PLAIN", "sasl.mechanism.inter.broker.protocol=PLAIN",
            ("listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule "
             f'required username="admin" password="{USERS["admin"]}" {users};'),
        ]

    def settings(self, user: str = "plant", password: str | None = None) -> Settings:
        tag = uuid.uuid4().hex[:6]
        names = TopicNames(**{f: f"{f}-{tag}" for f in TopicNames.model_fields})
        return Settings(kafka=KafkaSettings(
            bootstrap_servers=f"127.0.0.1:{self.port}", security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
            sasl_username=user, sasl_password=password or USERS[user], topics=names, partitions=1))


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory):
    broker = SaslBroker(tmp_path_factory.mktemp("sasl-kafka"))
    broker.start(timeout_s=90.0)
    yield broker
    broker.stop()


def test_every_client_kind_works_with_sasl_plain(sasl_broker):
    from streams.commands.smoke import _consume, _frames
    from streams.inspection.agents import follow_camera_topic
    from streams.inspection.cameras import CameraConfig, CameraRegistry, publish_camera_config
    from streams.kafka.topics import ensure_topics
    from streams.spc.monitor import kafka_publisher

    settings = sasl_broker.settings()
    k = settings.kafka
    ensure_topics(settings)  # admin client

    # the camera-config producer, then the worker's cameras-topic follower (aiokafka), which ignored SASL
    publish_camera_config(settings, "cam-7", CameraConfig(line_id="line-9"))
    registry, ready = CameraRegistry(), asyncio.Event()

    async def follow() -> BaseException | None:
        task = asyncio.create_task(follow_camera_topic(settings, registry, ready=ready))
        await asyncio.wait_for(ready.wait(), 90)  # also set when the consumer cannot start
        failed = task.exception() if task.done() else None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return failed

    assert asyncio.run(follow()) is None
    assert registry.get("cam-7") is not None and registry.get("cam-7").line_id == "line-9"

    # the sink runner: consumer group, commits and the dead-letter producer
    producer = kafka.KafkaProducer(acks="all", **k.client_kwargs())
    part = make_part(1, 1_763_700_000_000)
    producer.send(k.topics.parts, value=PartInspected.codec().encode(part.to_avro()))
    producer.send(k.topics.parts, value=b"\x00not avro")
    for value in _frames(2, "sasl"):  # the smoke test's frames, read back by its aiokafka consumer below
        producer.send(k.topics.frames, key=b"smoke-cam", value=value)
    producer.flush()
    producer.close()
    sink = ListSink()
    runner = build_runner(sink, k, SinkSettings(group_id=f"sasl-{uuid.uuid4().hex[:6]}", flush_interval_s=0.2),
                          {k.topics.parts: "PartInspected"})
    stats = runner.run(idle_s=2.0, max_seconds=60)
    assert [v["part_id"] for v in sink.values] == [part.part_id] and stats.deadlettered == 1 and stats.commits >= 1

    publish, close = kafka_publisher(settings, timeout_s=30)  # the monitor's publisher waits for the ack
    try:
        publish(make_alert(1_763_700_000_000))
    finally:
        close()

    frames = asyncio.run(_consume(settings, k.topics.frames, 2))
    assert len(frames) == 2 and all(FrameEvent.from_avro(f).camera_id for f in frames)


def test_a_wrong_password_is_refused(sasl_broker):
    settings = sasl_broker.settings(password="wrong")
    with pytest.raises(kafka.errors.KafkaError):  # kafka-python reports it as a bootstrap failure
        admin = kafka.KafkaAdminClient(request_timeout_ms=5_000, **settings.kafka.client_kwargs())
        admin.close()
    log = sasl_broker.log_path.read_text(errors="replace")
    assert "Failed authentication" in log and "Invalid username or password" in log
