"""Simulator → Kafka → `defectstream worker` → defects/parts/deadletter, against ground truth.

One worker (subprocess, real Inspector checkpoint, CPU) runs on fresh topics for the module;
each test uses its own cameras. Frames are small (128×256) and parts few, to stay fast.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from schemas.events import DeadLetter, DefectEvent, FrameEvent, PartInspected
from streams.inspection.cameras import CameraConfig
from streams.sim.scoring import score_defect_events
from streams.sim.simulator import SimulationConfig, read_ground_truth, simulate

from .kafka_read import read_records

FRAME = (128, 256)
T0 = 1_790_000_000_000  # simulated clock start (2026-09-21, UTC)


pytestmark = pytest.mark.usefixtures("needs_checkpoints")


def sim(worker, tmp_path: Path, name: str, **kw) -> tuple[Path, Any]:
    gt = tmp_path / f"{name}.jsonl"
    cfg = SimulationConfig(frame_shape=FRAME, time_scale=0, progress=False, ground_truth=gt, frames_per_part=4,
                           defect_rate=0.8, parts_per_minute=60, **kw)
    return gt, simulate(worker.settings, cfg)


def parts_of(worker, cameras: set[str], n: int, timeout_s: float = 60.0) -> list[dict]:
    s = worker.settings
    rows = read_records(s.kafka.bootstrap_servers, s.kafka.topics.parts, PartInspected.codec(),
                        lambda rs: len({r["part_id"] for r in rs if r["camera_id"] in cameras}) >= n,
                        timeout_s=timeout_s)
    return [r for r in rows if r["camera_id"] in cameras]


def test_one_verdict_per_part_and_confirmed_defects(stream_worker, tmp_path):
    gt_path, rep = sim(stream_worker, tmp_path, "run1", cameras=2, parts=6, seed=11, camera_prefix="a",
                       start_time_ms=T0)
    assert rep.parts == 6 and rep.frames == 24
    gts = read_ground_truth(gt_path)
    parts = parts_of(stream_worker, {"a-1", "a-2"}, 6)
    assert sorted(p["part_id"] for p in parts) == sorted(g.part_id for g in gts), stream_worker.log_tail()
    assert len({p["event_id"] for p in parts}) == 6  # exactly one verdict per part
    for p in parts:
        assert p["closed_reason"] == "LAST_FRAME" and p["frames"] == 4 and p["shift_name"]
    s = stream_worker.settings
    want = sum(p["defects_total"] for p in parts)
    defects = [d for d in read_records(s.kafka.bootstrap_servers, s.kafka.topics.defects, DefectEvent.codec(),
                                       lambda rs: len([d for d in rs if d["camera_id"] in {"a-1", "a-2"}]) >= want)
               if d["camera_id"] in {"a-1", "a-2"}]
    assert len(defects) == want
    by_part = {p["part_id"]: p for p in parts}
    for d in defects:
        assert d["frames_seen"] >= 1 and d["model_version"] == by_part[d["part_id"]]["model_version"]
    score = score_defect_events(gts, defects)
    print("tracked score on the pipeline's output:", score.summary())
    if score.gt_defects >= 3:
        assert score.recall >= 0.5, score.summary()
    assert score.false_alarms <= len(gts), score.summary()


def test_camera_added_mid_run_and_its_config_applies_from_the_next_part(stream_worker, tmp_path):
    from kafka import KafkaProducer

    # a camera the worker has never seen: processed with no restart and no configuration
    _, rep = sim(stream_worker, tmp_path, "new-cam", cameras=1, parts=2, seed=21, camera_prefix="b",
                 first_camera=7, start_time_ms=T0)
    assert rep.cameras == ["b-7"]
    parts = parts_of(stream_worker, {"b-7"}, 2)
    assert len(parts) == 2 and {p["line_id"] for p in parts} == {"line-1"}
    # its entry on `cameras` applies from its next part
    s = stream_worker.settings
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all")
    prod.send(s.kafka.topics.cameras, key=b"b-7", value=CameraConfig(line_id="line-9", frames_per_part=4).to_json()).get(30)
    prod.close()
    time.sleep(3)  # the worker follows `cameras` with a 1 s poll
    sim(stream_worker, tmp_path, "new-cam-2", cameras=1, parts=2, seed=22, camera_prefix="b", first_camera=7,
        start_time_ms=T0 + 3_600_000)
    parts = parts_of(stream_worker, {"b-7"}, 4)
    assert len(parts) == 4
    later = sorted(parts, key=lambda p: p["first_frame_ts"])[2:]
    assert {p["line_id"] for p in later} == {"line-9"}, parts


def test_bad_messages_go_to_deadletter_and_the_worker_goes_on(stream_worker, tmp_path):
    from kafka import KafkaProducer

    s = stream_worker.settings
    frame = FrameEvent(camera_id="c-1", line_id="line-1", part_id="c-1-p", frame_seq=5, capture_ts=T0,
                       encoding="PNG", width=16, height=16, channels=1, image=b"\x89PNG not really", last_frame=True)
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all")
    prod.send(s.kafka.topics.frames, key=b"c-1", value=b"\x00garbage that is not avro").get(30)
    prod.send(s.kafka.topics.frames, key=b"c-1", value=FrameEvent.codec().encode(frame.to_avro())).get(30)
    prod.close()
    # the same camera's next good parts still come out; replaying them lands as duplicates
    _, rep = sim(stream_worker, tmp_path, "after-bad", cameras=1, parts=1, seed=31, camera_prefix="c",
                 start_time_ms=T0)
    assert len(parts_of(stream_worker, {"c-1"}, 1)) == 1
    sim(stream_worker, tmp_path, "replay", cameras=1, parts=1, seed=31, camera_prefix="c", start_time_ms=T0)
    dls = read_records(s.kafka.bootstrap_servers, s.kafka.topics.deadletter, DeadLetter.codec(),
                       lambda rs: sum(r["error_class"] == "duplicate_frame" for r in rs) >= 4)
    classes = [d["error_class"] for d in dls if d["camera_id"] in (None, "c-1")]
    assert "decode_error" in classes and "bad_image" in classes, dls
    assert classes.count("duplicate_frame") == 4
    garbage = next(d for d in dls if d["error_class"] == "decode_error")
    assert garbage["original"] == b"\x00garbage that is not avro" and garbage["key"] == b"c-1"
    assert len(parts_of(stream_worker, {"c-1"}, 1, timeout_s=3)) == 1  # the replay closed nothing twice
    assert stream_worker.alive()


def test_part_without_last_frame_closes_on_inactivity(stream_worker, tmp_path):
    from kafka import KafkaProducer

    from streams.sim.simulator import generate

    cfg = SimulationConfig(cameras=1, parts=1, frames_per_part=3, frame_shape=FRAME, seed=51, camera_prefix="t",
                           start_time_ms=T0, progress=False)
    s = stream_worker.settings
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap_list, acks="all")
    for ev, _gt in generate(cfg):
        ev.last_frame = False  # the camera never says the part is done
        prod.send(s.kafka.topics.frames, key=ev.camera_id.encode(), value=FrameEvent.codec().encode(ev.to_avro())).get(30)
    prod.close()
    [part] = parts_of(stream_worker, {"t-1"}, 1, timeout_s=30)  # part_timeout_s is 4 s in these tests
    assert part["closed_reason"] == "TIMEOUT" and part["frames"] == 3
