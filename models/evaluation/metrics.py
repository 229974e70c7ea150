"""Evaluation metrics: the one AUROC and AP, mask/box IoU and greedy matching, class maps and per-class IoU/Dice.

What each figure means is in `models.evaluation.evaluate` (the report that combines them).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from models.core.types import BBox, InspectionSample, box_iou

__all__ = ["GOOD", "PredictedDefect", "labels_scores", "image_auroc", "average_precision", "mask_iou", "iou_matrix",
           "greedy_matches", "by_confidence", "pred_mask", "pred_class_map", "gt_class_map", "gt_mask", "image_class",
           "class_metrics", "BoxMAP"]

GOOD = "good"  # image class of an image without defects


class PredictedDefect(NamedTuple):
    bbox: BBox
    mask: np.ndarray  # bool, bbox-cropped
    defect_class: str | None  # None for class-agnostic predictors
    confidence: float | None = None  # None where the predictor has none


def labels_scores(labels: Sequence[bool | int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return y, s


def image_auroc(labels: Sequence[bool | int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted 1/2
    (Mann-Whitney U / (n_pos * n_neg), from average ranks). None when only one label occurs."""
    y, s = labels_scores(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, np.float64)
    # average rank (1-based) of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2.0
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(labels: Sequence[bool | int], scores: Sequence[float]) -> float | None:
    """AP = sum over distinct score thresholds (descending) of (R_k - R_{k-1}) * P_k, tied scores
    forming one threshold (sklearn's `average_precision_score`). None when only one label occurs."""
    y, s = labels_scores(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    precision = tps / (last_of_run + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# ------------------------------------------------------------------ matching helpers
def mask_iou(gt_full: np.ndarray, p: PredictedDefect) -> float:
    b = p.bbox
    sub = gt_full[b.y0:b.y1, b.x0:b.x1]
    inter = int(np.logical_and(sub, p.mask).sum())
    union = int(gt_full.sum()) + int(p.mask.sum()) - inter
    return inter / union if union else 0.0


def iou_matrix(sample: InspectionSample, preds: Sequence[PredictedDefect]) -> np.ndarray:
    n_gt = len(sample.boxes)
    m = np.zeros((n_gt, len(preds)), np.float64)
    if not n_gt or not preds:
        return m
    use_masks = sample.instance_mask is not None
    for i, (gb, _) in enumerate(sample.boxes):
        gt_full = (sample.instance_mask == i + 1) if use_masks else None
        for j, p in enumerate(preds):
            if box_iou(gb, p.bbox) == 0:
                continue
            m[i, j] = mask_iou(gt_full, p) if use_masks else box_iou(gb, p.bbox)
    return m


def greedy_matches(iou: np.ndarray, thr: float, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
    pairs = []
    if iou.size == 0:
        return pairs
    cand = np.argwhere(iou >= thr)
    order = sorted(cand.tolist(), key=lambda ij: -iou[ij[0], ij[1]])
    used_g, used_p = set(), set()
    for i, j in order:
        if i in used_g or j in used_p or (allowed is not None and not allowed[i, j]):
            continue
        used_g.add(i)
        used_p.add(j)
        pairs.append((i, j))
    return pairs


def by_confidence(preds: Sequence[PredictedDefect]) -> list[PredictedDefect]:
    """Ascending confidence (None first), stable: painting in this order lets the most confident win."""
    return sorted(preds, key=lambda p: -1.0 if p.confidence is None else float(p.confidence))


def pred_mask(shape: tuple[int, int], preds: Sequence[PredictedDefect]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for p in preds:
        b = p.bbox
        m[b.y0:b.y1, b.x0:b.x1] |= p.mask
    return m


def pred_class_map(shape: tuple[int, int], preds: Sequence[PredictedDefect], names: Sequence[str]) -> np.ndarray:
    """0 = background, i+1 = names[i], len(names)+1 = a class the dataset does not know."""
    ids = {n: i + 1 for i, n in enumerate(names)}
    unknown = len(names) + 1
    m = np.zeros(shape, np.int64)
    for p in by_confidence(preds):
        b = p.bbox
        m[b.y0:b.y1, b.x0:b.x1][p.mask.astype(bool)] = ids.get(p.defect_class, unknown) if p.defect_class else unknown
    return m


def gt_class_map(sample: InspectionSample) -> np.ndarray:
    if sample.class_mask is not None:
        return sample.class_mask.astype(np.int64)
    m = np.zeros(sample.image.shape[:2], np.int64)
    for b, c in sample.boxes:
        m[b.y0:b.y1, b.x0:b.x1] = c
    return m


def gt_mask(sample: InspectionSample) -> np.ndarray:
    if sample.class_mask is not None:
        return sample.class_mask > 0
    m = np.zeros(sample.image.shape[:2], bool)
    for b, _ in sample.boxes:
        m[b.y0:b.y1, b.x0:b.x1] = True
    return m


def image_class(preds: Sequence[PredictedDefect]) -> str:
    """Class of the highest-confidence detection (the first on equal confidence); GOOD when none."""
    if not preds:
        return GOOD
    def rank(j: int) -> tuple[float, int]:
        c = preds[j].confidence
        return (-1.0 if c is None else float(c), -j)

    return str(preds[max(range(len(preds)), key=rank)].defect_class)


def class_metrics(conf: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Per-class IoU/Dice from a (K+1) x (K+2) pixel confusion (rows gt 0..K, columns pred 0..K+1)."""
    k = len(names)
    out: dict[str, Any] = {}
    ious: list[float] = []
    dices: list[float] = []
    for c in range(k + 1):
        inter = float(conf[c, c])
        gt_n = float(conf[c, :].sum())
        pr_n = float(conf[:, c].sum())
        union = gt_n + pr_n - inter
        iou = inter / union if union else None
        dice = 2 * inter / (gt_n + pr_n) if gt_n + pr_n else None
        if c == 0:
            out["iou_background"] = iou
            bg_iou = iou
            continue
        out[f"iou[{names[c - 1]}]"] = iou
        out[f"dice[{names[c - 1]}]"] = dice
        if iou is not None:
            ious.append(iou)
        if dice is not None:
            dices.append(dice)
    with_bg = ious + ([bg_iou] if bg_iou is not None else [])
    out["miou_classes_with_background"] = float(np.mean(with_bg)) if with_bg else None
    out["miou_classes"] = float(np.mean(ious)) if ious else None
    out["mean_dice_classes"] = float(np.mean(dices)) if dices else None
    return out


# ------------------------------------------------------------------ worst examples


class BoxMAP:
    """COCO-style box mAP over a split, by torchmetrics' `MeanAveragePrecision` (pycocotools backend), not AP
    written by hand: `add` one image's scored boxes and its ground truth, `compute` -> {"map_50", "map_50_95"}
    (mAP at IoU 0.5 and averaged over 0.50:0.05:0.95, classes averaged as COCO does), None when no
    ground-truth box was added.

    Class names map to ids in order of first sight (predicted classes the data does not know count as false
    positives of their own class). Images are accumulated one by one; only the boxes are kept.
    """

    def __init__(self) -> None:
        from torchmetrics.detection import MeanAveragePrecision  # declared dependency; imported when evaluating

        self._metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        self._ids: dict[str, int] = {}
        self._gt_boxes = 0

    def _id(self, name: str) -> int:
        return self._ids.setdefault(str(name), len(self._ids))

    def add(self, pred: Sequence[tuple[Sequence[float], str, float]], gt: Sequence[tuple[Sequence[float], str]]) -> None:
        """One image: predictions (box x0 y0 x1 y1, class, score) and ground truth (box, class)."""
        import torch

        def boxes(rows: Sequence[Any]) -> "torch.Tensor":
            return torch.tensor([[float(v) for v in r[0]] for r in rows], dtype=torch.float32).reshape(-1, 4)

        self._metric.update(
            [{"boxes": boxes(pred), "scores": torch.tensor([float(r[2]) for r in pred], dtype=torch.float32),
              "labels": torch.tensor([self._id(r[1]) for r in pred], dtype=torch.int64)}],
            [{"boxes": boxes(gt), "labels": torch.tensor([self._id(r[1]) for r in gt], dtype=torch.int64)}])
        self._gt_boxes += len(gt)

    def compute(self) -> dict[str, float | None]:
        if not self._gt_boxes:
            return {"map_50": None, "map_50_95": None}
        r = self._metric.compute()
        return {"map_50": float(r["map_50"]), "map_50_95": float(r["map"])}
