"""The compose broker's security (ops/kafka/compose-broker.sh) and `defectstream kafka-init`'s users and
ACLs (streams/kafka/security.py) on a throwaway broker: a camera can write `frames` and nothing else,
the worker does its whole job under its own principal (issue 17, #10).

The broker is the KafkaBroker fixture (the stack's Kafka jars, a temporary directory) with the
security lines of the compose script, taken from the script itself: SASL_PLAINTEXT with
SCRAM-SHA-512 for clients, SASL/PLAIN on the controller listener, the StandardAuthorizer with no
access where no ACL grants it, User:admin the super user (its SCRAM credential made at format).
"""
from __future__ import annotations

import re
import string
import time
import uuid
from pathlib import Path

import pytest

from schemas.events import PartInspected
from sinks.runner import import_kafka
from streams.kafka.security import ROLES, apply_security
from streams.settings import KafkaSettings, Settings, TopicNames

from .conftest import KafkaBroker

kafka = import_kafka()
ROOT = Path(__file__).resolve().parents[2]
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex[:8]
PASSWORDS = {role: f"{role}-{uuid.uuid4().hex[:8]}" for role in ROLES}


def compose_security_lines(admin_password: str) -> list[str]:
    """The `# --- security` block of ops/kafka/compose-broker.sh, its variables filled in."""
    text = (ROOT / "ops/kafka/compose-broker.sh").read_text()
    block = re.search(r"# --- security[^\n]*\n(.*?)# --- end security ---", text, re.S).group(1)
    return string.Template(block).substitute(KAFKA_ADMIN_PASSWORD=admin_password).strip().splitlines()


class ScramBroker(KafkaBroker):
    protocol = "SASL_PLAINTEXT"
    controller_protocol = "SASL_PLAINTEXT"

    def security_props(self) -> list[str]:
        return compose_security_lines(ADMIN_PASSWORD)

    def format_args(self) -> list[str]:
        return ["--add-scram", f"SCRAM-SHA-512=[name=admin,password={ADMIN_PASSWORD}]"]

    def kafka_settings(self, user: str, password: str, topics: TopicNames) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap, security_protocol="SASL_PLAINTEXT",
                             sasl_mechanism="SCRAM-SHA-512", sasl_username=user, sasl_password=password,
                             topics=topics, partitions=1)


def _topics(prefix: str) -> TopicNames:
    return TopicNames(**{f: f"{prefix}-{f}" for f in ("frames", "defects", "parts", "deadletter", "alerts", "cameras")})


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory):
    broker = ScramBroker(tmp_path_factory.mktemp("scram-kafka"))
    broker.start(timeout_s=120.0)
    yield broker
    broker.stop()


def _as(broker: ScramBroker, settings: Settings, role: str) -> Settings:
    user, pw = ("admin", ADMIN_PASSWORD) if role == "admin" else (role, PASSWORDS[role])
    return settings.model_copy(update={"kafka": broker.kafka_settings(user, pw, settings.kafka.topics)})


def _send(settings: Settings, topic: str, value: bytes = b"x", key: bytes = b"cam-1") -> None:
    producer = kafka.KafkaProducer(acks="all", max_block_ms=10_000, request_timeout_ms=10_000,
                                   **settings.kafka.client_kwargs())
    try:
        producer.send(topic, key=key, value=value).get(timeout=15)
    finally:
        producer.close(timeout=5)


def test_a_camera_writes_frames_and_nothing_else(scram_broker):
    prefix = f"acl-{uuid.uuid4().hex[:6]}"
    base = Settings(app_id=prefix, kafka=scram_broker.kafka_settings("admin", ADMIN_PASSWORD, _topics(prefix)))
    out = apply_security(base, PASSWORDS)
    assert out["users"] == sorted(ROLES) and out["acls"] > 10 and base.kafka.topics.frames in out["topics_created"]
    apply_security(base, PASSWORDS)  # idempotent: the init container may run again
    camera = _as(scram_broker, base, "camera")
    t = base.kafka.topics
    _send(camera, t.frames)
    for topic in (t.cameras, t.defects, t.parts, t.alerts):  # a promotion, a forged verdict or alert: denied
        with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
            _send(camera, topic)
    _send(base, t.parts, b"a verdict")  # the admin may; the camera may not read it back
    consumer = kafka.KafkaConsumer(t.parts, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=3000,
                                   **camera.kafka.client_kwargs())
    try:
        assert list(consumer) == []
        visible = consumer.topics()
        assert t.frames in visible and not visible & {t.parts, t.defects, t.cameras, t.alerts}
    finally:
        consumer.close()
    # the monitor writes alerts and not verdicts; the sink may not publish promotions
    _send(_as(scram_broker, base, "monitor"), t.alerts)
    with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
        _send(_as(scram_broker, base, "monitor"), t.parts)
    with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
        _send(_as(scram_broker, base, "sink"), t.cameras)
    # a wrong password is refused
    wrong = base.model_copy(update={"kafka": scram_broker.kafka_settings("camera", "wrong", t)})
    with pytest.raises(kafka.errors.KafkaError):
        _send(wrong, t.frames)


@pytest.mark.usefixtures("needs_checkpoints")
def test_the_worker_does_its_job_under_its_own_principal(scram_broker, group_worker_factory, tmp_path):
    """A `defectstream worker` logged in as `worker` (Faust: consumer group, changelog and timeout
    topics, producers; the cameras follower) turns a camera's frames into one verdict per part."""
    from streams.sim.simulator import SimulationConfig, simulate

    w = group_worker_factory(scram_broker.bootstrap, partitions=1, **{
        "DEFECTSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "DEFECTSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "DEFECTSTREAM_KAFKA__SASL_USERNAME": "worker", "DEFECTSTREAM_KAFKA__SASL_PASSWORD": PASSWORDS["worker"],
        "DEFECTSTREAM_KAFKA__TOPICS__ALERTS": f"{uuid.uuid4().hex[:6]}-alerts"})
    admin = _as(scram_broker, w.settings, "admin")
    apply_security(admin, PASSWORDS)
    w.start(timeout_s=180.0)
    cfg = SimulationConfig(frame_shape=(128, 256), time_scale=0, progress=False, frames_per_part=4, defect_rate=0.8,
                           parts_per_minute=60, cameras=1, parts=3, seed=31, camera_prefix="s",
                           start_time_ms=1_790_000_000_000)
    rep = simulate(_as(scram_broker, w.settings, "camera"), cfg)
    assert rep.parts == 3
    t = w.settings.kafka.topics
    consumer = kafka.KafkaConsumer(t.parts, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=1000,
                                   **admin.kafka.client_kwargs())
    parts: dict[str, dict] = {}
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and len(parts) < 3:
            for m in consumer:
                p = PartInspected.codec().decode(m.value)
                parts[p["part_id"]] = p
    finally:
        consumer.close()
    assert len(parts) == 3, w.log_tail()
    assert {p["closed_reason"] for p in parts.values()} == {"LAST_FRAME"}
    assert w.alive(), w.log_tail()
    log = w.log_path.read_text(errors="replace")
    assert "TopicAuthorizationFailed" not in log and "GroupAuthorizationFailed" not in log, w.log_tail()

