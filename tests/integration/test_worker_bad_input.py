"""Bad input on the real broker (issue 12, findings 3 and 4): a rejected 2 MB frame becomes a bounded
dead letter (pointer + size + SHA-256) instead of a record the producer refuses, and the frames
behind it are processed; keyless and wrong-key frames are dead-lettered with their reason."""
from __future__ import annotations

import hashlib
import os
import time

from schemas.events import DeadLetter, FrameEvent, PartInspected
from streams.inspection.intake import expected_partition
from streams.sim.simulator import SimulationConfig, generate

from .kafka_read import read_records


def test_rejected_2mb_frames_are_dead_lettered_and_the_frames_behind_them_processed(needs_checkpoints,
                                                                                  stream_worker_factory):
    from kafka import KafkaProducer

    cfg = SimulationConfig(cameras=1, parts=2, frames_per_part=3, frame_shape=(128, 256), seed=7,
                           camera_prefix="big", start_time_ms=int(time.time() * 1000) - 60_000, progress=False)
    frames = [ev for ev, _gt in generate(cfg)]
    cam = frames[0].camera_id
    codec = FrameEvent.codec()
    worker = stream_worker_factory(DEFECTSTREAM_TRACKING__PART_TIMEOUT_S="300")
    s = worker.settings
    worker.start()
    home = expected_partition(cam.encode(), s.kafka.partitions)
    big_image = b"\x89PNG\r\n\x1a\n" + os.urandom(2 * 1024 * 1024)  # a corrupt 2 MB PNG
    big = FrameEvent(**{**frames[0].__dict__, "part_id": "junk", "image": big_image})
    big_value = codec.encode(big.to_avro())
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all", max_request_size=4 * 1024 * 1024)
    send = lambda ev, **kw: prod.send(s.kafka.topics.frames, value=codec.encode(ev.to_avro()), **kw).get(30)  # noqa: E731
    for ev in frames[:3]:
        send(ev, key=cam.encode())
    # on the camera's partition, between its two parts: a 2 MB frame under another camera's key ...
    prod.send(s.kafka.topics.frames, value=big_value, key=b"someone-else", partition=home).get(30)
    # ... and a keyless one
    prod.send(s.kafka.topics.frames, value=big_value, key=None, partition=home).get(30)
    for ev in frames[3:]:
        send(ev, key=cam.encode())
    prod.close()

    dead = read_records(s.kafka.bootstrap_servers, s.kafka.topics.deadletter, DeadLetter.codec(), want=2, timeout_s=90.0)
    parts = read_records(s.kafka.bootstrap_servers, s.kafka.topics.parts, PartInspected.codec(), want=2, timeout_s=90.0)
    assert worker.alive(), worker.log_tail()
    assert sorted(d["error_class"] for d in dead) == ["key_mismatch", "missing_key"], (dead, worker.log_tail())
    for d in dead:
        assert d["original"] == b"" and not d["original_kept"]
        assert d["original_size"] == len(big_value)
        assert d["original_sha256"] == hashlib.sha256(big_value).hexdigest()
        assert d["partition"] == home and d["topic"] == s.kafka.topics.frames and d["reason"]
    assert sorted((p["part_id"], p["frames"], p["closed_reason"]) for p in parts) == sorted(
        (ev.part_id, 3, "LAST_FRAME") for ev in frames if ev.last_frame), worker.log_tail()


def test_restart_longer_than_the_part_timeout_does_not_cut_parts_short(needs_checkpoints, stream_worker_factory):
    """Finding 1: the worker is down (SIGKILL) for longer than the part timeout while the rest of
    each part's frames arrive; after the restart every part closes on its last frame with all its
    frames, none as TIMEOUT, and no frame is dead-lettered as late."""
    from kafka import KafkaProducer

    timeout_s = 10
    cfg = SimulationConfig(cameras=6, parts=6, frames_per_part=6, frame_shape=(128, 256), seed=17,
                           camera_prefix="rs", start_time_ms=int(time.time() * 1000) - 60_000, progress=False)
    frames = [ev for ev, _gt in generate(cfg)]
    by_part: dict[str, list[FrameEvent]] = {}
    for ev in frames:
        by_part.setdefault(ev.part_id, []).append(ev)
    assert len(by_part) == 6 and all(len(v) == 6 for v in by_part.values())
    codec = FrameEvent.codec()
    worker = stream_worker_factory(DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(timeout_s))
    s = worker.settings
    worker.start()
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all", enable_idempotence=True)

    def send(evs):
        for ev in evs:
            prod.send(s.kafka.topics.frames, key=ev.camera_id.encode(), value=codec.encode(ev.to_avro())).get(30)

    send([ev for evs in by_part.values() for ev in evs[:3]])
    time.sleep(6)  # first halves processed, state saved, offsets committed (commit interval ~3 s)
    worker.stop(kill=True)
    send([ev for evs in by_part.values() for ev in evs[3:]])
    time.sleep(timeout_s + 4)  # down for longer than the part timeout, the second halves waiting
    worker.start()
    prod.close()
    parts = read_records(s.kafka.bootstrap_servers, s.kafka.topics.parts, PartInspected.codec(), want=6, timeout_s=90.0)
    time.sleep(3)  # a wrong TIMEOUT close would come out beside the right ones
    parts = read_records(s.kafka.bootstrap_servers, s.kafka.topics.parts, PartInspected.codec(), want=99, timeout_s=3)
    assert sorted((p["part_id"], p["frames"], p["closed_reason"]) for p in parts) == sorted(
        (pid, 6, "LAST_FRAME") for pid in by_part), worker.log_tail()
    dead = read_records(s.kafka.bootstrap_servers, s.kafka.topics.deadletter, DeadLetter.codec(), want=99, timeout_s=3)
    assert not [d for d in dead if d["error_class"] == "late_frame"], dead
