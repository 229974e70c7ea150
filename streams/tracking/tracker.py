"""Per-part defect tracking: follow detections across a part's frames, confirm, vote, close.

Pure logic, no Faust and no Kafka. One :class:`CameraState` per camera holds the sequence
guard (duplicate / out-of-order frames) and the open part's :class:`PartState`; both turn into
small JSON-able dicts (``to_dict`` / ``from_dict``) so they can live in a Faust table.

Geometry: the part moves through the view along ``TrackingSettings.travel_axis``. Each step
between consecutive frames of a part has a shift; their running sum ``pos[i]`` says where a
point seen at image position p on frame 0 appears on frame i (p + pos[i]). Hits keep their image
boxes; in *part coordinates* (image box minus pos) association and "could this track have been
seen on frame i" are plain box geometry. A step's shift comes from the conveyor speed ×
pixels/mm × dt when the camera reports them, else it is estimated from the detections'
displacement (a vote over detection pairs); a step with no evidence (no detections) is filled
with the median of the part's known steps (the conveyor runs at a steady speed), so positions
of early frames are corrected once later frames show the motion.

Confirmation (k of n): a track's *opportunities* are the frames of the part on which its
motion-predicted box lies inside the view; it is confirmed when its hits reach
``min(min_hits, opportunities)`` and ``min_hit_ratio × opportunities``. A glint that flickers
on for one or two of the three frames it crosses fails the ratio; a real defect that only
enters the view on the last frame needs a single hit, made with a mean confidence of at least
``short_track_min_confidence`` (tracking cannot vet it, so the detector must be sure).
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from models.core.types import Detection, box_iou
from schemas.events import DefectEvent, PartInspected, deterministic_id, emission_id_of
from streams.settings import PlantSettings, TrackingSettings
from streams.shifts import shift_at
from streams.tracking.types import FrameMeta, FrameRejection, PartOutcome, PartPolicy

CLOSE_NEXT_PART = "NEXT_PART"
CLOSE_LAST_FRAME = "LAST_FRAME"
CLOSE_TIMEOUT = "TIMEOUT"
CLOSE_MAX_FRAMES = "MAX_FRAMES"  # the part reached TrackingSettings.max_frames_per_part
UNSCHEDULED_SHIFT = "unscheduled"  # shift name of a part captured in a gap of the plant calendar

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (x1/y1 exclusive), floats in part coords


# the sequence vote of a closing part's confirmed track: class probabilities, or None (the tracker's vote stands)
TrackVote = Callable[["PartState", "TrackSummary"], "Mapping[str, float] | None"]


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------
class TrackSummary(NamedTuple):
    """A track's figures at close (confirmed or not); used by scoring and the emitter."""

    track_id: int
    confirmed: bool
    defect_class: str
    severity: float
    severity_max: float
    confidence: float
    class_votes: dict[str, float]
    hits: int
    opportunities: int
    best_frame_index: int  # index within the part
    best_box: tuple[int, int, int, int]  # image coords on the best frame
    area_px: int
    boxes: dict[int, tuple[int, int, int, int]]  # part frame index -> image box of each hit


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------
iou = box_iou  # intersection over union of two boxes (0 when either is empty)


def _center(b: Box) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


def _shift(b: Box, d: tuple[float, float]) -> Box:
    return (b[0] + d[0], b[1] + d[1], b[2] + d[0], b[3] + d[1])


def _axis_vector(axis: str) -> tuple[float, float]:
    return {"-x": (-1.0, 0.0), "+x": (1.0, 0.0), "-y": (0.0, -1.0), "+y": (0.0, 1.0)}[axis]


def estimate_shift(
    prev: Sequence[Box], cur: Sequence[Box], axis: str, prior: tuple[float, float] | None = None, tol: float = 12.0
) -> tuple[float, float] | None:
    """Estimate the part's motion between two frames from the boxes seen on each.

    Every (previous, current) pair whose displacement goes along the travel axis (or is ~0) is
    a candidate; the candidate that the most pairs agree with (within ``tol`` px) wins, ties go
    to the one closest to ``prior``. Returns None when no pair is plausible.
    """
    ax = _axis_vector(axis)
    cands: list[tuple[float, float]] = []
    for p in prev:
        pc = _center(p)
        for c in cur:
            cc = _center(c)
            d = (cc[0] - pc[0], cc[1] - pc[1])
            along = d[0] * ax[0] + d[1] * ax[1]
            across = abs(d[0] * ax[1] - d[1] * ax[0])
            if along < -tol or across > tol + 0.25 * max(p[3] - p[1], p[2] - p[0]):
                continue
            cands.append(d)
    if not cands:
        return None

    def support(d: tuple[float, float]) -> int:
        return sum(1 for e in cands if abs(e[0] - d[0]) <= tol and abs(e[1] - d[1]) <= tol)

    def prior_dist(d: tuple[float, float]) -> float:
        if prior is None:
            return 0.0
        return math.hypot(d[0] - prior[0], d[1] - prior[1])

    best = max(cands, key=lambda d: (support(d), -prior_dist(d)))
    agree = [e for e in cands if abs(e[0] - best[0]) <= tol and abs(e[1] - best[1]) <= tol]
    # refine: mean of the agreeing displacements, projected on the travel axis
    mx = sum(e[0] for e in agree) / len(agree)
    my = sum(e[1] for e in agree) / len(agree)
    along = mx * ax[0] + my * ax[1]
    return (along * ax[0], along * ax[1])


def _gap(a: Box, b: Box) -> float:
    """Chebyshev distance between two boxes (negative when they overlap)."""
    return max(max(a[0], b[0]) - min(a[2], b[2]), max(a[1], b[1]) - min(a[3], b[3]))


def merge_adjacent(detections: Sequence[Detection], gap_px: float) -> list[Detection]:
    """Join detections of one frame whose boxes overlap or lie within `gap_px` of each other.

    The detector can split one defect into several components (an imprint's lit and shaded
    lobes); joined, they form one candidate. The merged detection takes the class, confidence and
    class scores of its strongest part (confidence × severity), the union box and mask (its
    pixel count is the area) and the largest severity. Defects closer than `gap_px` are rare (the generator
    keeps 12 px between them), so nothing else is joined.
    """
    if gap_px < 0 or len(detections) < 2:
        return list(detections)
    boxes = [tuple(float(v) for v in d.bbox) for d in detections]
    parent = list(range(len(detections)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if _gap(boxes[i], boxes[j]) <= gap_px:  # type: ignore[arg-type]
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(detections)):
        groups.setdefault(root(i), []).append(i)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(detections[members[0]])
            continue
        ds = [detections[i] for i in members]
        lead = max(ds, key=lambda d: d.confidence * max(d.severity_max, 1e-3))
        x0, y0 = min(d.bbox[0] for d in ds), min(d.bbox[1] for d in ds)
        x1, y1 = max(d.bbox[2] for d in ds), max(d.bbox[3] for d in ds)
        if all(d.mask is None for d in ds):  # a box detector's: no mask and no pixel area to merge (none invented)
            mask, area = None, 0
        else:
            mask = np.zeros((y1 - y0, x1 - x0), bool)
            for d in ds:
                if d.mask is None:
                    continue
                m = np.asarray(d.mask, bool)
                if m.shape == (d.bbox[3] - d.bbox[1], d.bbox[2] - d.bbox[0]):
                    mask[d.bbox[1] - y0:d.bbox[3] - y0, d.bbox[0] - x0:d.bbox[2] - x0] |= m
            area = int(mask.sum()) or sum(int(d.area_px) for d in ds)  # overlapping pixels count once
        out.append(Detection(
            bbox=type(lead.bbox)(int(x0), int(y0), int(x1), int(y1)),
            mask=mask,
            defect_class=lead.defect_class,
            confidence=lead.confidence,
            severity_mean=(sum(d.severity_mean * d.area_px for d in ds) / max(area, 1) if area
                           else max(d.severity_mean for d in ds)),
            severity_max=max(d.severity_max for d in ds),
            area_px=area,
            class_scores=lead.class_scores,
        ))
    return out


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------
@dataclass
class Hit:
    """One frame on which a track was matched."""

    frame: int  # index within the part (order of arrival)
    box: Box  # image coordinates on that frame
    defect_class: str
    confidence: float
    severity_max: float
    area_px: int

    def to_list(self) -> list[Any]:
        return [self.frame, [round(v, 1) for v in self.box], self.defect_class, round(self.confidence, 4),
                round(self.severity_max, 3), self.area_px]

    @classmethod
    def from_list(cls, v: list[Any]) -> "Hit":
        return cls(int(v[0]), tuple(float(x) for x in v[1]), str(v[2]), float(v[3]), float(v[4]), int(v[5]))  # type: ignore[arg-type]


@dataclass
class Track:
    """A defect candidate followed over the frames of one part."""

    track_id: int
    hits: list[Hit] = field(default_factory=list)
    missed: int = 0  # consecutive in-view frames without a match

    def last_box(self, pos: Sequence[tuple[float, float]]) -> Box:
        """The last hit's box in part coordinates."""
        h = self.hits[-1]
        return _shift(h.box, (-pos[h.frame][0], -pos[h.frame][1]))

    def ref_box(self, pos: Sequence[tuple[float, float]]) -> Box:
        """The hit box with the largest area (least clipped by the frame edge), in part coordinates."""
        h = max(self.hits, key=lambda h: (h.box[2] - h.box[0]) * (h.box[3] - h.box[1]))
        return _shift(h.box, (-pos[h.frame][0], -pos[h.frame][1]))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.track_id, "m": self.missed, "h": [h.to_list() for h in self.hits]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Track":
        return cls(int(d["id"]), [Hit.from_list(h) for h in d["h"]], int(d.get("m", 0)))


@dataclass
class PartState:
    """The open part of one camera: its frames' metadata, motion and tracks."""

    camera_id: str
    line_id: str
    part_id: str
    model_version: str
    seqs: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    steps: list[tuple[float, float] | None] = field(default_factory=list)  # shift per step; None = unknown
    width: int = 0
    height: int = 0
    tracks: list[Track] = field(default_factory=list)
    next_track_id: int = 0
    last_shift: tuple[float, float] | None = None
    policy: PartPolicy = field(default_factory=PartPolicy)
    # monotonic ms of the last frame (the inactivity timeout), on the clock named `touched_epoch`:
    # a wall-clock step must not make a part look idle (or busy); a stamp of another process's
    # clock (a restart, a rebalance) is not compared, see `CameraState.idle_part`
    touched_ms: int = 0
    touched_epoch: str = ""
    # The model the part was opened with, when that model could no longer be loaded and the part
    # finishes on the camera's current one (`model_version` then; streams.inspection.model_selection).
    opened_model_version: str = ""

    def switch_model(self, version: str) -> None:
        """Go on with `version` because the part's model is gone: the verdict names both
        (`model_version` = `version`, whose event ids these are; `opened_model_version` = the first)."""
        if version != self.model_version:
            self.opened_model_version = self.opened_model_version or self.model_version
            self.model_version = version

    @property
    def frames(self) -> int:
        return len(self.seqs)

    @property
    def pos(self) -> list[tuple[float, float]]:
        """Cumulative shift per frame, unknown steps filled with the median known step."""
        known = [st for st in self.steps if st is not None]
        fill = (statistics.median(k[0] for k in known), statistics.median(k[1] for k in known)) if known else (0.0, 0.0)
        out = [(0.0, 0.0)] if self.seqs else []
        for st in self.steps:
            d = st if st is not None else fill
            out.append((out[-1][0] + d[0], out[-1][1] + d[1]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "line_id": self.line_id,
            "part_id": self.part_id,
            "model_version": self.model_version,
            "seqs": self.seqs,
            "ts": self.ts,
            "steps": [[round(p[0], 2), round(p[1], 2)] if p is not None else None for p in self.steps],
            "wh": [self.width, self.height],
            "tracks": [t.to_dict() for t in self.tracks],
            "next_track_id": self.next_track_id,
            "last_shift": list(self.last_shift) if self.last_shift is not None else None,
            "policy": {k: v for k, v in self.policy._asdict().items() if v is not None},
            "touched_ms": self.touched_ms,
            "touched_epoch": self.touched_epoch,
            **({"opened_model_version": self.opened_model_version} if self.opened_model_version else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PartState":
        pol = dict(d.get("policy") or {})
        if pol.get("roi") is not None:
            pol["roi"] = tuple(pol["roi"])
        ls = d.get("last_shift")
        return cls(
            camera_id=d["camera_id"],
            line_id=d["line_id"],
            part_id=d["part_id"],
            model_version=d["model_version"],
            seqs=[int(s) for s in d["seqs"]],
            ts=[int(t) for t in d["ts"]],
            steps=[(float(p[0]), float(p[1])) if p is not None else None for p in d["steps"]],
            width=int(d["wh"][0]),
            height=int(d["wh"][1]),
            tracks=[Track.from_dict(t) for t in d["tracks"]],
            next_track_id=int(d["next_track_id"]),
            last_shift=(float(ls[0]), float(ls[1])) if ls is not None else None,
            policy=PartPolicy(**pol),
            touched_ms=int(d.get("touched_ms", 0)),
            touched_epoch=str(d.get("touched_epoch", "")),
            opened_model_version=str(d.get("opened_model_version") or ""),
        )


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------
class PartTracker:
    """Association, confirmation and class vote over one part; stateless apart from settings."""

    def __init__(self, settings: TrackingSettings):
        self.s = settings

    # -- motion ------------------------------------------------------------------------------
    def _frame_shift(self, part: PartState, meta: FrameMeta, boxes: Sequence[Box]) -> tuple[float, float] | None:
        """Image shift from the previous frame of the part to this one; None when unknown."""
        ax = _axis_vector(self.s.travel_axis)
        if meta.speed_px_s is not None and meta.speed_px_s > 0 and part.ts:
            dt = max(0.0, (meta.capture_ts - part.ts[-1]) / 1000.0)
            d = meta.speed_px_s * dt
            return (d * ax[0], d * ax[1])
        # Vote between the boxes of the tracks hit on the previous frame and the new boxes.
        prev_frame = part.frames - 1
        prev = [t.hits[-1].box for t in part.tracks if t.hits and t.hits[-1].frame == prev_frame]
        if not prev or not boxes:
            return None
        return estimate_shift(prev, boxes, self.s.travel_axis, prior=part.last_shift)

    # -- visibility --------------------------------------------------------------------------
    def _in_view(self, part: PartState, box: Box, pos: tuple[float, float]) -> bool:
        """Could a box (part coords) be seen on a frame at `pos`? Its centre must lie in the view."""
        cx, cy = _center(_shift(box, pos))
        m = self.s.edge_margin_px
        return m <= cx <= part.width - m and m <= cy <= part.height - m

    def _opportunity(self, part: PartState, box: Box, pos: tuple[float, float]) -> bool:
        """Should a track with this box (part coords) have been seen on a frame at `pos`? When
        at least `min_visible_fraction` of the box lies in the view."""
        b = _shift(box, pos)
        area = (b[2] - b[0]) * (b[3] - b[1])
        if area <= 0:
            return self._in_view(part, box, pos)
        vis = max(0.0, min(b[2], part.width) - max(b[0], 0.0)) * max(0.0, min(b[3], part.height) - max(b[1], 0.0))
        return vis >= self.s.min_visible_fraction * area

    def _in_roi(self, part: PartState, det_box: Box) -> bool:
        roi = part.policy.roi
        if roi is None:
            return True
        cx, cy = _center(det_box)
        return roi[0] <= cx < roi[2] and roi[1] <= cy < roi[3]

    # -- one frame ---------------------------------------------------------------------------
    def observe(self, part: PartState, meta: FrameMeta, detections: Sequence[Detection], now_ms: int = 0,
                epoch: str = "") -> None:
        """Add one frame's detections to the part (mutates `part`); `now_ms`: the monotonic clock named `epoch`."""
        min_conf = part.policy.min_confidence if part.policy.min_confidence is not None else self.s.min_confidence
        dets = [
            d for d in merge_adjacent(detections, self.s.merge_gap_px)
            if d.confidence >= min_conf and self._in_roi(part, tuple(float(v) for v in d.bbox))  # type: ignore[arg-type]
        ]
        img_boxes: list[Box] = [tuple(float(v) for v in d.bbox) for d in dets]  # type: ignore[misc]
        if not part.seqs:
            part.width, part.height = meta.width, meta.height
        else:
            step = self._frame_shift(part, meta, img_boxes)
            part.steps.append(step)
            if step is not None:
                part.last_shift = step
        part.seqs.append(meta.frame_seq)
        part.ts.append(meta.capture_ts)
        part.touched_ms = now_ms
        part.touched_epoch = epoch
        frame = part.frames - 1
        pos = part.pos
        here = pos[frame]
        part_boxes = [_shift(b, (-here[0], -here[1])) for b in img_boxes]

        # Candidate (cost, track index, detection index) pairs, matched greedily by cost.
        live = []
        for ti, t in enumerate(part.tracks):
            tb = t.last_box(pos)
            if t.missed <= self.s.max_missed and self._in_view(part, tb, here):
                live.append((ti, tb))
        pairs: list[tuple[float, int, int]] = []
        for ti, tb in live:
            tc = _center(tb)
            for di, db in enumerate(part_boxes):
                ov = iou(tb, db)
                dc = _center(db)
                dist = math.hypot(tc[0] - dc[0], tc[1] - dc[1])
                size = 0.5 * max(db[2] - db[0], db[3] - db[1], tb[2] - tb[0], tb[3] - tb[1])
                gate = self.s.center_dist_px + size
                if ov >= self.s.iou_min or dist <= gate:
                    pairs.append(((1.0 - ov) + dist / max(gate, 1.0), ti, di))
        pairs.sort()
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _cost, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            t = part.tracks[ti]
            t.hits.append(self._hit(frame, img_boxes[di], dets[di]))
            t.missed = 0
        for ti, _tb in live:
            if ti not in used_t:
                part.tracks[ti].missed += 1
        for di, d in enumerate(dets):
            if di in used_d:
                continue
            part.tracks.append(Track(part.next_track_id, [self._hit(frame, img_boxes[di], d)]))
            part.next_track_id += 1

    @staticmethod
    def _hit(frame: int, box: Box, d: Detection) -> Hit:
        return Hit(frame, box, d.defect_class, float(d.confidence), float(d.severity_max), int(d.area_px))

    # -- close -------------------------------------------------------------------------------
    def summarize(self, part: PartState, track: Track, vote: Mapping[str, float] | None = None) -> TrackSummary:
        """Confirmation, class vote and severity of one track over the whole part.

        `vote`: class probabilities from a sequence vote over the track's crops (`Inspector.vote_track`); when
        given they replace the confidence x severity vote (class, confidence and class_votes), confirmation and
        geometry stay the tracker's."""
        pos = part.pos
        ref = track.ref_box(pos)
        opportunities = sum(1 for p in pos if self._opportunity(part, ref, p))
        hits = len({h.frame for h in track.hits})
        opportunities = max(opportunities, hits)
        need = max(min(self.s.min_hits, opportunities), math.ceil(self.s.min_hit_ratio * opportunities - 1e-9))
        votes: dict[str, float] = {}
        for h in track.hits:
            votes[h.defect_class] = votes.get(h.defect_class, 0.0) + h.confidence * max(h.severity_max, 1e-3)
        if vote:
            votes = {c: float(v) for c, v in vote.items()}
        total = sum(votes.values()) or 1.0
        cls = max(votes, key=lambda c: (votes[c], c))
        best = max(track.hits, key=lambda h: (h.defect_class == cls, h.confidence * max(h.severity_max, 1e-3)))
        bb = best.box
        mean_conf = statistics.fmean(h.confidence for h in track.hits)
        confirmed = hits >= need and mean_conf >= self.s.min_track_confidence
        if confirmed and hits < self.s.min_hits:
            # too few frames to tell a defect from a one-off: ask for a confident detector instead
            confirmed = mean_conf >= self.s.short_track_min_confidence
        return TrackSummary(
            track_id=track.track_id,
            confirmed=confirmed,
            defect_class=cls,
            severity=float(statistics.median(h.severity_max for h in track.hits)),
            severity_max=float(max(h.severity_max for h in track.hits)),
            confidence=votes[cls] / total,
            class_votes={c: round(v, 4) for c, v in votes.items()},
            hits=hits,
            opportunities=opportunities,
            best_frame_index=best.frame,
            best_box=_round_box(bb),
            area_px=best.area_px,
            boxes={h.frame: _round_box(h.box) for h in track.hits},
        )

    def _revote(self, part: PartState, track: Track, summary: TrackSummary, vote: "TrackVote") -> TrackSummary:
        """`summary` classed by the sequence vote; the tracker's own vote when the vote has nothing (no crops
        held, e.g. after a restart) or fails (logged: a vote must never stop the part's verdict)."""
        try:
            probs = vote(part, summary)
        except Exception as exc:  # noqa: BLE001
            log.error("sequence vote failed for track %d of part %s (camera %s): %r; the tracker's vote stands",
                      track.track_id, part.part_id, part.camera_id, exc)
            return summary
        return self.summarize(part, track, vote=probs) if probs else summary

    def close(self, part: PartState, reason: str, *, run_id: str, plant: PlantSettings,
              vote: "TrackVote | None" = None) -> PartOutcome:
        """Close the part: one DefectEvent per confirmed track and exactly one PartInspected.

        Ids are deterministic (camera, part, track, model version, run), so re-closing the same
        part after a crash re-emits identical events that sinks de-duplicate. The verdict and every
        defect carry the part's shift (the calendar at its first frame, ``unscheduled`` in a gap)
        and the close's ``emission_id`` (``emission_id_of``): a re-close that found another defect
        set (other batch boundaries, other track ids) is told apart, and queries keep the defects of
        the winning verdict only.
        """
        summaries = [self.summarize(part, t) for t in part.tracks]
        if vote is not None:  # a sequence vote classes the confirmed tracks (`Inspector.vote_track`)
            summaries = [self._revote(part, t, s, vote) if s.confirmed else s for t, s in zip(part.tracks, summaries)]
        confirmed = [s for s in summaries if s.confirmed]
        first_ts, last_ts = (part.ts[0], part.ts[-1]) if part.ts else (0, 0)
        # the part's shift, stamped on the verdict and on every defect: a defect counts in its part's shift
        try:
            shift_name, shift_start = shift_at(first_ts, plant)[:2]
        except LookupError:
            # a gap in the plant calendar must not stop the line's verdicts; the name says why
            shift_name, shift_start = UNSCHEDULED_SHIFT, max(0, first_ts)
        except Exception as exc:  # noqa: BLE001 - any calendar error (a timestamp out of datetime's range, a
            # broken zone) must not make the close raise: the worker would stop on this part at every restart
            log.error("shift calendar failed for part %s of %s at capture_ts %s: %r; shift %r",
                      part.part_id, part.camera_id, first_ts, exc, UNSCHEDULED_SHIFT)
            shift_name, shift_start = UNSCHEDULED_SHIFT, min(max(0, first_ts), 2**63 - 1)
        defects: list[DefectEvent] = []
        counts: dict[str, int] = {}
        fail_sev = part.policy.fail_severity if part.policy.fail_severity is not None else self.s.fail_severity
        fail = False
        for s in confirmed:
            counts[s.defect_class] = counts.get(s.defect_class, 0) + 1
            fail = fail or s.defect_class in self.s.fail_classes or s.severity >= fail_sev
            first = min(s.boxes)
            last = max(s.boxes)
            defects.append(
                DefectEvent(
                    event_id=deterministic_id(part.camera_id, part.part_id, s.track_id, part.model_version, run_id),
                    camera_id=part.camera_id,
                    line_id=part.line_id,
                    part_id=part.part_id,
                    track_id=s.track_id,
                    defect_class=s.defect_class,
                    severity=round(s.severity, 3),
                    severity_max=round(s.severity_max, 3),
                    confidence=round(s.confidence, 4),
                    bbox=dict(zip(("x0", "y0", "x1", "y1"), s.best_box)),
                    best_frame_seq=part.seqs[s.best_frame_index],
                    area_px=s.area_px,
                    frames_seen=s.hits,
                    frames_total=s.opportunities,
                    first_frame_ts=part.ts[first],
                    last_frame_ts=part.ts[last],
                    model_version=part.model_version,
                    run_id=run_id,
                    class_votes=s.class_votes,
                    shift=shift_name,
                    shift_start=shift_start,
                )
            )
        verdict = PartInspected(
            event_id=deterministic_id(part.camera_id, part.part_id, part.model_version, run_id),
            camera_id=part.camera_id,
            line_id=part.line_id,
            part_id=part.part_id,
            verdict="FAIL" if fail else "PASS",
            defects_total=len(defects),
            frames=part.frames,
            first_frame_ts=first_ts,
            last_frame_ts=last_ts,
            closed_reason=reason,
            model_version=part.model_version,
            run_id=run_id,
            shift_name=shift_name,
            shift_start=shift_start,
            defect_counts=counts,
            shift=shift_name,
            opened_model_version=part.opened_model_version,
        )
        # ties every defect to this close: a re-close with another defect set gets another emission id
        verdict.emission_id = emission_id_of(verdict, defects)
        for d in defects:
            d.emission_id = verdict.emission_id
        return PartOutcome(verdict, defects, tuple(summaries))


def _round_box(b: Box) -> tuple[int, int, int, int]:
    return (int(round(b[0])), int(round(b[1])), int(round(b[2])), int(round(b[3])))


# --------------------------------------------------------------------------------------------
# Per camera: sequence guard + part lifecycle
# --------------------------------------------------------------------------------------------
_RECENT_SEQS = 64
_RECENT_PARTS = 8


@dataclass
class CameraState:
    """Everything the worker keeps per camera between frames (the tracking table's value)."""

    camera_id: str
    last_seq: int | None = None
    recent_seqs: list[int] = field(default_factory=list)
    closed_parts: list[str] = field(default_factory=list)
    part: PartState | None = None
    capped_parts: list[str] = field(default_factory=list)  # recent parts closed for max_frames_per_part
    # [frames partition, offset after the last frame folded into this state]: tells a frame the
    # broker re-delivers after a crash or rebalance (read before, not committed) from a duplicate
    # the camera sent again (at a new offset).
    read_to: list[int] | None = None
    # the camera reset (`streams.inspection.cameras.CameraReset`) this state has applied: a new one
    # clears the sequence guard once (a replaced camera counts frame_seq from 0 again)
    reset_id: str | None = None

    def reset_sequence(self, reset_id: str) -> bool:
        """Apply the operator's reset `reset_id` once: forget the frame_seq history (the open part and
        the closed-part lists stay). True when it was new."""
        if reset_id == self.reset_id:
            return False
        self.reset_id = reset_id
        self.last_seq = None
        self.recent_seqs = []
        return True

    def note_read(self, partition: int, offset: int) -> None:
        """Record that the frame at `offset` of `partition` has been through this state."""
        if self.read_to is None or self.read_to[0] != partition or offset + 1 > self.read_to[1]:
            self.read_to = [partition, offset + 1]

    def was_read(self, partition: int, offset: int) -> bool:
        """Was the frame at `offset` of `partition` already through this state (a re-delivery)?"""
        return self.read_to is not None and self.read_to[0] == partition and offset < self.read_to[1]

    def admit(self, meta: FrameMeta) -> FrameRejection | None:
        """Sequence guard; records the frame as seen when it is admitted.

        Returns a rejection for a frame_seq already seen (``duplicate_frame``, e.g. a replay
        after a crash), one older than the newest seen (``out_of_order_frame``), a frame of a part
        closed at the frames-per-part limit (``part_frame_limit``), or a frame of a part this
        camera already closed (``late_frame``).
        """
        seq = meta.frame_seq
        if seq in self.recent_seqs or seq == self.last_seq:
            return FrameRejection("duplicate_frame", f"frame_seq {seq} of camera {self.camera_id} was already processed")
        if self.last_seq is not None and seq < self.last_seq:
            return FrameRejection(
                "out_of_order_frame", f"frame_seq {seq} arrived after {self.last_seq} on camera {self.camera_id}"
            )
        rej = self.closed_rejection(meta)
        if rej is not None:
            return rej
        self.last_seq = seq
        self.recent_seqs = (self.recent_seqs + [seq])[-_RECENT_SEQS:]
        return None

    def closed_rejection(self, meta: FrameMeta) -> FrameRejection | None:
        """Why a frame of an already closed part is refused (None if its part is not closed).

        Checked at admission and again right before a frame is tracked: a part can close between
        (its last frame, or the frame cap, earlier in the same micro-batch)."""
        if meta.part_id in self.capped_parts:
            return FrameRejection("part_frame_limit", f"part {meta.part_id} of camera {self.camera_id} was closed "
                                                      f"({CLOSE_MAX_FRAMES}) when it reached the frames-per-part limit")
        if meta.part_id in self.closed_parts:
            return FrameRejection("late_frame", f"part {meta.part_id} of camera {self.camera_id} is already closed")
        return None

    def _close(self, tracker: PartTracker, reason: str, run_id: str, plant: PlantSettings,
               vote: "TrackVote | None" = None) -> PartOutcome:
        assert self.part is not None
        out = tracker.close(self.part, reason, run_id=run_id, plant=plant, vote=vote)
        self.closed_parts = (self.closed_parts + [self.part.part_id])[-_RECENT_PARTS:]
        self.part = None
        return out

    def observe(
        self,
        tracker: PartTracker,
        meta: FrameMeta,
        detections: Sequence[Detection],
        *,
        model_version: str,
        run_id: str,
        plant: PlantSettings,
        policy: PartPolicy | None = None,
        now_ms: int = 0,
        epoch: str = "",
        vote: "TrackVote | None" = None,
    ) -> list[PartOutcome]:
        """Feed an admitted frame; returns the parts it closed (NEXT_PART before, LAST_FRAME or
        MAX_FRAMES after: a part closes when it reaches `max_frames_per_part`). `vote`: the sequence
        vote of the parts it closes (`PartTracker.close`).

        `policy` (camera overrides) is applied when this frame opens a new part, so a camera's
        new settings take effect from its next part.
        """
        outcomes: list[PartOutcome] = []
        if self.part is not None and self.part.part_id != meta.part_id:
            outcomes.append(self._close(tracker, CLOSE_NEXT_PART, run_id, plant, vote))
        if self.part is None:
            pol = policy or PartPolicy()
            self.part = PartState(
                camera_id=meta.camera_id,
                line_id=pol.line_id or meta.line_id,
                part_id=meta.part_id,
                model_version=model_version,
                policy=pol,
            )
        tracker.observe(self.part, meta, detections, now_ms=now_ms, epoch=epoch)
        if meta.last_frame:
            outcomes.append(self._close(tracker, CLOSE_LAST_FRAME, run_id, plant, vote))
        elif self.part.frames >= tracker.s.max_frames_per_part:
            # a camera stuck on one part_id must not grow the state (and its changelog record) without bound
            self.capped_parts = (self.capped_parts + [self.part.part_id])[-_RECENT_PARTS:]
            outcomes.append(self._close(tracker, CLOSE_MAX_FRAMES, run_id, plant, vote))
        return outcomes

    def idle_part(self, now_ms: int, timeout_s: float, epoch: str | None = None) -> str | None:
        """The open part's id when it has had no frame for `timeout_s` (shorter once it has
        reached the camera's frames-per-part hint), else None.

        `now_ms` is a monotonic reading on the clock named `epoch`. A part last touched on another
        clock (stamped by a previous process, or before stamps had an epoch) had no frame here at
        all, so its silence is as long as this process has watched: it counts as idle, and the
        caller's observation gate (`streams.tracking.table.idle_parts`, `observed_since`: the
        partition watched through a broker that answers for `timeout_s`) bounds it. `epoch` None
        compares the stamps as they are.
        """
        if self.part is None:
            return None
        if epoch is not None and self.part.touched_epoch != epoch:
            return self.part.part_id
        limit = timeout_s
        hint = self.part.policy.frames_per_part
        if hint and self.part.frames >= hint:
            limit = min(timeout_s, 2.0)
        return self.part.part_id if now_ms - self.part.touched_ms >= limit * 1000 else None

    def close_if_idle(
        self, tracker: PartTracker, part_id: str, last_seq: int, *, run_id: str, plant: PlantSettings,
        vote: "TrackVote | None" = None,
    ) -> PartOutcome | None:
        """Close the open part with reason TIMEOUT if it is still `part_id` with no frame after
        `last_seq` (the timer's view may be stale by the time this runs)."""
        if self.part is None or self.part.part_id != part_id or not self.part.seqs or self.part.seqs[-1] != last_seq:
            return None
        return self._close(tracker, CLOSE_TIMEOUT, run_id, plant, vote)

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera_id": self.camera_id,
            "last_seq": self.last_seq,
            "recent_seqs": self.recent_seqs,
            "closed_parts": self.closed_parts,
            "part": self.part.to_dict() if self.part is not None else None,
            "capped_parts": self.capped_parts,
            "read_to": self.read_to,
            **({"reset_id": self.reset_id} if self.reset_id is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CameraState":
        return cls(
            camera_id=d["camera_id"],
            last_seq=d.get("last_seq"),
            recent_seqs=[int(s) for s in d.get("recent_seqs", [])],
            closed_parts=[str(p) for p in d.get("closed_parts", [])],
            part=PartState.from_dict(d["part"]) if d.get("part") else None,
            capped_parts=[str(p) for p in d.get("capped_parts", [])],
            read_to=[int(x) for x in d["read_to"]] if d.get("read_to") else None,
            reset_id=str(d["reset_id"]) if d.get("reset_id") is not None else None,
        )


def track_part_offline(
    tracker: PartTracker,
    metas: Iterable[FrameMeta],
    detections: Iterable[Sequence[Detection]],
    *,
    model_version: str = "offline",
) -> tuple[PartState, list[TrackSummary]]:
    """Run one part's frames through the tracker without a camera state (scoring helper)."""
    part: PartState | None = None
    for meta, dets in zip(metas, detections):
        if part is None:
            part = PartState(meta.camera_id, meta.line_id, meta.part_id, model_version)
        tracker.observe(part, meta, dets)
    if part is None:
        raise ValueError("no frames")
    return part, [tracker.summarize(part, t) for t in part.tracks]
