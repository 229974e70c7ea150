"""Reviewed production frames → a `plain` data set (`models.data.datasets.read_plain` reads it unchanged).

Read back from the durable store (review_frames + labels), never from the `frames` topic, so a frame
whose original expired long ago still exports. Per frame, the reviewers' judgements become boxes:

* the latest confirm / reject / relabel of each candidate (a later judgement by anyone wins):
  confirm keeps the model's box and class (a confirm of a candidate without a detection, e.g. a
  random good part, says "good" and adds no box), relabel keeps the box with the new class, reject
  drops it;
* every "missed" box is added with its class.

A frame with no box left is a defect-free example (no mask file, as `read_plain` expects). Masks
are the boxes filled with their class id (1 = first line of classes.txt), later boxes over earlier
ones. Only judged boxes are written: a model detection on the frame that was never queued for
review counts as background (the reviewer saw it drawn on the frame and could have marked it as
missed). `manifest.json` lists every frame with its reviewers, labels, boxes, model version
and run; frames that could not be written are listed under `skipped` with the reason.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from sinks.sql import Executor
from streams.review import queries as q


def frame_boxes(labels: Sequence[q.Label]) -> list[tuple[str, q.Box]]:
    """The (class, box) pairs the labels of one frame leave (see module doc), in a stable order."""
    latest: dict[str, q.Label] = {}
    missed: list[q.Label] = []
    for lb in sorted(labels, key=lambda x: (x.created_at, x.label_id)):
        if lb.action == "missed":
            missed.append(lb)
        elif lb.action in q.DONE_ACTIONS:
            latest[lb.candidate_id] = lb
    out = []
    for lb in sorted(latest.values(), key=lambda x: (x.created_at, x.label_id)):
        if lb.action in ("confirm", "relabel") and lb.defect_class and not lb.box.empty:
            out.append((lb.defect_class, lb.box))
    out += [(lb.defect_class, lb.box) for lb in missed if lb.defect_class and not lb.box.empty]
    return out


def decode(img: q.FrameImage) -> np.ndarray:
    """The stored bytes as pixels (grey (H, W) or RGB (H, W, 3) as cv2 writes them back, BGR order).

    Raises:
        ValueError: the bytes are not an image of the stored size.
    """
    if img.encoding.upper() == "RAW":
        if len(img.data) != img.width * img.height * img.channels:
            raise ValueError(f"RAW frame has {len(img.data)} bytes, header says {img.width}x{img.height}x{img.channels}")
        arr = np.frombuffer(img.data, np.uint8).reshape(img.height, img.width, img.channels)
        return arr[:, :, 0] if img.channels == 1 else arr[:, :, ::-1]
    arr = cv2.imdecode(np.frombuffer(img.data, np.uint8), cv2.IMREAD_GRAYSCALE if img.channels == 1 else cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError(f"{img.encoding} bytes do not decode")
    if arr.shape[:2] != (img.height, img.width):
        raise ValueError(f"decoded {arr.shape[1]}x{arr.shape[0]}, header says {img.width}x{img.height}")
    return arr


def export_dataset(ex: Executor, out: str | Path, since_ms: int, until_ms: int, *,
                   cameras: Sequence[str] | None = None, clock: Any = time.time) -> dict[str, Any]:
    """Write the frames captured in [since, until) that carry at least one label into `out`.

    Returns the manifest (also written to `out/manifest.json`). Idempotent: the same store gives the
    same files (file names are frame ids; classes sorted).
    """
    out = Path(out)
    labels = q.fetch_labels_in_range(ex, since_ms, until_ms, cameras)
    by_frame: dict[str, list[q.Label]] = {}
    for lb in labels:
        by_frame.setdefault(lb.frame_id, []).append(lb)
    infos = q.fetch_frames(ex, list(by_frame)) if by_frame else {}
    boxes = {fid: frame_boxes(lbs) for fid, lbs in by_frame.items()}
    classes = sorted({c for bs in boxes.values() for c, _b in bs})
    class_id = {c: i + 1 for i, c in enumerate(classes)}
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    frames, skipped = [], []
    for fid in sorted(by_frame, key=lambda f: (infos[f].capture_ts if f in infos else 0, f)):
        info = infos.get(fid)
        img = q.fetch_image(ex, fid) if info else None
        if info is None or img is None:
            skipped.append({"frame_id": fid, "reason": "frame not in review_frames"})
            continue
        try:
            pixels = decode(img)
        except ValueError as exc:
            skipped.append({"frame_id": fid, "reason": str(exc)})
            continue
        cv2.imwrite(str(out / "images" / f"{fid}.png"), pixels)
        fb = boxes[fid]
        if fb:
            mask = np.zeros(pixels.shape[:2], np.uint8)
            for cls, b in fb:
                mask[b.y0:b.y1, b.x0:b.x1] = class_id[cls]
            cv2.imwrite(str(out / "masks" / f"{fid}.png"), mask)
        lbs = by_frame[fid]
        frames.append({
            "frame_id": fid, "image": f"images/{fid}.png", "mask": f"masks/{fid}.png" if fb else None,
            "camera_id": info.camera_id, "line_id": info.line_id, "part_id": info.part_id, "frame_seq": info.frame_seq,
            "capture_ts": info.capture_ts, "model_version": info.model_version, "run_id": info.run_id,
            "reviewers": sorted({lb.reviewer for lb in lbs}),
            "boxes": [{"class": c, "box": list(b)} for c, b in fb],
            "labels": [{"label_id": lb.label_id, "candidate_id": lb.candidate_id, "action": lb.action,
                        "class": lb.defect_class, "box": list(lb.box), "reviewer": lb.reviewer,
                        "created_at": lb.created_at} for lb in sorted(lbs, key=lambda x: (x.created_at, x.label_id))],
        })
    manifest = {
        "format": "plain", "since_ms": since_ms, "until_ms": until_ms, "cameras": list(cameras) if cameras else None,
        "exported_at": int(clock() * 1000), "classes": classes, "frames_total": len(frames),
        "defect_frames": sum(1 for f in frames if f["boxes"]), "boxes": sum(len(f["boxes"]) for f in frames),
        "reviewers": sorted({r for f in frames for r in f["reviewers"]}),
        "model_versions": sorted({f["model_version"] for f in frames}), "frames": frames, "skipped": skipped,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest
