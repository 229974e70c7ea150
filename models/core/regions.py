"""From a severity map to defect regions: threshold T, 4-px joining, connected components.

Also holds the choice of T on a validation split (the T that maximises mean IoU), so that
training, evaluation and the Inspector share one definition.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np

from models.core.types import BBox

__all__ = ["Region", "upsample_severity", "regions_from_severity", "binary_from_severity",
           "choose_threshold", "image_iou", "fill_holes", "JOIN_DISTANCE_PX"]

# Components closer than this are joined into one region (He & Liu 2020).
JOIN_DISTANCE_PX = 4


class Region(NamedTuple):
    """One connected defect region on a frame."""

    bbox: BBox
    mask: np.ndarray  # bool (bbox.height, bbox.width)
    area_px: int
    severity_mean: float
    severity_max: float


def upsample_severity(cells: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a per-cell map (h, w) to pixels, cropped to `shape` (H, W)."""
    h, w = cells.shape
    up = cv2.resize(cells.astype(np.float32), (w * stride, h * stride), interpolation=cv2.INTER_LINEAR)
    return up[: shape[0], : shape[1]]


def binary_from_severity(sev_px: np.ndarray, threshold: float) -> np.ndarray:
    return sev_px > threshold


def fill_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """`mask` (bool) with its enclosed holes of at most `max_area` px filled (8-connected mask,
    4-connected holes); background connected to the mask's bounding border is never a hole."""
    if max_area <= 0 or not mask.any():
        return mask
    inv = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    outside = labels[0, 0]
    small = [k for k in range(1, n) if k != outside and stats[k, cv2.CC_STAT_AREA] <= max_area]
    if not small:
        return mask
    return mask | np.isin(labels[1:-1, 1:-1], small)


def regions_from_severity(sev_px: np.ndarray, threshold: float, min_area: int = 12,
                          join_px: int = JOIN_DISTANCE_PX, relative: float = 0.0, low: float = 1.0,
                          hole_area: int = 0) -> list[Region]:
    """Threshold a pixel severity map and split it into regions.

    Components whose pixels are at most `join_px` apart are joined (a dilation by join_px/2 on
    each side bridges the gap); a region's mask keeps only the thresholded pixels, not the
    bridge. With `relative` > 0 a region's mask further keeps only pixels above
    relative * (the region's max severity): a per-region "fraction of peak" boundary, so that a
    low T can find faint defects without bloating the masks of strong ones (our addition to
    the paper's single T; relative=0 is the paper's rule). With `low` < 1 the threshold is a
    hysteresis pair (as in Canny's edge linking): a region is seeded only where the severity
    exceeds T, then grows over the connected pixels above low * T, so the faint stretches of a
    scratch whose strongest part is found stay in its mask, while faint blobs with no pixel
    above T are still dropped (low=1 is the paper's single T). Regions under `min_area` pixels
    are dropped. With `hole_area` > 0 holes of at most that many pixels enclosed by a region's
    mask are filled (the flat centre of a dent, whose severity dips, is part of the defect; our
    addition, 0 is the paper's rule).
    """
    if not 0.0 < low <= 1.0:
        raise ValueError(f"low must be in (0, 1], got {low}")
    seeds = sev_px > threshold
    if not seeds.any():
        return []
    binary = (sev_px > low * threshold).astype(np.uint8) if low < 1.0 else seeds.astype(np.uint8)
    r = max(1, (join_px + 1) // 2)
    grown = cv2.dilate(binary, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
    seeded = set(np.unique(labels[seeds]).tolist()) if low < 1.0 else None
    out: list[Region] = []
    for k in range(1, n):
        if seeded is not None and k not in seeded:
            continue
        x, y, w, h = (int(v) for v in stats[k, :4])
        sub = (labels[y:y + h, x:x + w] == k) & (binary[y:y + h, x:x + w] > 0)
        if relative > 0 and sub.any():
            local = sev_px[y:y + h, x:x + w]
            sub &= local > relative * float(local[sub].max())
        if hole_area > 0:
            sub = fill_holes(sub, hole_area)
        ys, xs = np.nonzero(sub)
        if len(ys) < min_area:
            continue
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        m = sub[y0:y1, x0:x1]
        vals = sev_px[y + y0:y + y1, x + x0:x + x1][m]
        out.append(Region(BBox(x + int(x0), y + int(y0), x + int(x1), y + int(y1)), m, int(m.sum()),
                          float(vals.mean()), float(vals.max())))
    return out


def image_iou(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """Defect IoU of one image; None when neither prediction nor ground truth has a defect."""
    inter = np.logical_and(pred, gt).sum()
    union = np.logical_or(pred, gt).sum()
    return None if union == 0 else float(inter) / float(union)


def choose_threshold(severity_maps: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray],
                     candidates: Sequence[float] | None = None) -> tuple[float, float]:
    """The threshold T maximising mean IoU over a validation split.

    Args:
        severity_maps: pixel severity maps (H, W) in [0, 12].
        gt_masks: matching ground-truth masks (> 0 = defect).
        candidates: thresholds to try (default 0.25 .. 11 in steps of 0.25).
    Returns:
        (T, mean IoU at T); mean IoU over images where prediction or GT has a defect.
    """
    cands = list(candidates) if candidates is not None else [0.25 * i for i in range(1, 45)]
    best = (cands[0], -1.0)
    for t in cands:
        ious = [image_iou(s > t, g > 0) for s, g in zip(severity_maps, gt_masks)]
        vals = [v for v in ious if v is not None]
        m = float(np.mean(vals)) if vals else 1.0
        if m > best[1]:
            best = (float(t), m)
    return best
