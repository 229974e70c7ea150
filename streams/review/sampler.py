"""Which production frames are worth a reviewer's look: bounded sampling strategies (pure logic).

The worker calls `ReviewSampler.on_frame` for every inspected frame and `on_close` for every
closed part; both return `Sample`s, which `records()` turns into one `ReviewFrame` per frame (the
durable copy of the pixels) and one `ReviewCandidate` per (frame, reason). Strategies:

* ``uncertain`` — a detection whose confidence lies within `uncertain_band` of `uncertain_center`;
* ``track_dropped`` — a track seen on ≥ `dropped_min_hits` frames that the tracker did not confirm;
* ``class_flipped`` — a confirmed track whose runner-up class holds ≥ `flip_min_share` of the vote;
* ``random_good`` — a frame of a part judged PASS with no defect, with `random_good_probability`;
* ``spc_alert`` — any frame of a camera with an open SPC alert, with `alert_probability`.

* ``disagreement`` — in a replay (`replay --queue-disagreements`, `DisagreementSampler`): a frame of
  every part whose replayed verdict differs from production's verdict of the same part, up to a limit
  per run; the frame of the candidate's strongest confirmed track, else the part's middle frame.

Guarantees: every strategy is capped per camera per sliding hour (`*_per_hour`; × `alert_multiplier`
while an alert is open for the camera), so the review topics and the durable store grow at most
by cameras × Σ caps frames per hour. Close-time strategies need the pixels of frames already
inspected: the sampler keeps the last `buffer_frames` frames of each camera's open part (memory
bound: cameras × buffer_frames × frame bytes); frames of a part that was open when the worker
restarted are not in the buffer and are simply not sampled (sampling is best effort, never a
reason to hold the stream). Ids are deterministic (`review_frame_id`, candidate = hash of frame id
and reason), so a re-delivered batch queues nothing twice.
"""
from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from models.core.types import Detection
from schemas.events import Alert, FrameEvent, ReviewCandidate, ReviewFrame, deterministic_id, review_frame_id
from streams.settings import ReviewSettings

REASONS = ("uncertain", "track_dropped", "class_flipped", "random_good", "spc_alert", "disagreement")
_CAP_FIELD = {"uncertain": "uncertain_per_hour", "track_dropped": "dropped_per_hour",
              "class_flipped": "flipped_per_hour", "random_good": "random_good_per_hour",
              "spc_alert": "alert_per_hour"}
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Sample:
    """One frame picked for one reason, with the detection in question (class '' and box 0 for none)."""

    frame: FrameEvent
    detections: tuple[Detection, ...]
    model_version: str
    reason: str
    score: float
    defect_class: str = ""
    confidence: float = 0.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    note: str = ""


class RateCap:
    """At most `per_hour` admissions per key in any sliding hour (a deque of admission times per key)."""

    def __init__(self) -> None:
        self._times: dict[tuple[str, str], deque[int]] = {}

    def allow(self, key: tuple[str, str], per_hour: int, now_ms: int) -> bool:
        """Admit one more for `key` at `now_ms` unless `per_hour` were admitted in the last hour."""
        if per_hour <= 0:
            return False
        q = self._times.setdefault(key, deque())
        while q and q[0] <= now_ms - HOUR_MS:
            q.popleft()
        if len(q) >= per_hour:
            return False
        q.append(now_ms)
        return True

    def used(self, key: tuple[str, str]) -> int:
        return len(self._times.get(key, ()))


class AlertBoard:
    """Which cameras have an open SPC alert: a SPIKE opens one for its camera (or, camera null, for
    every camera of its line), the RECOVERY of the same scope closes it; one left open longer than
    `max_open_s` counts as closed (a lost RECOVERY must not raise sampling forever)."""

    def __init__(self, max_open_s: float = 8 * 3600.0) -> None:
        self.max_open_ms = int(max_open_s * 1000)
        self._open: dict[tuple[str, str], int] = {}  # (line, camera or '') -> opened at (ms)

    def apply(self, alert: Alert) -> None:
        scope = (alert.line_id, alert.camera_id or "")
        if alert.kind == "SPIKE":
            self._open[scope] = alert.created_at
        elif alert.kind == "RECOVERY":
            self._open.pop(scope, None)

    def is_open(self, camera_id: str, line_id: str, now_ms: int) -> bool:
        for scope in ((line_id, camera_id), (line_id, "")):
            at = self._open.get(scope)
            if at is not None and now_ms - at < self.max_open_ms:
                return True
        return False


@dataclass
class _PartBuffer:
    part_id: str
    frames: deque = field(default_factory=deque)  # (FrameEvent, detections, model_version)


def _box(d: Detection) -> tuple[int, int, int, int]:
    return (int(d.bbox.x0), int(d.bbox.y0), int(d.bbox.x1), int(d.bbox.y1))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ReviewSampler:
    """The strategies of the module doc over one worker's cameras (not thread-safe; the pipeline's lock serialises it)."""

    def __init__(self, settings: ReviewSettings, *, run_id: str = "production", rng: random.Random | None = None,
                 alerts: AlertBoard | None = None):
        self.s = settings
        self.run_id = run_id
        self.rng = rng or random.Random()
        self.alerts = alerts or AlertBoard(settings.alert_max_open_s)
        self.caps = RateCap()
        self._parts: dict[str, OrderedDict[str, _PartBuffer]] = {}  # camera -> part id -> buffer (≤ 2 parts)
        self.sampled: dict[str, int] = {r: 0 for r in REASONS}

    # -- caps -------------------------------------------------------------------------------
    def _allow(self, camera_id: str, line_id: str, reason: str, now_ms: int) -> bool:
        cap = getattr(self.s, _CAP_FIELD[reason])
        if reason != "spc_alert" and self.alerts.is_open(camera_id, line_id, now_ms):
            cap = int(cap * self.s.alert_multiplier)
        ok = self.caps.allow((camera_id, reason), cap, now_ms)
        if ok:
            self.sampled[reason] += 1
        return ok

    # -- per frame --------------------------------------------------------------------------
    def on_frame(self, frame: FrameEvent, detections: Sequence[Detection], model_version: str,
                 now_ms: int) -> list[Sample]:
        """Buffer the frame for its part's close and return the frame-time samples (uncertain, spc_alert)."""
        if not self.s.enabled:
            return []
        dets = self._buffer(frame, detections, model_version)
        out: list[Sample] = []
        near = [d for d in dets if abs(d.confidence - self.s.uncertain_center) <= self.s.uncertain_band]
        if near:
            d = min(near, key=lambda d: abs(d.confidence - self.s.uncertain_center))
            if self._allow(frame.camera_id, frame.line_id, "uncertain", now_ms):
                score = 1.0 - abs(d.confidence - self.s.uncertain_center) / max(self.s.uncertain_band, 1e-9)
                out.append(Sample(frame, dets, model_version, "uncertain", round(score, 4), d.defect_class,
                                  float(d.confidence), _box(d)))
        if (self.alerts.is_open(frame.camera_id, frame.line_id, now_ms)
                and self.rng.random() < self.s.alert_probability
                and self._allow(frame.camera_id, frame.line_id, "spc_alert", now_ms)):
            top = max(dets, key=lambda d: d.confidence, default=None)
            out.append(Sample(frame, dets, model_version, "spc_alert", 0.5, *(
                (top.defect_class, float(top.confidence), _box(top)) if top else ())))
        return out

    def _buffer(self, frame: FrameEvent, detections: Sequence[Detection], model_version: str) -> tuple[Detection, ...]:
        """Keep the frame for its part's close (the last `buffer_frames` of each camera's open part)."""
        dets = tuple(detections)
        parts = self._parts.setdefault(frame.camera_id, OrderedDict())
        buf = parts.get(frame.part_id)
        if buf is None:
            buf = parts[frame.part_id] = _PartBuffer(frame.part_id)
            while len(parts) > 2:  # the part closing now (NEXT_PART) and the one this frame opens
                parts.popitem(last=False)
        buf.frames.append((frame, dets, model_version))
        while len(buf.frames) > self.s.buffer_frames:
            buf.frames.popleft()
        return dets

    # -- per part ---------------------------------------------------------------------------
    def _frame_of_track(self, frames: Iterable[tuple], box: Sequence[int]) -> tuple | None:
        """The buffered frame whose detections overlap the track's best box most (None below IoU 0.3)."""
        best, best_iou = None, 0.3
        for entry in frames:
            for d in entry[1]:
                v = _iou(_box(d), box)
                if v > best_iou:
                    best, best_iou = entry, v
        return best

    def on_close(self, part: Any, tracks: Sequence[Any], now_ms: int) -> list[Sample]:
        """Close-time samples of a closed part (`part` a PartInspected, `tracks` its TrackSummary list)."""
        parts = self._parts.get(part.camera_id)
        buf = parts.pop(part.part_id, None) if parts is not None else None
        if not self.s.enabled or buf is None or not buf.frames:
            return []
        cam, line = part.camera_id, part.line_id
        out: list[Sample] = []
        for t in tracks:
            if not t.confirmed and t.hits >= self.s.dropped_min_hits:
                entry = self._frame_of_track(buf.frames, t.best_box)
                if entry is not None and self._allow(cam, line, "track_dropped", now_ms):
                    out.append(Sample(entry[0], entry[1], entry[2], "track_dropped",
                                      round(min(1.0, t.hits / max(1, t.opportunities)), 4), t.defect_class,
                                      float(t.confidence), tuple(t.best_box),
                                      f"track {t.track_id}: {t.hits} hits of {t.opportunities} frames, not confirmed"))
            elif t.confirmed and len(t.class_votes) > 1:
                total = sum(t.class_votes.values()) or 1.0
                ranked = sorted(t.class_votes.items(), key=lambda kv: -kv[1])
                share = ranked[1][1] / total
                if share >= self.s.flip_min_share:
                    entry = self._frame_of_track(buf.frames, t.best_box)
                    if entry is not None and self._allow(cam, line, "class_flipped", now_ms):
                        out.append(Sample(entry[0], entry[1], entry[2], "class_flipped", round(2 * share, 4),
                                          t.defect_class, float(t.confidence), tuple(t.best_box),
                                          f"votes {', '.join(f'{c} {v:.2f}' for c, v in ranked)}"))
        if (part.verdict == "PASS" and part.defects_total == 0
                and self.rng.random() < self.s.random_good_probability
                and self._allow(cam, line, "random_good", now_ms)):
            entry = buf.frames[len(buf.frames) // 2]
            out.append(Sample(entry[0], entry[1], entry[2], "random_good", 0.1, note="part judged good"))
        return out

    # -- records ----------------------------------------------------------------------------
    def records(self, samples: Sequence[Sample], now_ms: int) -> tuple[list[ReviewFrame], list[ReviewCandidate]]:
        """One ReviewFrame per distinct frame and one ReviewCandidate per (frame, reason), ids deterministic."""
        frames: dict[str, ReviewFrame] = {}
        cands: dict[str, ReviewCandidate] = {}
        for s in samples:
            f = s.frame
            fid = review_frame_id(f.camera_id, f.part_id, f.frame_seq)
            if fid not in frames:
                frames[fid] = review_frame(f, s.detections, s.model_version, self.run_id, now_ms)
            cid = deterministic_id("candidate", fid, s.reason)
            cands.setdefault(cid, ReviewCandidate(
                candidate_id=cid, frame_id=fid, reason=s.reason, score=float(s.score), camera_id=f.camera_id,
                line_id=f.line_id, part_id=f.part_id, frame_seq=f.frame_seq, capture_ts=f.capture_ts,
                model_version=s.model_version, run_id=self.run_id, created_at=now_ms, defect_class=s.defect_class,
                confidence=float(s.confidence), bbox_x0=s.box[0], bbox_y0=s.box[1], bbox_x1=s.box[2],
                bbox_y1=s.box[3], note=s.note))
        return list(frames.values()), list(cands.values())


def review_frame(f: FrameEvent, detections: Sequence[Detection], model_version: str, run_id: str,
                 now_ms: int) -> ReviewFrame:
    """The durable copy of `f` with the model's detections on it."""
    return ReviewFrame(
        frame_id=review_frame_id(f.camera_id, f.part_id, f.frame_seq), camera_id=f.camera_id, line_id=f.line_id,
        part_id=f.part_id, frame_seq=f.frame_seq, capture_ts=f.capture_ts, encoding=f.encoding, width=f.width,
        height=f.height, channels=f.channels, image=bytes(f.image), model_version=model_version, run_id=run_id,
        sampled_at=now_ms, frame_index=f.frame_index, det_class=[d.defect_class for d in detections],
        det_confidence=[float(d.confidence) for d in detections], det_x0=[int(d.bbox.x0) for d in detections],
        det_y0=[int(d.bbox.y0) for d in detections], det_x1=[int(d.bbox.x1) for d in detections],
        det_y1=[int(d.bbox.y1) for d in detections])


class DisagreementSampler(ReviewSampler):
    """Replay sampling: a frame of each part whose verdict differs from `baseline`'s (production's) verdict
    of the same (camera, part), at most `limit` per run. The other strategies stay off: a replay reads
    recorded frames faster than real time, and its hourly caps would mean nothing."""

    def __init__(self, baseline: dict[tuple[str, str], str], *, run_id: str, baseline_run: str = "production",
                 limit: int = 200, buffer_frames: int = 16):
        super().__init__(ReviewSettings(buffer_frames=buffer_frames), run_id=run_id)
        self.baseline, self.baseline_run, self.limit = baseline, baseline_run, limit

    def on_frame(self, frame: FrameEvent, detections: Sequence[Detection], model_version: str,
                 now_ms: int) -> list[Sample]:
        self._buffer(frame, detections, model_version)
        return []

    def on_close(self, part: Any, tracks: Sequence[Any], now_ms: int) -> list[Sample]:
        parts = self._parts.get(part.camera_id)
        buf = parts.pop(part.part_id, None) if parts is not None else None
        base = self.baseline.get((part.camera_id, part.part_id))
        if buf is None or not buf.frames or base is None or base == part.verdict \
                or self.sampled["disagreement"] >= self.limit:
            return []
        confirmed = [t for t in tracks if t.confirmed]
        entry = None
        if confirmed:
            entry = self._frame_of_track(buf.frames, max(confirmed, key=lambda t: t.confidence).best_box)
        if entry is None:
            entry = buf.frames[len(buf.frames) // 2]
        top = max(entry[1], key=lambda d: d.confidence, default=None)
        self.sampled["disagreement"] += 1
        note = f"{self.baseline_run} {base}, {self.run_id} {part.verdict}"
        if top is None:
            return [Sample(entry[0], entry[1], entry[2], "disagreement", 1.0, note=note)]
        return [Sample(entry[0], entry[1], entry[2], "disagreement", 1.0, top.defect_class, float(top.confidence),
                       _box(top), note)]
