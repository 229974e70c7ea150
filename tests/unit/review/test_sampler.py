"""Review sampling (streams.review.sampler): strategies, caps per camera per hour, the SPC boost, and the
pipeline emitting the sampled frames and candidates with the batch (fakes: no Kafka, no model)."""
from __future__ import annotations

import asyncio
import random

import numpy as np

from models.core.types import BBox, Detection
from schemas.events import Alert, FrameEvent, PartInspected
from streams.inspection.cameras import CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.pipeline import InspectPipeline
from streams.review.sampler import HOUR_MS, AlertBoard, RateCap, ReviewSampler
from streams.settings import ModelSettings, PlantSettings, ReviewSettings, Settings
from streams.tracking.tracker import TrackSummary

from ..fakes import FakeInspector, ListEmitter, MemoryStore
from ..streams.test_inspect_pipeline import event, frame_value

T0 = 1_700_000_000_000


def det(conf: float, box=(10, 10, 20, 20), cls="scratch") -> Detection:
    b = BBox(*box)
    return Detection(b, np.ones((b.height, b.width), bool), cls, conf, 3.0, 4.0, b.area)


def frame(seq: int, cam="cam-1", part="p1") -> FrameEvent:
    return FrameEvent(camera_id=cam, line_id="l1", part_id=part, frame_seq=seq, capture_ts=T0 + seq, encoding="PNG",
                      width=64, height=64, channels=1, image=b"png-bytes", frame_index=seq)


def verdict(part="p1", cam="cam-1", verdict="PASS", defects=0) -> PartInspected:
    return PartInspected(event_id="v", camera_id=cam, line_id="l1", part_id=part, verdict=verdict,
                         defects_total=defects, frames=3, first_frame_ts=T0, last_frame_ts=T0, closed_reason="LAST_FRAME",
                         model_version="m1", run_id="production", shift_name="A", shift_start=0)


def track(confirmed: bool, hits: int, votes=None, box=(10, 10, 20, 20)) -> TrackSummary:
    return TrackSummary(1, confirmed, "scratch", 3.0, 4.0, 0.6, votes or {"scratch": 1.0}, hits, 3, 0, box, 100, {})


def sampler(**kw) -> ReviewSampler:
    base = dict(random_good_probability=0.0, alert_probability=0.0)
    base.update(kw)
    return ReviewSampler(ReviewSettings(**base), rng=random.Random(1))


def test_rate_cap_is_a_sliding_hour_per_key():
    cap = RateCap()
    assert [cap.allow(("c", "u"), 2, T0 + i) for i in range(3)] == [True, True, False]
    assert cap.allow(("d", "u"), 2, T0)  # another camera has its own cap
    assert cap.allow(("c", "u"), 2, T0 + HOUR_MS)  # the first admission left the window
    assert not cap.allow(("c", "u"), 0, T0)  # 0 = strategy off


def test_uncertain_detections_are_sampled_up_to_the_cap_and_confident_ones_never():
    s = sampler(uncertain_per_hour=3, uncertain_center=0.5, uncertain_band=0.1)
    out = [x for i in range(10) for x in s.on_frame(frame(i), [det(0.55)], "m1", T0 + i)]
    assert [x.reason for x in out] == ["uncertain"] * 3
    assert out[0].score == 0.5 and out[0].defect_class == "scratch" and out[0].box == (10, 10, 20, 20)
    assert s.on_frame(frame(20, cam="cam-2"), [det(0.95), det(0.1)], "m1", T0) == []


def test_dropped_and_flipped_tracks_are_sampled_at_close_on_the_frame_showing_them():
    s = sampler()
    s.on_frame(frame(0), [], "m1", T0)
    s.on_frame(frame(1), [det(0.9, box=(30, 30, 40, 40))], "m1", T0)
    s.on_frame(frame(2), [det(0.9, box=(11, 10, 21, 20))], "m1", T0)
    out = s.on_close(verdict(), [track(False, 2), track(True, 3, {"scratch": 0.6, "crack": 0.4}, box=(30, 30, 40, 40)),
                                 track(False, 1)], T0)
    assert [(x.reason, x.frame.frame_seq) for x in out] == [("track_dropped", 2), ("class_flipped", 1)]
    assert "crack 0.40" in out[1].note
    assert s.on_close(verdict(), [track(False, 2)], T0) == []  # the part's buffer is gone after its close


def test_random_good_parts_only_when_judged_good():
    s = sampler(random_good_probability=1.0)
    for p in ("good", "bad"):
        s.on_frame(frame(0, part=p), [], "m1", T0)
    assert [x.reason for x in s.on_close(verdict("good"), [], T0)] == ["random_good"]
    assert s.on_close(verdict("bad", verdict="FAIL", defects=1), [], T0) == []


def alert(kind: str, camera="cam-1", at=T0) -> Alert:
    return Alert(alert_id=kind, kind=kind, line_id="l1", metric="p", rate=0.2, center=0.05, limit=0.1, rule="WE1",
                 inspected=100, defective=20, window_start=at, window_end=at, created_at=at, message="", camera_id=camera)


def test_an_open_spc_alert_raises_the_caps_and_samples_extra_frames_until_recovery():
    s = sampler(uncertain_per_hour=1, alert_multiplier=3.0, alert_probability=1.0, alert_per_hour=2)
    s.alerts.apply(alert("SPIKE"))
    out = [x.reason for i in range(6) for x in s.on_frame(frame(i), [det(0.5)], "m1", T0 + i)]
    assert out.count("uncertain") == 3 and out.count("spc_alert") == 2
    s.alerts.apply(alert("RECOVERY"))
    assert not s.alerts.is_open("cam-1", "l1", T0)
    board = AlertBoard(max_open_s=60)
    board.apply(alert("SPIKE", camera=None))  # the whole line
    assert board.is_open("cam-9", "l1", T0) and not board.is_open("cam-9", "l1", T0 + 61_000)


def test_records_have_one_frame_per_frame_and_deterministic_ids():
    s = sampler(random_good_probability=1.0, uncertain_per_hour=5)
    samples = s.on_frame(frame(0), [det(0.5)], "m1", T0) + s.on_close(verdict(), [], T0)
    frames, cands = s.records(samples, T0)
    assert len(frames) == 1 and {c.reason for c in cands} == {"uncertain", "random_good"}
    assert {c.frame_id for c in cands} == {frames[0].frame_id} and frames[0].det_class == ["scratch"]
    again = ReviewSampler(ReviewSettings(), rng=random.Random(1)).records(samples, T0 + 5)
    assert [c.candidate_id for c in again[1]] == [c.candidate_id for c in cands]


def test_the_pipeline_emits_sampled_frames_and_candidates_with_the_batch():
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    rs = ReviewSettings(uncertain_center=0.9, uncertain_band=0.05, uncertain_per_hour=1, random_good_probability=0.0)
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=FakeInspector())
    pipe = InspectPipeline(settings, runner, CameraRegistry(), MemoryStore(), ListEmitter(),
                           sampler=ReviewSampler(rs, rng=random.Random(0)))
    evs = [event(frame_value(seq=i, idx=i, last=i == 2, x=100 - 10 * i), offset=i) for i in range(3)]
    asyncio.run(pipe.process(evs))
    by_kind = {}
    for r in pipe.emitter.sent:
        by_kind.setdefault(r.kind, []).append(r.event)
    assert len(by_kind["review_frames"]) == 1 and len(by_kind["review_queue"]) == 1  # capped at 1 per hour
    f, c = by_kind["review_frames"][0], by_kind["review_queue"][0]
    assert c.frame_id == f.frame_id and c.reason == "uncertain" and f.image[:4] == b"\x89PNG"
    assert by_kind["parts"][0].verdict in ("PASS", "FAIL")


def test_a_replay_queues_a_frame_of_each_part_whose_verdict_differs_from_production_up_to_its_limit():
    from streams.review.sampler import DisagreementSampler

    baseline = {("cam-1", "p1"): "PASS", ("cam-1", "p2"): "FAIL", ("cam-1", "p3"): "PASS", ("cam-1", "p4"): "FAIL"}
    s = DisagreementSampler(baseline, run_id="cand", limit=2)
    got = []
    for part, v, dets in (("p1", "FAIL", [det(0.9, (30, 30, 40, 40))]),  # caught what production passed
                          ("p2", "FAIL", [det(0.8)]),  # agrees: nothing
                          ("p3", "PASS", []),  # agrees
                          ("p5", "FAIL", [det(0.9)]),  # production never saw it: nothing
                          ("p4", "PASS", [])):  # missed what production failed
        for i in range(3):
            assert s.on_frame(frame(i, part=part), dets if i == 2 else [], "m2", T0) == []  # nothing at frame time
        tracks = [track(True, 2, box=(30, 30, 40, 40))] if part == "p1" else []
        got += s.on_close(verdict(part, verdict=v), tracks, T0)
    assert [(x.frame.part_id, x.reason, x.note) for x in got] == [
        ("p1", "disagreement", "production PASS, cand FAIL"), ("p4", "disagreement", "production FAIL, cand PASS")]
    assert got[0].frame.frame_seq == 2 and got[0].box == (30, 30, 40, 40)  # the frame of the confirmed track
    assert got[1].frame.frame_seq == 1 and got[1].defect_class == ""  # no track: the middle frame
    frames, cands = s.records(got, T0)
    assert {c.run_id for c in cands} == {"cand"} and len(frames) == 2
    # the limit: a third disagreement is not queued
    for i in range(3):
        s.on_frame(frame(i, part="p3"), [], "m2", T0)
    assert s.on_close(verdict("p3", verdict="FAIL"), [], T0) == []
