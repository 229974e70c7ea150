"""Nothing is lost: a sampled frame stored by the sink still exports after its topics are gone.

The frame travels as the worker sends it (a ReviewFrame on `review-frames`, its candidate on
`review-queue`), the real sink stores it in ClickHouse, then every topic that held it — the
original `frames` topic included — is deleted (what retention does, only sooner). A reviewer's label
and `export_dataset` still give back the camera's pixels bit for bit.
"""
from __future__ import annotations

import uuid

import cv2
import numpy as np

from models.data.datasets import read_plain
from schemas.events import FrameEvent
from sinks.migrations import migrate
from sinks.runner import import_kafka
from sinks.sql import DriverExecutor
from streams.commands.sink import run_sink
from streams.review import queries as q
from streams.review.export import export_dataset
from streams.review.sampler import review_frame
from streams.review.testing import make_review, tiny_png
from streams.settings import ClickHouseSettings, KafkaSettings, Settings, SinkSettings, TopicNames

kafka = import_kafka()
T0 = 1_763_700_000_000


def test_a_sampled_frame_exports_after_its_topics_are_deleted(stack, kafka_bootstrap, kafka_admin, fresh_topic,
                                                              fresh_database, tmp_path):
    names = TopicNames(frames=fresh_topic(1), defects=fresh_topic(1), parts=fresh_topic(1), alerts=fresh_topic(1),
                       deadletter=fresh_topic(1), review_frames=fresh_topic(1), review_queue=fresh_topic(1))
    cfg = ClickHouseSettings(host=stack.host, port=stack.clickhouse_port, database=fresh_database, user="writer",
                             password="writer", connect_timeout_s=1.0)
    ex = DriverExecutor.connect(ClickHouseSettings(host=stack.host, port=stack.clickhouse_port, database=fresh_database))
    migrate(ex)
    pixels = tiny_png(160, 64, seed=7, boxes=[(40, 20, 70, 44)])
    original = FrameEvent(camera_id="cam-1", line_id="line-1", part_id="p-1", frame_seq=12, capture_ts=T0,
                          encoding="PNG", width=160, height=64, channels=1, image=pixels, frame_index=3)
    _f, cand = make_review("cam-1", "p-1", 12, T0, width=160, height=64, detections=(("crack", 0.5, (40, 20, 70, 44)),))
    from models.core.types import BBox, Detection

    det = Detection(BBox(40, 20, 70, 44), np.ones((24, 30), bool), "crack", 0.5, 3.0, 4.0, 720)
    frame = review_frame(original, [det], "m1", "production", T0 + 5)
    assert frame.frame_id == cand.frame_id
    producer = kafka.KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        producer.send(names.frames, key=b"cam-1", value=original.codec().encode(original.to_avro()))
        producer.send(names.review_frames, key=b"cam-1", value=frame.codec().encode(frame.to_avro()))
        producer.send(names.review_queue, key=b"cam-1", value=cand.codec().encode(cand.to_avro()))
        producer.flush()
    finally:
        producer.close()
    settings = Settings(kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topics=names), clickhouse=cfg,
                        sink=SinkSettings(group_id=f"test-sink-{uuid.uuid4().hex[:8]}", flush_interval_s=0.2))
    stats = run_sink(settings, idle_s=2.0, max_seconds=60)
    assert stats.consumed == 2
    # the topics go away (retention, or an operator): the durable copy is all there is now
    kafka_admin.delete_topics([names.frames, names.review_frames, names.review_queue], timeout_ms=10_000)
    assert not {names.frames, names.review_frames, names.review_queue} & set(kafka_admin.list_topics())

    [queued] = q.fetch_queue(ex)
    assert queued.candidate_id == cand.candidate_id
    info = q.fetch_frame(ex, queued.frame_id)
    q.insert_label(ex, q.new_label(info, queued.candidate_id, "confirm", "crack", queued.box, "alice", T0 + 60_000))
    manifest = export_dataset(ex, tmp_path / "set", T0 - 1, T0 + 1)
    assert manifest["frames_total"] == 1 and manifest["skipped"] == []
    [sample] = list(read_plain(tmp_path / "set"))
    assert np.array_equal(sample.image, cv2.imdecode(np.frombuffer(pixels, np.uint8), cv2.IMREAD_GRAYSCALE))
    assert [(b.x0, b.y0, b.x1, b.y1) for b, _c in sample.boxes] == [(40, 20, 70, 44)]
    ex.close()
