"""`defectstream smoke`: prove the local stack end to end without models.

Publishes synthetic Avro FrameEvents with kafka-python (acks=all), reads them back with
aiokafka, decodes them, writes one row per frame to ClickHouse and reads the rows back.
"""
from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from streams.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "smoke",
        help="round trip Avro frames through Kafka and rows through ClickHouse (stack check)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--frames", type=int, default=20, help="frames to publish (default 20)")
    p.add_argument("--topic", default=None, help="topic to use (default: a fresh smoke-<uuid> topic)")
    p.set_defaults(func=run)


def _frames(n: int, run: str) -> list[bytes]:
    import cv2
    import numpy as np

    from schemas.events import FrameEvent

    codec = FrameEvent.codec()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.normal(128, 15, size=(64, 128)).clip(0, 255).astype(np.uint8)
        ok, png = cv2.imencode(".png", img)
        assert ok
        ev = FrameEvent(camera_id="smoke-cam", line_id="smoke-line", part_id=f"{run}-{i // 4}", frame_seq=i,
                        frame_index=i % 4, last_frame=i % 4 == 3, capture_ts=int(time.time() * 1000),
                        encoding="PNG", width=128, height=64, channels=1, image=png.tobytes())
        out.append(codec.encode(ev.to_avro()))
    return out


async def _consume(settings: Settings, topic: str, n: int) -> list[dict]:
    from schemas.events import FrameEvent
    from streams.kafka import clients

    codec = FrameEvent.codec()
    consumer = clients.aio_consumer(settings.kafka, topic, auto_offset_reset="earliest", enable_auto_commit=False,
                                    group_id=None)
    await consumer.start()
    got: list[dict] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                got.extend(codec.decode(r.value) for r in records)
    finally:
        await consumer.stop()
    return got


def run(args: argparse.Namespace) -> int:
    from clickhouse_driver import Client

    from streams import preflight
    from streams.kafka import clients

    settings = Settings()
    preflight.check_kafka(settings.kafka)
    run_id = uuid.uuid4().hex[:8]
    topic = args.topic or f"smoke-{run_id}"
    t0 = time.monotonic()
    producer = clients.producer(settings.kafka, acks="all", enable_idempotence=True)
    for value in _frames(args.frames, run_id):
        producer.send(topic, key=b"smoke-cam", value=value)
    producer.flush()
    producer.close()
    print(f"kafka: published {args.frames} Avro FrameEvents to {topic} ({settings.kafka.bootstrap_servers})")

    frames = asyncio.run(_consume(settings, topic, args.frames))
    print(f"kafka: read back and decoded {len(frames)} frames with aiokafka")
    if len(frames) != args.frames:
        print(f"FAILED: expected {args.frames} frames")
        return 1

    ch = settings.clickhouse
    client = Client(host=ch.host, port=ch.port, user=ch.user, password=ch.password.get_secret_value())
    client.execute("CREATE DATABASE IF NOT EXISTS smoke")
    client.execute("CREATE TABLE IF NOT EXISTS smoke.frames (run String, camera_id String, part_id String, "
                   "frame_seq UInt64, bytes UInt32) ENGINE = MergeTree ORDER BY (run, frame_seq)")
    client.execute("INSERT INTO smoke.frames (run, camera_id, part_id, frame_seq, bytes) VALUES",
                   [(run_id, f["camera_id"], f["part_id"], f["frame_seq"], len(f["image"])) for f in frames])
    (count, parts), = client.execute("SELECT count(), uniqExact(part_id) FROM smoke.frames WHERE run = %(r)s", {"r": run_id})
    version, = client.execute("SELECT version()")[0]
    print(f"clickhouse {version}: wrote and read back {count} rows ({parts} parts) in smoke.frames")
    print(f"smoke OK in {time.monotonic() - t0:.1f}s")
    return 0 if count == args.frames else 1
