"""Scoring against simulator ground truth: frame-by-frame detection vs tracked/confirmed defects.

Two inputs are scored the same way:

* pipeline output — DefectEvents read from the `defects` topic (or a JSONL file of them) and
  the simulator's ground-truth JSONL (`defectstream score --ground-truth gt.jsonl --defects-topic`);
* the offline path — render part sequences, run the Inspector and the tracker directly, no Kafka
  (`defectstream score --offline --parts 500`); it also scores every raw detection
  ("frame-by-frame": what reporting each detection would give) and can sweep tracker settings.

A reported defect matches a ground-truth defect of the same part when, on the reported frame,
their boxes overlap with IoU ≥ 0.2 or the reported box's centre lies in the ground-truth box
(thin scratches: partial detections have a low IoU). Matching is one-to-one, greedy by IoU. A
DefectEvent carries the box of its best frame only; offline, a confirmed track may match on any
of the frames it was seen on.

Metrics: false alarms per 100 parts (reported defects matching no ground-truth defect; for
frame-by-frame every unmatched detection on every frame counts), defect recall (ground-truth
defects matched at least once), class accuracy over matched defects, and imprint class
accuracy (mild vs severe) over matched imprint defects.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from models.core.types import BBox, Detection
from streams.settings import Settings, TrackingSettings
from streams.sim.simulator import GroundTruthPart, gt_defects, gt_nuisances
from streams.tracking.tracker import PartTracker, iou, track_part_offline
from streams.tracking.types import FrameMeta

log = logging.getLogger(__name__)

IMPRINT = ("imprint_mild", "imprint_severe")
IOU_MATCH = 0.2


class Reported(NamedTuple):
    """One reported defect on one frame of a part (a confirmed track, or a raw detection)."""

    part_id: str
    frame_index: int
    box: tuple[int, int, int, int]
    defect_class: str
    # other frames where the same track was seen (offline tracked path): a match on any counts
    more: tuple[tuple[int, tuple[int, int, int, int]], ...] = ()


@dataclass
class Score:
    """Scores of one way of reporting (frame-by-frame or tracked)."""

    parts: int = 0
    gt_defects: int = 0
    reported: int = 0
    false_alarms: int = 0
    matched_gt: int = 0
    class_correct: int = 0
    class_total: int = 0
    imprint_correct: int = 0
    imprint_total: int = 0
    clear_imprint_correct: int = 0  # imprints the generator does not flag as borderline
    clear_imprint_total: int = 0

    @property
    def false_alarms_per_100_parts(self) -> float:
        return 100.0 * self.false_alarms / self.parts if self.parts else 0.0

    @property
    def recall(self) -> float:
        return self.matched_gt / self.gt_defects if self.gt_defects else 1.0

    @property
    def class_accuracy(self) -> float:
        return self.class_correct / self.class_total if self.class_total else 1.0

    @property
    def imprint_class_accuracy(self) -> float:
        return self.imprint_correct / self.imprint_total if self.imprint_total else 1.0

    def summary(self) -> dict[str, Any]:
        return {
            "parts": self.parts,
            "gt_defects": self.gt_defects,
            "reported": self.reported,
            "false_alarms": self.false_alarms,
            "false_alarms_per_100_parts": round(self.false_alarms_per_100_parts, 2),
            "defect_recall": round(self.recall, 4),
            "class_accuracy": round(self.class_accuracy, 4),
            "imprint_class_accuracy": round(self.imprint_class_accuracy, 4),
            "imprint_defects_matched": self.imprint_total,
            "clear_imprint_class_accuracy": (round(self.clear_imprint_correct / self.clear_imprint_total, 4)
                                             if self.clear_imprint_total else None),
        }


def _center_in(box: Sequence[float], gt: Sequence[float]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return gt[0] <= cx <= gt[2] and gt[1] <= cy <= gt[3]


def _match_score(box: Sequence[float], gt: Sequence[float]) -> float:
    """> 0 when the reported box matches the ground-truth box (IoU, or 0.01 when only the centre
    falls inside)."""
    ov = iou(tuple(box), tuple(gt))  # type: ignore[arg-type]
    if ov >= IOU_MATCH:
        return ov
    return 0.01 if _center_in(box, gt) else 0.0


def score_part(gt: GroundTruthPart, reported: Sequence[Reported], score: Score, *,
               per_frame: bool) -> list[tuple[int, int]]:
    """Add one part's matches to `score`; returns the (reported index, gt index) matches.

    per_frame: frame-by-frame reporting — each (defect, frame) may match one detection; a
        ground-truth defect counts as found when matched on any frame.
    """
    score.parts += 1
    score.gt_defects += len(gt.defects)
    score.reported += len(reported)
    pairs = []
    for ri, r in enumerate(reported):
        for gi, d in enumerate(gt.defects):
            best = 0.0
            for fi, box in ((r.frame_index, r.box),) + r.more:
                b = d["boxes"].get(str(fi))
                if b is not None:
                    best = max(best, _match_score(box, b))
            if best > 0:
                pairs.append((best, ri, gi))
    pairs.sort(reverse=True)
    used_r: set[int] = set()
    used_g: set[tuple[int, int]] = set()  # (gt index, frame) for per-frame, (gt index, -1) otherwise
    found: set[int] = set()
    matches: list[tuple[int, int]] = []
    for _s, ri, gi in pairs:
        slot = (gi, reported[ri].frame_index if per_frame else -1)
        if ri in used_r or slot in used_g:
            continue
        matches.append((ri, gi))
        used_r.add(ri)
        used_g.add(slot)
        found.add(gi)
        gcls = gt.defects[gi]["defect_class"]
        pcls = reported[ri].defect_class
        score.class_total += 1
        score.class_correct += int(pcls == gcls)
        if gcls in IMPRINT:
            score.imprint_total += 1
            score.imprint_correct += int(pcls == gcls)
            if gt.defects[gi].get("borderline") is False:
                score.clear_imprint_total += 1
                score.clear_imprint_correct += int(pcls == gcls)
    score.matched_gt += len(found)
    score.false_alarms += len(reported) - len(used_r)
    return matches


def score_defect_events(gt_parts: Iterable[GroundTruthPart], defects: Iterable[dict[str, Any]]) -> Score:
    """Score pipeline DefectEvents (as Avro dicts) against the ground truth of the same parts.

    Parts with no ground truth are ignored; duplicates (same event_id) count once.
    """
    gts = {g.part_id: g for g in gt_parts}
    by_part: dict[str, dict[str, Reported]] = {pid: {} for pid in gts}
    for d in defects:
        g = gts.get(d["part_id"])
        if g is None:
            continue
        try:
            fi = g.frame_seqs.index(int(d["best_frame_seq"]))
        except ValueError:
            fi = -1
        b = d["bbox"]
        by_part[g.part_id][d["event_id"]] = Reported(g.part_id, fi, (b["x0"], b["y0"], b["x1"], b["y1"]), d["defect_class"])
    score = Score()
    for pid, g in gts.items():
        score_part(g, list(by_part[pid].values()), score, per_frame=False)
    return score


# --------------------------------------------------------------------------------------------
# Offline path: Inspector + tracker on rendered sequences, no Kafka
# --------------------------------------------------------------------------------------------
@dataclass
class OfflineConfig:
    parts: int = 500
    seed: int = 1000
    frames_per_part: int = 6
    frame_shape: tuple[int, int] = (256, 512)
    defect_rate: float = 0.5
    frame_ms: float = 100.0
    use_speed: bool = True  # give the tracker the conveyor speed; False = estimate from detections
    progress: bool = True


@dataclass
class OfflineRun:
    """Cached detections of an offline run, so tracker settings can be swept without the model."""

    gts: list[GroundTruthPart] = field(default_factory=list)
    detections: list[list[list[Any]]] = field(default_factory=list)  # part -> frame -> detections
    model_version: str = ""
    inference_s: float = 0.0
    frames: int = 0


def run_offline(inspector: Any, cfg: OfflineConfig) -> OfflineRun:
    """Render `cfg.parts` sequences and run the Inspector on every frame."""
    from models.data.synthetic import render_part_sequence

    run = OfflineRun(model_version=str(inspector.model_version))
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.parts, unit="part", desc="offline", file=sys.stderr)
    for j in range(cfg.parts):
        ps = cfg.seed + j
        seq = render_part_sequence(ps, n_frames=cfg.frames_per_part, frame_shape=cfg.frame_shape,
                                   defect_rate=cfg.defect_rate)
        t0 = time.perf_counter()
        dets = inspector.inspect(seq.frames)
        run.inference_s += time.perf_counter() - t0
        run.frames += len(seq.frames)
        ts = [int(i * cfg.frame_ms) for i in range(cfg.frames_per_part)]
        run.gts.append(GroundTruthPart(
            camera_id="offline", line_id="offline", part_id=f"part-{ps}", seed=ps, family=seq.family,
            frames=cfg.frames_per_part, frame_seqs=ts, capture_ts=ts, speed_px_per_frame=seq.speed_px_per_frame,
            defects=gt_defects(seq), nuisance_boxes=gt_nuisances(seq),
            width=cfg.frame_shape[1], height=cfg.frame_shape[0],
        ))
        run.detections.append([list(d) for d in dets])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return run


CACHE_FORMAT = "defectstream-offline-run/1"


def save_offline_run(run: OfflineRun, key: Sequence[Any], path: str | Path) -> None:
    """Write `run` (and the `key` it was computed under) to `path` as an `.npz` archive.

    No pickle anywhere: the ground truth and detection scalars are one JSON document, the masks one
    flat bool array with per-detection shapes, and `load_offline_run` reads them with
    ``allow_pickle=False`` — a cache file from elsewhere can give wrong numbers, never run code.
    """
    masks: list[np.ndarray] = []
    dets = []
    for part in run.detections:
        dets.append([[[list(map(int, d.bbox)), d.defect_class, float(d.confidence), float(d.severity_mean),
                       float(d.severity_max), int(d.area_px), [float(c) for c in d.class_scores],
                       None if d.mask is None else list(np.asarray(d.mask).shape)] for d in frame] for frame in part])
        masks.extend(np.asarray(d.mask, dtype=bool).ravel() for frame in part for d in frame if d.mask is not None)
    doc = {"format": CACHE_FORMAT, "key": json.loads(json.dumps(list(key))),
           "model_version": run.model_version, "inference_s": run.inference_s, "frames": run.frames,
           "gts": [asdict(g) for g in run.gts], "detections": dets}
    flat = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, doc=np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8), masks=flat)


def load_offline_run(path: str | Path, key: Sequence[Any]) -> OfflineRun | None:
    """The run cached at `path` if it was computed under `key`; None if not, or if the file is unreadable.

    Never unpickles (``allow_pickle=False``): an object array or a pickle file is refused as unreadable.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            doc = json.loads(z["doc"].tobytes().decode())
            flat = z["masks"]
        if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
            raise ValueError(f"not a {CACHE_FORMAT} file")
        if doc.get("key") != json.loads(json.dumps(list(key))):
            return None
        run = OfflineRun(model_version=str(doc["model_version"]), inference_s=float(doc["inference_s"]),
                         frames=int(doc["frames"]), gts=[GroundTruthPart(**g) for g in doc["gts"]])
        pos = 0
        for part in doc["detections"]:
            frames = []
            for frame in part:
                ds = []
                for bbox, cls, conf, smean, smax, area, scores, shape in frame:
                    mask = None  # a box detector's detection (no mask)
                    if shape is not None:
                        n = int(np.prod(shape))
                        mask = flat[pos:pos + n].reshape(shape)
                        pos += n
                    ds.append(Detection(BBox(*bbox), mask, cls, conf, smean, smax, area, tuple(scores)))
                frames.append(ds)
            run.detections.append(frames)
        return run
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        log.warning("ignoring unreadable detection cache %s (%s); recomputing", path, e)
        return None


def score_offline(run: OfflineRun, tracking: TrackingSettings, *, frame_ms: float = 100.0,
                  use_speed: bool = True, vote: "TrackVote | None" = None) -> dict[str, Any]:
    """Frame-by-frame vs tracked scores of a cached offline run under `tracking` settings.

    `vote` (a sequence vote over each confirmed track's crops, `SequenceVote`) adds a third way of reporting,
    ``tracked_sequence_vote``: the same confirmed tracks, classed by the vote instead of confidence x severity.
    """
    tracker = PartTracker(tracking)
    frame_score, tracked_score, voted_score = Score(), Score(), Score()
    # imprint class accuracy of tracks whose frames all agreed vs tracks that flipped mild/severe
    imprint = {"consistent": [0, 0], "flipping": [0, 0]}
    voted_imprint = {"consistent": [0, 0], "flipping": [0, 0]}
    for pi, (gt, dets) in enumerate(zip(run.gts, run.detections)):
        frame_reports = []
        for i, ds in enumerate(dets):
            for d in ds:
                frame_reports.append(Reported(gt.part_id, i, tuple(d.bbox), d.defect_class))
        score_part(gt, frame_reports, frame_score, per_frame=True)
        speed = gt.speed_px_per_frame / (frame_ms / 1000.0) if use_speed else None
        metas = [FrameMeta("offline", "offline", gt.part_id, i, int(i * frame_ms), gt.width, gt.height, i,
                           i == len(dets) - 1, speed) for i in range(len(dets))]
        part, summaries = track_part_offline(tracker, metas, dets, model_version=run.model_version)
        confirmed = [s for s in summaries if s.confirmed]
        tracked = [Reported(gt.part_id, s.best_frame_index, s.best_box, s.defect_class, tuple(s.boxes.items()))
                   for s in confirmed]
        for ri, gi in score_part(gt, tracked, tracked_score, per_frame=False):
            gcls = gt.defects[gi]["defect_class"]
            if gcls in IMPRINT:
                kind = "flipping" if len(set(confirmed[ri].class_votes) & set(IMPRINT)) == 2 else "consistent"
                imprint[kind][0] += int(confirmed[ri].defect_class == gcls)
                imprint[kind][1] += 1
        if vote is not None:
            revoted = [tracker.summarize(part, t, vote=vote(pi, gt, s.boxes)) if s.confirmed else s
                       for t, s in zip(part.tracks, summaries)]
            revoted = [s for s in revoted if s.confirmed]
            reports = [Reported(gt.part_id, s.best_frame_index, s.best_box, s.defect_class, tuple(s.boxes.items()))
                       for s in revoted]
            for ri, gi in score_part(gt, reports, voted_score, per_frame=False):
                gcls = gt.defects[gi]["defect_class"]
                if gcls in IMPRINT:  # flipping = the detector's frames disagreed (the tracker's own votes)
                    kind = "flipping" if len(set(confirmed[ri].class_votes) & set(IMPRINT)) == 2 else "consistent"
                    voted_imprint[kind][0] += int(revoted[ri].defect_class == gcls)
                    voted_imprint[kind][1] += 1
    f, t = frame_score.summary(), tracked_score.summary()
    removed = 1.0 - (t["false_alarms"] / f["false_alarms"]) if f["false_alarms"] else 0.0
    extra: dict[str, Any] = {}
    if vote is not None:
        extra = {"tracked_sequence_vote": voted_score.summary(),
                 "sequence_vote_imprint_tracks": {k: {"correct": c, "total": n,
                                                      "accuracy": round(c / n, 4) if n else None}
                                                  for k, (c, n) in voted_imprint.items()}}
    return {
        "tracking": {"min_hits": tracking.min_hits, "min_hit_ratio": tracking.min_hit_ratio,
                     "short_track_min_confidence": tracking.short_track_min_confidence, "use_speed": use_speed},
        "frame_by_frame": f,
        "tracked": t,
        "false_alarms_removed": round(removed, 4),
        "recall_change_points": round(100 * (t["defect_recall"] - f["defect_recall"]), 2),
        "imprint_tracks": {k: {"correct": c, "total": n, "accuracy": round(c / n, 4) if n else None}
                           for k, (c, n) in imprint.items()},
        "goal_met": bool(removed >= 0.8 and (f["defect_recall"] - t["defect_recall"]) <= 0.01
                         and t["imprint_class_accuracy"] >= 0.95),
        **extra,
    }


TrackVote = Callable[[int, GroundTruthPart, Mapping[int, Sequence[int]]], "Mapping[str, float] | None"]


class SequenceVote:
    """The Inspector's sequence vote (`vote_track`) over a confirmed track's crops of an offline run.

    The frames are rendered again from the part's seed (the run caches detections, not frames); the last part's
    frames are kept, so the tracks of one part render it once.
    """

    def __init__(self, inspector: Any, defect_rate: float) -> None:
        self.inspector, self.defect_rate = inspector, defect_rate
        self._frames: tuple[int, list[np.ndarray]] | None = None

    def __call__(self, part_index: int, gt: GroundTruthPart, boxes: Mapping[int, Sequence[int]]
                 ) -> Mapping[str, float] | None:
        from models.data.synthetic import render_part_sequence

        if self._frames is None or self._frames[0] != part_index:
            seq = render_part_sequence(gt.seed, n_frames=gt.frames, frame_shape=(gt.height, gt.width),
                                       defect_rate=self.defect_rate)
            self._frames = (part_index, seq.frames)
        return self.inspector.vote_track(self._frames[1], boxes)


def sweep_table(rows: Sequence[dict[str, Any]], top: int = 15) -> str:
    """The `top` configurations that remove >= 80 % of false alarms, best recall first (then the rest)."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["false_alarms_removed"] >= 0.8, r["recall_change_points"], r["false_alarms_removed"])

    lines = ["| k | ratio | short-track conf. | FA/100 parts (tracked) | FA removed | recall (pt) | imprint acc. |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=key, reverse=True)[:top]:
        tr, t = r["tracking"], r["tracked"]
        lines.append(f"| {tr['min_hits']} | {tr['min_hit_ratio']} | {tr['short_track_min_confidence']} | "
                     f"{t['false_alarms_per_100_parts']} | {r['false_alarms_removed']:.1%} | "
                     f"{r['recall_change_points']:+} | {t['imprint_class_accuracy']} |")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per scored configuration."""
    head = ("| tracking (k, ratio, short-track conf.) | reporting | FA / 100 parts | defect recall | class acc. | imprint class acc. |\n"
            "|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        tr = r["tracking"]
        k = f"k={tr['min_hits']}, r={tr['min_hit_ratio']}, c={tr['short_track_min_confidence']}"
        for name in ("frame_by_frame", "tracked", "tracked_sequence_vote"):
            if name not in r:
                continue
            s = r[name]
            lines.append(f"| {k} | {name} | {s['false_alarms_per_100_parts']} | {s['defect_recall']} | "
                         f"{s['class_accuracy']} | {s['imprint_class_accuracy']} |")
        lines.append(f"| {k} | **FA removed {r['false_alarms_removed']:.1%}, recall {r['recall_change_points']:+} pt** "
                     f"| | | | goal met: {r['goal_met']} |")
    return "\n".join(lines)


def models_table(results: Sequence[dict[str, Any]]) -> str:
    """One table over several models scored on the same parts (`defectstream score --offline --model A --model B`):
    a line per model and way of reporting, at the default tracking settings."""
    lines = ["| family | model version | reporting | FA / 100 parts | defect recall | class acc. | "
             "imprint mild/severe acc. | ms / frame |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"frame_by_frame": "every detection on every frame", "tracked": "tracked and confirmed",
             "tracked_sequence_vote": "tracked, sequence vote"}
    for res in results:
        row = res["defaults"]
        for key, label in names.items():
            if key not in row:
                continue
            s = row[key]
            lines.append(f"| {res['family']} | {res['model_version']} | {label} | {s['false_alarms_per_100_parts']} | "
                         f"{s['defect_recall']} | {s['class_accuracy']} | {s['imprint_class_accuracy']} | "
                         f"{res['inference_ms_per_frame']} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading pipeline output
# --------------------------------------------------------------------------------------------
def verdict_check(gt_parts: Iterable[GroundTruthPart], verdicts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Exactly one PartInspected per ground-truth part? (re-deliveries of the same event id are
    not duplicates: sinks de-duplicate them)."""
    want = {g.part_id for g in gt_parts}
    ids: dict[str, set[str]] = {}
    for v in verdicts:
        if v["part_id"] in want:
            ids.setdefault(v["part_id"], set()).add(v["event_id"])
    return {
        "parts_in_ground_truth": len(want),
        "parts_with_verdict": len(ids),
        "missing": sorted(want - set(ids))[:20],
        "more_than_one_verdict": sorted(p for p, e in ids.items() if len(e) > 1)[:20],
    }


def read_topic_events(settings: Settings, topic: str, idle_s: float = 5.0, event: str = "DefectEvent") -> list[dict[str, Any]]:
    """Every DefectEvent (or `event`) on `topic` (from the beginning, until no record arrives for `idle_s`)."""
    from schemas.codec import AvroCodec
    from streams.kafka import clients

    codec = AvroCodec(event, clients.framing(settings.kafka))
    consumer = clients.consumer(settings.kafka, topic, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False, consumer_timeout_ms=int(idle_s * 1000))
    try:
        return [codec.decode(m.value) for m in consumer]
    finally:
        consumer.close()


def read_defects_file(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
