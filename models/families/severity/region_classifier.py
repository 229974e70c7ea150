"""Defect-type classifier over N defect classes + background, and its crop sampling.

A region is cut into 64x64 crops by a sliding window: the window starts at 64 px and is
doubled (then the crop is resized down to 64) while the region does not fit, up to
`MAX_WINDOW`; longer regions are covered by several windows with half overlap. The class is
the soft vote (mean probability) over the region's crops; a background win removes the region
as a false positive. Each crop has two channels: the grey crop (minus its median, so the
lamp level does not matter while the defect's contrast, which tells mild from severe imprints,
is kept) and the region's mask.
"""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.types import BBox

__all__ = ["CROP", "MAX_WINDOW", "ClassifierOutput", "DefectClassifier", "build_classifier", "region_crops",
           "crop_windows"]

CROP = 64
MAX_WINDOW = 256


class ClassifierOutput(NamedTuple):
    logits: torch.Tensor  # (N, n_classes + 1); index 0 = background
    probs: torch.Tensor


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DefectClassifier(nn.Module):
    """Small VGG-style CNN on 2 x 64 x 64 crops; class 0 is background."""

    def __init__(self, n_classes: int, width: int = 24, in_channels: int = 2) -> None:
        super().__init__()
        self.n_classes = n_classes
        w = width
        self.features = nn.Sequential(_block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w), _block(4 * w, 4 * w))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w * 2, n_classes + 1))

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        f = self.features(x)
        # mean + max pooling: keeps both the defect's extent and its peak contrast
        f = torch.cat([F.adaptive_avg_pool2d(f, 1), F.adaptive_max_pool2d(f, 1)], 1)
        logits = self.head(f)
        return ClassifierOutput(logits, logits.softmax(1))


def build_classifier(n_classes: int, width: int = 24, in_channels: int = 2) -> DefectClassifier:
    return DefectClassifier(n_classes=n_classes, width=width, in_channels=in_channels)


def crop_windows(bbox: BBox, frame_shape: tuple[int, int], crop: int = CROP, max_window: int = MAX_WINDOW,
                 jitter: tuple[int, int] = (0, 0)) -> list[BBox]:
    """Windows (square, inside the frame where possible) covering a region's box.

    The window doubles from `crop` while the box does not fit, up to `max_window`; a box still
    larger is covered by windows sliding with half overlap along its long side(s).
    """
    H, W = frame_shape
    win = crop
    while (bbox.width > win or bbox.height > win) and win < max_window:
        win *= 2
    win = min(win, max(H, W))

    def starts(lo: int, hi: int, limit: int) -> list[int]:
        size = hi - lo
        if size <= win:
            c = (lo + hi) // 2 - win // 2
            return [c]
        step = win // 2
        n = int(np.ceil((size - win) / step)) + 1
        return [lo + min(i * step, size - win) for i in range(n)]

    out = []
    for y in starts(bbox.y0, bbox.y1, H):
        for x in starts(bbox.x0, bbox.x1, W):
            y, x = y + jitter[0], x + jitter[1]
            y = int(min(max(y, 0), max(H - win, 0)))
            x = int(min(max(x, 0), max(W - win, 0)))
            out.append(BBox(x, y, x + win, y + win))
    return out


def region_crops(grey: np.ndarray, region_mask_full: np.ndarray | None, bbox: BBox, region_mask: np.ndarray | None = None,
                 crop: int = CROP, jitter: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Cut the 2-channel crops (float32 (k, 2, crop, crop)) of one region.

    Args:
        grey: uint8 (H, W) frame.
        region_mask_full: bool (H, W) mask of this region, or None to build it from
            `region_mask` (bool, bbox-cropped).
        bbox: the region's box.
    """
    H, W = grey.shape
    out = []
    for wb in crop_windows(bbox, (H, W), crop, jitter=jitter):
        # cut first, convert after: only the window is converted to float32 (not the whole frame per window), and
        # a bbox-cropped mask is pasted into the window (no frame-sized mask per region); same values as before
        g = _cut(grey, wb).astype(np.float32)
        if region_mask_full is not None:
            m = _cut(region_mask_full, wb).astype(np.float32)
        else:
            m = _cut_window_mask(region_mask, bbox, wb, (H, W))
        if g.shape[0] != crop:
            g = cv2.resize(g, (crop, crop), interpolation=cv2.INTER_AREA)
            m = cv2.resize(m, (crop, crop), interpolation=cv2.INTER_AREA)
        g = (g - float(np.median(g))) / 40.0
        out.append(np.stack([g, m]))
    return np.stack(out).astype(np.float32)


def _cut_window_mask(region_mask: np.ndarray | None, bbox: BBox, wb: BBox, shape: tuple[int, int]) -> np.ndarray:
    """`_cut` of the frame-sized float32 mask that holds `region_mask` at `bbox` (zeros elsewhere), built from
    the window alone."""
    H, W = shape
    ya, xa, yb, xb = max(0, wb.y0), max(0, wb.x0), min(H, wb.y1), min(W, wb.x1)
    m = np.zeros((max(0, yb - ya), max(0, xb - xa)), np.float32)
    if region_mask is not None:
        y0, x0 = max(ya, bbox.y0), max(xa, bbox.x0)
        y1, x1 = min(yb, bbox.y1, bbox.y0 + region_mask.shape[0]), min(xb, bbox.x1, bbox.x0 + region_mask.shape[1])
        if y1 > y0 and x1 > x0:
            m[y0 - ya:y1 - ya, x0 - xa:x1 - xa] = region_mask[y0 - bbox.y0:y1 - bbox.y0, x0 - bbox.x0:x1 - bbox.x0]
    pad = ((ya - wb.y0, wb.y1 - yb), (xa - wb.x0, wb.x1 - xb))
    if any(p for pp in pad for p in pp):
        m = np.pad(m, pad, mode="edge")
    return m


def _cut(a: np.ndarray, b: BBox) -> np.ndarray:
    """Crop with zero/edge padding where the window leaves the frame (frames smaller than it)."""
    H, W = a.shape
    ya, xa, yb, xb = max(0, b.y0), max(0, b.x0), min(H, b.y1), min(W, b.x1)
    c = a[ya:yb, xa:xb]
    pad = ((ya - b.y0, b.y1 - yb), (xa - b.x0, b.x1 - xb))
    if any(p for pp in pad for p in pp):
        c = np.pad(c, pad, mode="edge")
    return c
