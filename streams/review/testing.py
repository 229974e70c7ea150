"""Test doubles of the review loop: tiny sampled frames and candidates, written as the sink writes them.

Used by the integration and browser tests and the web benchmark; nothing here runs in production.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from schemas.events import ReviewCandidate, ReviewFrame, deterministic_id, review_frame_id


def tiny_png(width: int = 96, height: int = 48, *, seed: int = 0, boxes: Sequence[tuple[int, int, int, int]] = ()) -> bytes:
    """A grey PNG: seeded texture with a dark blob in each box (what a defect looks like to a reviewer)."""
    rng = np.random.default_rng(seed)
    img = (120 + rng.integers(-12, 12, (height, width))).astype(np.uint8)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1, x0:x1] = 30
    ok, png = cv2.imencode(".png", img)
    assert ok
    return png.tobytes()


def make_review(camera: str, part: str, seq: int, ts_ms: int, *, line: str = "line-1", reason: str = "uncertain",
                detections: Sequence[tuple[str, float, tuple[int, int, int, int]]] = (("crack", 0.5, (20, 10, 40, 30)),),
                model_version: str = "m1", run_id: str = "production", width: int = 96, height: int = 48,
                score: float = 0.9, image: bytes | None = None, note: str = "") -> tuple[ReviewFrame, ReviewCandidate]:
    """One sampled frame and its candidate (for the first detection, none when `detections` is empty)."""
    fid = review_frame_id(camera, part, seq)
    boxes = [b for _c, _p, b in detections]
    frame = ReviewFrame(
        frame_id=fid, camera_id=camera, line_id=line, part_id=part, frame_seq=seq, capture_ts=ts_ms, encoding="PNG",
        width=width, height=height, channels=1, image=image if image is not None else tiny_png(width, height, seed=seq, boxes=boxes),
        model_version=model_version, run_id=run_id, sampled_at=ts_ms + 5, frame_index=seq,
        det_class=[c for c, _p, _b in detections], det_confidence=[float(p) for _c, p, _b in detections],
        det_x0=[b[0] for b in boxes], det_y0=[b[1] for b in boxes], det_x1=[b[2] for b in boxes], det_y1=[b[3] for b in boxes])
    cls, conf, box = detections[0] if detections else ("", 0.0, (0, 0, 0, 0))
    cand = ReviewCandidate(
        candidate_id=deterministic_id("candidate", fid, reason), frame_id=fid, reason=reason, score=score, camera_id=camera,
        line_id=line, part_id=part, frame_seq=seq, capture_ts=ts_ms, model_version=model_version, run_id=run_id,
        created_at=ts_ms + 5, defect_class=cls, confidence=float(conf), bbox_x0=box[0], bbox_y0=box[1], bbox_x1=box[2],
        bbox_y1=box[3], note=note)
    return frame, cand


def seed_review(ex: Any, frames: Iterable[ReviewFrame], candidates: Iterable[ReviewCandidate], *,
                ingested_at: int = 1) -> dict[str, int]:
    """Insert frames and candidates with the sink's row mapping (the same rows `defectstream sink` writes)."""
    from sinks.clickhouse import REVIEW_FRAME_COLUMNS, REVIEW_QUEUE_COLUMNS, review_candidate_row, review_frame_row

    return {"review_frames": ex.insert("review_frames", REVIEW_FRAME_COLUMNS,
                                       [review_frame_row(f, ingested_at) for f in frames]),
            "review_queue": ex.insert("review_queue", REVIEW_QUEUE_COLUMNS,
                                      [review_candidate_row(c, ingested_at) for c in candidates])}
