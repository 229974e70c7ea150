"""A worker killed in the middle of a part: the restarted worker continues the open part from the
tracking table's changelog (and re-delivered frames are not lost)."""
from __future__ import annotations

import time

from schemas.events import FrameEvent, PartInspected
from streams.sim.simulator import SimulationConfig, generate

from .kafka_read import read_records

T0 = 1_790_000_000_000


def test_open_part_survives_a_worker_crash(needs_checkpoints, stream_worker_factory):
    from kafka import KafkaProducer

    cfg = SimulationConfig(cameras=1, parts=1, frames_per_part=4, frame_shape=(128, 256), seed=41,
                           camera_prefix="r", start_time_ms=T0, progress=False)
    frames = [ev for ev, _gt in generate(cfg)]
    codec = FrameEvent.codec()
    worker = stream_worker_factory(DEFECTSTREAM_TRACKING__PART_TIMEOUT_S="300")
    s = worker.settings
    worker.start()
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all", enable_idempotence=True)
    for ev in frames[:2]:
        prod.send(s.kafka.topics.frames, key=ev.camera_id.encode(), value=codec.encode(ev.to_avro())).get(30)
    time.sleep(8)  # processed, state saved, offsets committed (commit interval ~3 s)
    worker.stop(kill=True)
    worker.start()
    for ev in frames[2:]:
        prod.send(s.kafka.topics.frames, key=ev.camera_id.encode(), value=codec.encode(ev.to_avro())).get(30)
    prod.close()
    parts = read_records(s.kafka.bootstrap_servers, s.kafka.topics.parts, PartInspected.codec(), want=1)
    assert len(parts) == 1, worker.log_tail()
    p = parts[0]
    assert p["part_id"] == frames[0].part_id and p["closed_reason"] == "LAST_FRAME"
    assert p["frames"] == 4, "the restarted worker lost the open part's first frames"
    assert p["first_frame_ts"] == frames[0].capture_ts
