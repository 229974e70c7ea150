"""Simulator event generation, the Faust Avro codecs and the scoring rules (no Kafka, no model)."""
from __future__ import annotations

import pytest

from schemas.events import DefectEvent, FrameEvent
from streams.kafka.serializers import AvroEventCodec, register_avro_codecs
from streams.settings import Settings
from streams.sim.scoring import Reported, Score, score_defect_events, score_part
from streams.sim.simulator import GroundTruthPart, SimulationConfig, generate, read_ground_truth, simulate

T0 = 1_790_000_000_000


def small(**kw) -> SimulationConfig:
    base = dict(cameras=2, parts=4, frames_per_part=3, frame_shape=(64, 128), seed=3, start_time_ms=T0,
                progress=False, time_scale=0, parts_per_minute=60)
    base.update(kw)
    return SimulationConfig(**base)


def test_generate_interleaves_cameras_in_capture_order_with_ground_truth():
    out = list(generate(small()))
    assert len(out) == 12
    ts = [ev.capture_ts for ev, _ in out]
    assert ts == sorted(ts)
    gts = [gt for _, gt in out if gt is not None]
    assert len(gts) == 4 and {g.camera_id for g in gts} == {"cam-1", "cam-2"}
    for ev, gt in out:
        if gt is not None:
            assert ev.last_frame and ev.part_id == gt.part_id and gt.frame_seqs[-1] == ev.frame_seq
    per_cam = {}
    for ev, _ in out:
        per_cam.setdefault(ev.camera_id, []).append(ev.frame_seq)
    assert all(seqs == sorted(set(seqs)) for seqs in per_cam.values())  # strictly increasing per camera
    first = out[0][0]
    assert first.pixels_per_mm and first.conveyor_speed_mm_s and first.encoding == "PNG"
    assert [e.to_avro() for e, _ in generate(small())] == [e.to_avro() for e, _ in out]  # deterministic


def test_simulated_clock_and_duration_bound():
    out = list(generate(small(cameras=1, parts=None, duration_s=10, parts_per_minute=30)))
    assert len(out) == 5 * 3  # a part every 2 s of simulated time
    assert out[-1][0].capture_ts - T0 < 10_000


def test_simulate_writes_ground_truth_and_reports(tmp_path):
    sent = []
    rep = simulate(Settings(), small(ground_truth=tmp_path / "gt.jsonl", encoding="jpeg"),
                   send=lambda k, v: sent.append((k, v)))
    assert rep.parts == 4 and rep.frames == 12 == len(sent) and rep.cameras == ["cam-1", "cam-2"]
    gts = read_ground_truth(tmp_path / "gt.jsonl")
    assert len(gts) == 4 and sum(len(g.defects) for g in gts) == rep.defects
    ev = FrameEvent.from_avro(FrameEvent.codec().decode(sent[0][1]))
    assert ev.encoding == "JPEG" and sent[0][0] == ev.camera_id.encode()


def test_pre_encoded_frames_are_the_same_pictures_sent_on_the_wall_clock(tmp_path):
    import time

    plain, pre = [], []
    simulate(Settings(), small(time_scale=0, start_time_ms=1_000_000), send=lambda k, v: plain.append(v))
    sent_at: list[int] = []

    def send(k, v):
        sent_at.append(int(time.time() * 1000))
        pre.append(v)

    simulate(Settings(), small(time_scale=20.0, start_time_ms=1_000_000, pre_encode=True,
                               ground_truth=tmp_path / "gt.jsonl"), send=send)
    a = [FrameEvent.from_avro(FrameEvent.codec().decode(v)) for v in plain]
    b = [FrameEvent.from_avro(FrameEvent.codec().decode(v)) for v in pre]
    assert [e.image for e in a] == [e.image for e in b] and [e.part_id for e in a] == [e.part_id for e in b]
    # capture times moved onto the wall clock of the send, the simulated spacing kept (at 20x)
    assert all(abs(e.capture_ts - t) < 150 for e, t in zip(b, sent_at)), [e.capture_ts - t for e, t in zip(b, sent_at)]
    for x0, x1, y0, y1 in zip(a, a[1:], b, b[1:]):
        assert abs((y1.capture_ts - y0.capture_ts) - (x1.capture_ts - x0.capture_ts) / 20.0) <= 1
    gts = read_ground_truth(tmp_path / "gt.jsonl")
    by_part = {}
    for e in b:
        by_part.setdefault(e.part_id, []).append(e.capture_ts)
    assert {g.part_id: g.capture_ts for g in gts} == by_part


def test_faust_avro_codec_round_trip():
    register_avro_codecs()
    from faust.serializers import codecs

    ev = DefectEvent("id", "c", "l", "p", 0, "pit", 1.0, 2.0, 0.5, {"x0": 0, "y0": 0, "x1": 1, "y1": 1}, 3, 1, 2, 3,
                     T0, T0, "m", "production")
    codec = codecs.get_codec("avro-defect")
    assert isinstance(codec, AvroEventCodec)
    assert codec.loads(codec.dumps(ev)) == ev
    assert codec.loads(codec.dumps(ev.to_avro())) == ev


def gt_part(defects) -> GroundTruthPart:
    return GroundTruthPart("cam", "l", "p", 0, "f", 3, [10, 11, 12], [10, 11, 12], 100.0,
                           [{"defect_id": i, "defect_class": c, "boxes": b} for i, (c, b) in enumerate(defects)], {})


def test_score_part_matches_one_to_one_and_counts_false_alarms():
    gt = gt_part([("imprint_mild", {"0": [10, 10, 50, 50], "1": [0, 10, 20, 50]}), ("scratch", {"2": [100, 0, 104, 60]})])
    s = Score()
    score_part(gt, [
        Reported("p", 0, (12, 12, 48, 48), "imprint_severe"),  # matches the imprint, wrong class
        Reported("p", 0, (14, 14, 46, 46), "imprint_mild"),  # second report of the same defect: false alarm
        Reported("p", 2, (99, 20, 106, 30), "scratch"),  # low IoU, centre inside the thin box: a match
        Reported("p", 1, (200, 200, 220, 220), "pit"),
    ], s, per_frame=False)
    assert (s.matched_gt, s.false_alarms, s.reported) == (2, 2, 4)
    assert s.recall == 1.0 and s.imprint_total == 1 and s.class_correct + 1 == s.class_total
    assert s.false_alarms_per_100_parts == 200.0


def test_per_frame_scoring_counts_each_frame():
    gt = gt_part([("pit", {"0": [10, 10, 30, 30], "1": [0, 10, 20, 30]})])
    s = Score()
    score_part(gt, [Reported("p", 0, (10, 10, 30, 30), "pit"), Reported("p", 1, (0, 10, 20, 30), "pit")], s,
               per_frame=True)
    assert (s.matched_gt, s.false_alarms, s.class_total) == (1, 0, 2)


def test_score_defect_events_dedups_by_event_id():
    gt = gt_part([("pit", {"1": [10, 10, 30, 30]})])
    d = {"event_id": "e1", "part_id": "p", "best_frame_seq": 11, "bbox": {"x0": 10, "y0": 10, "x1": 30, "y1": 30},
         "defect_class": "pit"}
    s = score_defect_events([gt], [d, dict(d), {**d, "part_id": "unknown"}])
    assert (s.reported, s.matched_gt, s.false_alarms) == (1, 1, 0)
    assert s.summary()["defect_recall"] == pytest.approx(1.0)


def test_verdict_check_finds_missing_and_double_verdicts():
    from streams.sim.scoring import verdict_check

    gts = [gt_part([]), GroundTruthPart("cam", "l", "q", 0, "f", 3, [1], [1], 1.0, [], {})]
    out = verdict_check(gts, [{"part_id": "p", "event_id": "a"}, {"part_id": "p", "event_id": "a"},
                              {"part_id": "x", "event_id": "b"}])
    assert out["parts_with_verdict"] == 1 and out["missing"] == ["q"] and out["more_than_one_verdict"] == []
    out = verdict_check(gts, [{"part_id": "p", "event_id": "a"}, {"part_id": "p", "event_id": "b"}])
    assert out["more_than_one_verdict"] == ["p"]


def _offline_run():
    import numpy as np

    from models.core.types import BBox, Detection
    from streams.sim.scoring import OfflineRun

    gt = GroundTruthPart(camera_id="offline", line_id="offline", part_id="part-1", seed=1, family="f", frames=2,
                         frame_seqs=[0, 100], capture_ts=[0, 100], speed_px_per_frame=3.0,
                         defects=[{"defect_id": "d", "defect_class": "scratch", "boxes": {"0": [1, 2, 5, 6]}}],
                         nuisance_boxes={"1": [[0, 0, 2, 2]]})
    mask = np.zeros((4, 4), bool)
    mask[1:3, 0:2] = True
    det = Detection(BBox(1, 2, 5, 6), mask, "scratch", 0.9, 3.5, 7.0, 4, (0.9, 0.1))
    return OfflineRun(gts=[gt], detections=[[[det], []]], model_version="v-abc", inference_s=0.5, frames=2)


def test_offline_cache_round_trips_without_pickle(tmp_path):
    import numpy as np

    from streams.sim.scoring import load_offline_run, save_offline_run

    run, key = _offline_run(), (1, 1000, 6, (256, 512), 0.5, "ckpt")
    path = tmp_path / "cache.npz"
    save_offline_run(run, key, path)
    got = load_offline_run(path, key)
    assert got is not None and got.gts == run.gts and got.model_version == "v-abc" and got.frames == 2
    d0, e0 = got.detections[0][0][0], run.detections[0][0][0]
    assert d0._replace(mask=None) == e0._replace(mask=None) and np.array_equal(d0.mask, e0.mask)
    assert got.detections[0][1] == []
    assert load_offline_run(path, key[:-1] + ("other",)) is None  # another checkpoint: recompute


def test_offline_cache_never_unpickles(tmp_path):
    """A pickle planted as the cache file is refused as unreadable; its payload never runs."""
    import os
    import pickle

    from streams.sim.scoring import load_offline_run

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "cache.npz"
    path.write_bytes(pickle.dumps({"key": (1,), "run": Payload()}))
    assert load_offline_run(path, (1,)) is None
    assert not marker.exists()
