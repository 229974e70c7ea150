"""The pipeline's Kafka topics: Faust declarations and idempotent creation on the broker."""
from __future__ import annotations

import logging
from typing import Any, NamedTuple

from streams.settings import Settings

log = logging.getLogger(__name__)


class Topics(NamedTuple):
    """Faust topic objects of one app."""

    frames: Any  # raw bytes: the agent decodes, so bad Avro reaches the dead-letter topic
    defects: Any  # DefectEvent (avro-defect), key = camera id
    parts: Any  # PartInspected (avro-part), key = camera id
    deadletter: Any  # DeadLetter (avro-deadletter), key = the original key
    cameras: Any  # compacted, JSON CameraConfig, key = camera id
    part_timeouts: Any  # internal: JSON {part_id, last_seq}, key = camera id, co-partitioned with frames
    review_frames: Any = None  # ReviewFrame (avro-review-frame), key = camera id: sampled frames for review
    review_queue: Any = None  # ReviewCandidate (avro-review-candidate), key = camera id


# A frame record is its image plus the Avro header fields and Kafka's record overhead.
FRAME_OVERHEAD_BYTES = 64 * 1024


def part_timeouts_topic(settings: Settings) -> str:
    return f"{settings.app_id}-part-timeouts"


def declare_topics(app: Any, settings: Settings) -> Topics:
    """Declare the topics on `app` (frames and the timeouts topic share the partition count)."""
    names = settings.kafka.topics
    n = settings.kafka.partitions
    return Topics(
        frames=app.topic(names.frames, key_serializer="raw", value_serializer="raw", partitions=n),
        defects=app.topic(names.defects, key_serializer="raw", value_serializer="avro-defect"),
        parts=app.topic(names.parts, key_serializer="raw", value_serializer="avro-part"),
        deadletter=app.topic(names.deadletter, key_serializer="raw", value_serializer="avro-deadletter"),
        cameras=app.topic(names.cameras, key_serializer="raw", value_serializer="raw", compacting=True, deleting=False),
        part_timeouts=app.topic(
            part_timeouts_topic(settings), key_serializer="raw", value_serializer="json", partitions=n, internal=True
        ),
        review_frames=app.topic(names.review_frames, key_serializer="raw", value_serializer="avro-review-frame"),
        review_queue=app.topic(names.review_queue, key_serializer="raw", value_serializer="avro-review-candidate"),
    )


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the pipeline's topics that do not exist yet; returns the names created.

    `frames` and the timeouts topic get `kafka.partitions` partitions (the tracking table is
    co-partitioned with them); `frames` takes records up to `worker.max_image_bytes` plus 64 KiB;
    `cameras` is compacted. Existing topics are left as they are, and so are topics this client
    is not authorised to create (a role under ACLs: they are `defectstream kafka-init`'s).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

    from streams.kafka import clients

    k = settings.kafka
    admin = clients.admin(k, client_id=f"{settings.app_id}-admin", request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        want = {
            # the broker's default record limit (~1 MB) would refuse frames that max_image_bytes allows
            k.topics.frames: (k.partitions, {"max.message.bytes": str(settings.worker.max_image_bytes + FRAME_OVERHEAD_BYTES)}),
            part_timeouts_topic(settings): (k.partitions, {}),
            k.topics.defects: (k.partitions, {}),
            k.topics.parts: (k.partitions, {}),
            k.topics.deadletter: (1, {}),
            k.topics.alerts: (1, {}),
            k.topics.cameras: (1, {"cleanup.policy": "compact"}),
            # a sampled frame is the camera's image plus detections: the frames topic's record limit
            k.topics.review_frames: (k.partitions, {"max.message.bytes": str(settings.worker.max_image_bytes + FRAME_OVERHEAD_BYTES)}),
            k.topics.review_queue: (k.partitions, {}),
        }
        new = [
            NewTopic(name, num_partitions=p, replication_factor=k.replication_factor, topic_configs=cfg)
            for name, (p, cfg) in want.items() if name not in existing
        ]
        created = []
        for t in new:
            try:
                admin.create_topics([t], timeout_ms=int(timeout_s * 1000))
                created.append(t.name)
            except TopicAlreadyExistsError:
                pass
            except TopicAuthorizationFailedError:
                # With ACLs (streams.kafka.security) a role sees and may create only its own topics; the
                # others are the deployment's (`defectstream kafka-init` creates them all as the admin).
                log.info("not authorised to create topic %s; left to the deployment's kafka-init", t.name)
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        admin.close()


def kafka_security(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for the configured security protocol (clients take `KafkaSettings.client_kwargs()`)."""
    return settings.kafka.security_kwargs()
