"""Unit tests of the pure per-part tracker (streams.tracking.tracker)."""
from __future__ import annotations

import json

import pytest

from streams.settings import TrackingSettings
from streams.tracking.tracker import CameraState, PartState, PartTracker, estimate_shift, iou, track_part_offline
from streams.tracking.types import FrameMeta, PartPolicy

W, H = 512, 256
SPEED = 150  # px per frame, the part moves towards -x
FRAME_MS = 100


def meta(i: int, part: str = "p1", *, seq: int | None = None, last: bool = False, speed: bool = True, cam: str = "cam-1",
         ts0: int = 1_700_000_000_000) -> FrameMeta:
    return FrameMeta(cam, "line-1", part, seq if seq is not None else i, ts0 + i * FRAME_MS, W, H, i, last,
                     SPEED * 1000 / FRAME_MS if speed else None)


def moving(det, x_part: int, i: int, y: int = 100, size: int = 40, **kw):
    """A defect fixed at part x-coordinate `x_part`, as seen on frame i (None when out of view)."""
    x0 = x_part - i * SPEED
    if x0 + size / 2 < 0 or x0 + size / 2 > W:
        return None
    return det(max(0, x0), y, min(W, x0 + size), y + size, **kw)


def run_part(tracker, frames):
    metas = [m for m, _ in frames]
    dets = [[d for d in ds if d is not None] for _, ds in frames]
    return track_part_offline(tracker, metas, dets)


def test_iou_basics():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_association_follows_motion_from_conveyor_speed(det, tracking_settings):
    tr = PartTracker(tracking_settings)
    frames = [(meta(i), [moving(det, 450, i), moving(det, 300, i, y=180)]) for i in range(4)]
    _, summaries = run_part(tr, frames)
    # two defects, each one track over the frames it was in view (no track per frame)
    assert len(summaries) == 2
    assert sorted(s.hits for s in summaries) == [3, 4]
    assert all(s.confirmed for s in summaries)


def test_association_estimates_motion_without_speed(det, tracking_settings):
    tr = PartTracker(tracking_settings)
    frames = [(meta(i, speed=False), [moving(det, 450, i), moving(det, 330, i, y=170)]) for i in range(4)]
    part, summaries = run_part(tr, frames)
    assert len(summaries) == 2, [s.boxes for s in summaries]
    assert part.last_shift == pytest.approx((-SPEED, 0.0), abs=2)


def test_estimate_shift_votes_for_the_common_displacement():
    prev = [(100, 10, 140, 50), (300, 100, 340, 140), (450, 200, 470, 220)]
    cur = [(b[0] - 150, b[1], b[2] - 150, b[3]) for b in prev] + [(260, 100, 290, 130)]  # + an unrelated box
    assert estimate_shift(prev, cur, "-x") == pytest.approx((-150.0, 0.0))
    assert estimate_shift([], cur, "-x") is None


def test_k_of_n_confirmation(det):
    # defect in view on frames 0..2 (3 opportunities), detector misses frame 1
    def frames():
        out = []
        for i in range(4):
            d = moving(det, 320, i)
            out.append((meta(i), [d] if i in (0, 2) else []))
        return out

    strict = PartTracker(TrackingSettings(min_hits=2, min_hit_ratio=0.75))
    lenient = PartTracker(TrackingSettings(min_hits=2, min_hit_ratio=0.6))
    [s] = run_part(strict, frames())[1]
    assert (s.hits, s.opportunities, s.confirmed) == (2, 3, False)
    [s] = run_part(lenient, frames())[1]
    assert s.confirmed


@pytest.mark.parametrize("on_frames", [(1,), (1, 2)])
def test_flicker_is_never_a_defect(det, tracking_settings, on_frames):
    # a glint fixed on the part, in view on frames 0..3, lit only on one or two of them
    tr = PartTracker(tracking_settings)
    frames = [(meta(i), [moving(det, 480, i, size=10)] if i in on_frames else []) for i in range(5)]
    [s] = run_part(tr, frames)[1]
    assert not s.confirmed


def test_defect_entering_on_the_last_frame_needs_one_hit(det, tracking_settings):
    tr = PartTracker(tracking_settings)
    frames = [(meta(i), [moving(det, 3 * SPEED + 470, i)] if i == 3 else []) for i in range(4)]
    [s] = run_part(tr, frames)[1]
    assert (s.hits, s.opportunities, s.confirmed) == (1, 1, True)


def test_vote_fixes_mild_severe_flips(det, tracking_settings):
    tr = PartTracker(tracking_settings)
    classes = ["imprint_severe", "imprint_mild", "imprint_severe", "imprint_severe"]
    frames = [(meta(i), [moving(det, 500, i, cls=classes[i], sev=7.0 if classes[i] == "imprint_severe" else 3.0)])
              for i in range(4)]
    [s] = run_part(tr, frames)[1]
    assert s.defect_class == "imprint_severe"
    assert s.severity == pytest.approx(7.0)  # median of per-frame maxima: one low frame does not move it
    assert s.severity_max == 7.0
    assert 0.5 < s.confidence < 1.0
    assert set(s.class_votes) == {"imprint_mild", "imprint_severe"}


def test_vote_weights_by_confidence_times_severity(det, tracking_settings):
    tr = PartTracker(tracking_settings)
    frames = [
        (meta(0), [moving(det, 500, 0, cls="imprint_mild", conf=0.9, sev=3.0)]),
        (meta(1), [moving(det, 500, 1, cls="imprint_mild", conf=0.9, sev=3.0)]),
        (meta(2), [moving(det, 500, 2, cls="imprint_severe", conf=0.95, sev=9.0)]),
    ]
    [s] = run_part(tr, frames)[1]
    assert s.defect_class == "imprint_severe"  # 0.95*9 > 2*0.9*3


def _feed(cam, tr, plant, m, dets, **kw):
    assert cam.admit(m) is None
    return cam.observe(tr, m, dets, model_version="m1", run_id="production", plant=plant, **kw)


def test_part_closes_on_next_part_and_last_frame(det, tracking_settings, plant):
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    seq = 0
    outs = []
    for i in range(3):
        outs += _feed(cam, tr, plant, meta(i, "A", seq=seq), [moving(det, 400, i)])
        seq += 1
    assert outs == [] and cam.part.part_id == "A"
    outs = _feed(cam, tr, plant, meta(0, "B", seq=seq), [])
    seq += 1
    [a] = outs
    assert a.part.part_id == "A" and a.part.closed_reason == "NEXT_PART" and a.part.frames == 3
    assert len(a.defects) == 1 and a.part.verdict == "PASS" and a.part.defect_counts == {"scratch": 1}
    outs = _feed(cam, tr, plant, meta(1, "B", seq=seq, last=True), [])
    [b] = outs
    assert b.part.part_id == "B" and b.part.closed_reason == "LAST_FRAME" and b.defects == []
    assert cam.part is None


def test_part_closes_on_timeout_only_when_still_idle(det, tracking_settings, plant):
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    _feed(cam, tr, plant, meta(0, "A", seq=10), [], now_ms=1_000)
    assert cam.idle_part(now_ms=5_000, timeout_s=30) is None
    assert cam.idle_part(now_ms=31_000, timeout_s=30) == "A"
    # stale timer view (another frame came in since): nothing closes
    assert cam.close_if_idle(tr, "A", 9, run_id="production", plant=plant) is None
    out = cam.close_if_idle(tr, "A", 10, run_id="production", plant=plant)
    assert out.part.closed_reason == "TIMEOUT" and out.part.frames == 1
    assert cam.part is None
    assert cam.close_if_idle(tr, "A", 10, run_id="production", plant=plant) is None


def test_frames_per_part_hint_shortens_the_timeout(tracking_settings, plant):
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    for i in range(2):
        _feed(cam, tr, plant, meta(i, "A", seq=i), [], now_ms=1_000, policy=PartPolicy(frames_per_part=2))
    assert cam.idle_part(now_ms=3_500, timeout_s=30) == "A"


def test_sequence_guard(tracking_settings, plant):
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    _feed(cam, tr, plant, meta(0, "A", seq=5, last=True), [])
    assert cam.admit(meta(0, "A", seq=5)).error_class == "duplicate_frame"
    assert cam.admit(meta(0, "B", seq=3)).error_class == "out_of_order_frame"
    assert cam.admit(meta(1, "A", seq=6)).error_class == "late_frame"
    assert cam.admit(meta(0, "B", seq=7)) is None


def test_verdict_rule_and_deterministic_ids(det, plant):
    tr = PartTracker(TrackingSettings(fail_classes=["crack"], fail_severity=8.0))
    cam = CameraState("cam-1")
    _feed(cam, tr, plant, meta(0, "A", seq=0), [moving(det, 200, 0, cls="scratch", sev=4.0)])
    [out] = _feed(cam, tr, plant, meta(1, "A", seq=1, last=True), [moving(det, 200, 1, cls="scratch", sev=4.0)])
    assert out.part.verdict == "PASS"
    ids = (out.part.event_id, out.defects[0].event_id)
    cam2 = CameraState("cam-1")
    _feed(cam2, tr, plant, meta(0, "A", seq=0), [moving(det, 200, 0, cls="crack", sev=4.0)])
    [out2] = _feed(cam2, tr, plant, meta(1, "A", seq=1, last=True), [moving(det, 200, 1, cls="crack", sev=4.0)])
    assert out2.part.verdict == "FAIL"
    assert (out2.part.event_id, out2.defects[0].event_id) == ids  # same camera/part/track/model/run
    assert out.part.shift_name in {"early", "late", "night"}
    sev = PartTracker(TrackingSettings(fail_classes=[], fail_severity=3.0))
    cam3 = CameraState("cam-1")
    _feed(cam3, sev, plant, meta(0, "A", seq=0), [moving(det, 200, 0, sev=4.0)])
    [out3] = _feed(cam3, sev, plant, meta(1, "A", seq=1, last=True), [moving(det, 200, 1, sev=4.0)])
    assert out3.part.verdict == "FAIL"


def test_roi_and_confidence_policy(det, tracking_settings, plant):
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    pol = PartPolicy(roi=(0, 0, 512, 128), min_confidence=0.5, line_id="line-9")
    outs = []
    for i in range(3):
        dets = [moving(det, 400, i, y=20), moving(det, 400, i, y=200), moving(det, 250, i, y=60, conf=0.2)]
        outs += _feed(cam, tr, plant, meta(i, "A", seq=i, last=i == 2), [d for d in dets if d], policy=pol)
    [out] = outs
    assert out.part.line_id == "line-9"
    assert [d.bbox["y0"] for d in out.defects] == [20]


def test_state_round_trips_through_json_and_tracking_continues(det, tracking_settings, plant):
    tr = PartTracker(tracking_settings)
    a, b = CameraState("cam-1"), None
    for i in range(2):
        _feed(a, tr, plant, meta(i, "A", seq=i), [moving(det, 450, i), moving(det, 300, i, y=170)],
              policy=PartPolicy(roi=(0, 0, 512, 256)))
    blob = json.dumps(a.to_dict())
    assert len(blob) < 4000
    b = CameraState.from_dict(json.loads(blob))
    assert b.to_dict() == a.to_dict()
    assert isinstance(b.part, PartState)
    outs = []
    for st in (a, b):
        outs.append(_feed(st, tr, plant, meta(2, "A", seq=2, last=True), [moving(det, 450, 2), moving(det, 300, 2, y=170)]))
    assert outs[0] == outs[1]
    assert len(outs[0][0].defects) == 2


def test_unknown_first_step_is_filled_from_the_estimated_motion(det):
    # no conveyor speed and nothing on frame 0: the 0->1 shift is unknown until later frames show it
    tr = PartTracker(TrackingSettings(min_hits=2, min_hit_ratio=0.8))
    frames = [(meta(i, speed=False), [moving(det, 600, i)] if i else []) for i in range(4)]
    part, [s] = run_part(tr, frames)
    assert part.steps[0] is None and part.pos[1] == pytest.approx((-SPEED, 0.0))
    assert (s.hits, s.opportunities, s.confirmed) == (3, 3, True)  # frame 0 did not see it: no miss


def test_short_tracks_need_a_confident_detector(det):
    # seen once, on the only frame it was in view (leaving the view after frame 0)
    def frames(conf):
        return [(meta(i), [moving(det, 20, i, conf=conf)] if i == 0 else []) for i in range(3)]

    tr = PartTracker(TrackingSettings(min_hits=2, short_track_min_confidence=0.8))
    [s] = run_part(tr, frames(0.95))[1]
    assert (s.hits, s.opportunities, s.confirmed) == (1, 1, True)
    [s] = run_part(tr, frames(0.6))[1]
    assert not s.confirmed


def test_merge_adjacent_joins_split_lobes_only(det):
    from streams.tracking.tracker import merge_adjacent

    lit = det(100, 100, 130, 120, cls="imprint_mild", conf=0.9, sev=3.0)
    shade = det(125, 118, 150, 140, cls="imprint_severe", conf=0.6, sev=4.0)  # overlaps the lit lobe
    near = det(156, 100, 170, 110)  # 6 px away
    far = det(300, 100, 320, 120)
    [m] = merge_adjacent([lit, shade], gap_px=4)
    assert tuple(m.bbox) == (100, 100, 150, 140) and m.mask.shape == (40, 50) and m.area_px == m.mask.sum() == 600 + 550 - 10
    assert m.defect_class == "imprint_mild" and m.severity_max == 4.0  # class of the stronger lobe (0.9*3 > 0.6*4)
    assert len(merge_adjacent([lit, shade, near, far], gap_px=4)) == 3
    assert len(merge_adjacent([lit, shade, near, far], gap_px=8)) == 2
    assert len(merge_adjacent([lit, shade], gap_px=-1)) == 2


def test_split_detections_make_one_track(det, tracking_settings):
    tr = PartTracker(tracking_settings)
    frames = [(meta(i), [moving(det, 450, i, size=30), moving(det, 478, i, y=110, size=20)]) for i in range(3)]
    _, summaries = run_part(tr, frames)
    assert len(summaries) == 1 and summaries[0].hits == 3


def test_partly_visible_frames_are_not_opportunities(det):
    # a 60 px defect half out of the view on frame 0 (centre inside) and missed there
    tr = PartTracker(TrackingSettings(min_hits=2, min_hit_ratio=0.75, min_visible_fraction=0.9))
    frames = [(meta(i), [moving(det, 480, i, size=60)] if i else []) for i in range(4)]
    [s] = run_part(tr, frames)[1]
    assert (s.hits, s.opportunities, s.confirmed) == (3, 3, True)


def test_calendar_gap_does_not_block_the_verdict(tracking_settings):
    import datetime as dt

    from streams.settings import PlantSettings, Shift

    plant = PlantSettings(timezone="UTC", shifts=[Shift(name="day", start=dt.time(6), end=dt.time(7))])
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    m = meta(0, "A", seq=0, last=True, ts0=1_700_000_000_000)  # 22:13 UTC, no shift
    assert cam.admit(m) is None
    [out] = cam.observe(tr, m, [], model_version="m", run_id="r", plant=plant)
    assert out.part.shift_name == "unscheduled" and out.part.shift_start == m.capture_ts


SHIFT_CHANGE_MS = 1_699_970_400_000  # 2023-11-14 14:00 UTC: early → late with the default calendar


def test_a_defect_takes_its_parts_shift_even_when_first_seen_after_the_shift_change(det, tracking_settings, plant):
    # the part's first frame is 150 ms before 14:00; the defect enters the view on frame 2, 50 ms after
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    ts0 = SHIFT_CHANGE_MS - 150
    outs = []
    for i in range(5):
        outs += _feed(cam, tr, plant, meta(i, "A", seq=i, last=i == 4, ts0=ts0), [d for d in [moving(det, 700, i)] if d])
    [out] = outs
    [d] = out.defects
    assert d.first_frame_ts > SHIFT_CHANGE_MS > out.part.first_frame_ts
    assert out.part.shift_name == out.part.shift == "early"
    assert (d.shift, d.shift_start) == ("early", out.part.shift_start)
    assert out.part.shift_start == SHIFT_CHANGE_MS - 8 * 3_600_000


def test_calendar_gap_is_unscheduled_on_the_verdict_and_every_defect(det, tracking_settings):
    import datetime as dt

    from streams.settings import PlantSettings, Shift

    plant = PlantSettings(timezone="UTC", shifts=[Shift(name="day", start=dt.time(6), end=dt.time(7))])
    tr = PartTracker(tracking_settings)
    cam = CameraState("cam-1")
    outs = []
    for i in range(3):
        outs += _feed(cam, tr, plant, meta(i, "A", seq=i, last=i == 2), [moving(det, 400, i), moving(det, 450, i, y=20)])
    [out] = outs
    assert len(out.defects) == 2
    assert out.part.shift_name == out.part.shift == "unscheduled"
    assert out.part.shift_start == out.part.first_frame_ts
    assert {(d.shift, d.shift_start) for d in out.defects} == {("unscheduled", out.part.first_frame_ts)}


def test_every_defect_carries_its_verdicts_emission_id(det, tracking_settings, plant):
    def close(frames_with_defect: int, x_parts: tuple[int, ...]):
        tr = PartTracker(tracking_settings)
        cam = CameraState("cam-1")
        outs = []
        for i in range(3):
            dets = [moving(det, x, i) for x in x_parts] if i < frames_with_defect else []
            outs += _feed(cam, tr, plant, meta(i, "A", seq=i, last=i == 2), [d for d in dets if d])
        return outs[0]

    first, again = close(3, (400,)), close(3, (400,))
    assert first.part.emission_id and {d.emission_id for d in first.defects} == {first.part.emission_id}
    assert again.part.emission_id == first.part.emission_id  # the same close re-emitted: identical events
    assert [d.to_avro() for d in again.defects] == [d.to_avro() for d in first.defects]
    other = close(3, (400, 250))  # a re-close that found another defect set
    assert other.part.event_id == first.part.event_id and len(other.defects) == 2
    assert other.part.emission_id != first.part.emission_id
    assert {d.emission_id for d in other.defects} == {other.part.emission_id}
