"""Evaluation reports of any Inspector (or a trivial intensity-threshold baseline) on annotated samples.

The metrics themselves are in `models.evaluation.metrics`, the example overlays in
`models.evaluation.overlays`; both are re-exported here.

Metrics (He & Liu 2020, section on evaluation, plus the figures the dataset targets use):
- pixel precision / recall / F1 over all pixels of the split (defect vs background);
  `dice_defect` is the same binary Dice (= F1) under the name segmentation papers use;
- mean IoU: per-image defect IoU averaged over the images where ground truth or prediction
  holds a defect (clean images predicted clean are skipped); `miou_2class` is the usual
  mean of background and defect IoU over the split;
- per-class pixel IoU and Dice (`iou[<class>]`, `dice[<class>]`) for every dataset class and
  `iou_background`, from one class confusion accumulated over the whole split (not per image).
  The predicted class map paints each detection's mask with the id of its `defect_class`
  (higher confidence painted last, so it wins overlaps); a class the dataset does not know
  counts as a wrong class. `miou_classes_with_background` is the mean over background and every
  class (the NEU-Seg figure), `miou_classes` and `mean_dice_classes` the means over the defect
  classes; a class absent from both ground truth and prediction has no IoU/Dice (None) and is
  left out of the means. Class-agnostic predictors get none of these;
- image-level AUROC and AP (`image_auroc`, `image_ap`) of the per-image defect score against
  "the image has a ground-truth defect": AUROC is the Mann-Whitney statistic with ties counted
  1/2, AP the step-wise area of the precision-recall curve with tied scores as one threshold
  (as sklearn's `average_precision_score`); None without scores or when only one label occurs;
- `image_accuracy` for one-class-per-image data (every image holds boxes of at most one class):
  the share of images whose predicted class (the class of the highest-confidence detection,
  "good" when none) equals the ground-truth class ("good" without boxes); None otherwise.
  `image_defect_accuracy`: share of images where "any detection" equals "any ground truth";
- AR: defect-level recall averaged over IoU thresholds 0.50:0.05:0.95 (COCO-style average
  recall; our reading of the paper's eq. 3, class-agnostic);
- defect-level recall / precision at IoU >= 0.5, class-agnostic and with class (greedy
  one-to-one matching by IoU; mask IoU where instance masks exist, box IoU otherwise);
- confusion matrix (rows ground truth + "background" for false positives, columns
  prediction + "missed") over class-agnostic matches, classification accuracy on them;
- box mAP (`map_50`, `map_50_95`): COCO-style mean average precision at IoU 0.5 and over 0.50:0.05:0.95 by
  torchmetrics' `MeanAveragePrecision` (pycocotools), over the detections' boxes ranked by confidence (a box
  detector's: every box above its score floor, not only those above its threshold); None without ground-truth
  boxes or for class-agnostic predictors and predictors without confidences;
- images/s of the whole pipeline.

On box-only data (no class mask) every pixel metric takes the ground truth from the filled
boxes (meta `pixel_metrics_from: boxes`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Sequence, Union

import cv2
import numpy as np

from models.core.regions import Region, choose_threshold, image_iou, regions_from_severity
from models.core.types import Detection, InspectionSample
from models.evaluation.metrics import (GOOD, BoxMAP, PredictedDefect, average_precision, class_metrics, greedy_matches,
                                       gt_class_map, gt_mask, image_auroc, image_class, iou_matrix, pred_class_map,
                                       pred_mask)
from models.evaluation.overlays import ExampleCollector, overlay

__all__ = ["PredictedDefect", "ScoredPredictions", "evaluate_predictions", "evaluate_inspector",
           "ThresholdBaseline", "EvalReport", "ExampleCollector", "image_auroc", "average_precision",
           "to_markdown", "overlay"]

class ScoredPredictions(NamedTuple):
    """What a scored predictor returns: detections per image and a defect score per image, and optionally every
    detection above a low score floor (`ranked`, what box mAP ranks; default: `preds`)."""

    preds: list[list[PredictedDefect]]
    scores: list[float]
    ranked: list[list[PredictedDefect]] | None = None


# A predictor: images -> detections per image, or (detections, scores) for image-level AUROC/AP.
Predictor = Callable[[list[np.ndarray]], Union[list[list[PredictedDefect]], ScoredPredictions,
                                                tuple[list[list[PredictedDefect]], list[float]]]]


@dataclass
class EvalReport:
    metrics: dict[str, Any]
    confusion: dict[str, dict[str, int]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "confusion": self.confusion, "meta": self.meta}


# ------------------------------------------------------------------ image-level ranking metrics
def evaluate_predictions(samples: Iterable[InspectionSample], predict: Predictor,
                         model_class_names: Sequence[str] | None, batch: int = 8,
                         examples: ExampleCollector | None = None) -> EvalReport:
    """Run `predict` over samples (in batches) and compute every metric of the module doc.

    Args:
        samples: annotated images, streamed (only one batch is held at a time).
        predict: images -> one list of `PredictedDefect` per image (a plain list), or a
            `ScoredPredictions` / `(preds, scores)` tuple that adds a per-image defect score
            (image-level AUROC/AP are None without scores).
        model_class_names: the classes the predictor can report; None for a class-agnostic one
            (no class metrics then).
        examples: when given, offered every image (worst false positives / negatives kept).
    """
    tp = fp = fn = 0
    ious: list[float] = []
    bg_inter = bg_union = 0
    n_gt = n_pred = 0
    ar_thr = np.arange(0.5, 0.951, 0.05)
    ar_hits = np.zeros(len(ar_thr))
    hit_any = hit_cls = pred_any = pred_cls = 0
    n_img = 0
    seconds = 0.0
    data_names: tuple[str, ...] = ()
    conf: dict[str, dict[str, int]] = {}
    with_class = model_class_names is not None
    box_only = False
    labels: list[bool] = []
    scores: list[float] = []
    scored = True
    class_conf: np.ndarray | None = None
    one_class_per_image = True
    img_cls_hits = img_def_hits = 0
    box_map = BoxMAP() if with_class else None

    def bump(r: str, c: str) -> None:
        conf.setdefault(r, {})
        conf[r][c] = conf[r].get(c, 0) + 1

    it = iter(samples)
    while True:
        chunk = [s for _, s in zip(range(batch), it)]
        if not chunk:
            break
        t0 = time.perf_counter()
        out = predict([s.image for s in chunk])
        seconds += time.perf_counter() - t0
        ranked_all = None
        if isinstance(out, ScoredPredictions):
            preds_all, chunk_scores, ranked_all = out
            chunk_scores = [float(v) for v in chunk_scores]
            if len(chunk_scores) != len(chunk):
                raise ValueError(f"predictor returned {len(chunk_scores)} scores for {len(chunk)} images")
        elif isinstance(out, tuple):
            preds_all, chunk_scores = out
            chunk_scores = [float(v) for v in chunk_scores]
            if len(chunk_scores) != len(chunk):
                raise ValueError(f"predictor returned {len(chunk_scores)} scores for {len(chunk)} images")
        else:
            preds_all, chunk_scores = out, [None] * len(chunk)
            scored = False
        if len(preds_all) != len(chunk):
            raise ValueError(f"predictor returned {len(preds_all)} results for {len(chunk)} images")
        for k_img, (s, preds, score) in enumerate(zip(chunk, preds_all, chunk_scores)):
            preds = [p if isinstance(p, PredictedDefect) else PredictedDefect(*p) for p in preds]
            if box_map is not None:
                ranked = preds if ranked_all is None else ranked_all[k_img]
                if any(p.confidence is None for p in ranked):
                    box_map = None  # a predictor without confidences cannot be ranked
                else:
                    box_map.add([(tuple(p.bbox), str(p.defect_class), float(p.confidence)) for p in ranked],
                                [(tuple(b), s.class_names[c - 1] if 0 < c <= len(s.class_names) else str(c))
                                 for b, c in s.boxes])
            n_img += 1
            if not data_names:
                data_names = s.class_names
            box_only |= s.class_mask is None
            gt = gt_mask(s)
            pm = pred_mask(gt.shape, preds)
            tp += int(np.logical_and(pm, gt).sum())
            fp += int(np.logical_and(pm, ~gt).sum())
            fn += int(np.logical_and(~pm, gt).sum())
            bg_inter += int(np.logical_and(~pm, ~gt).sum())
            bg_union += int(np.logical_or(~pm, ~gt).sum())
            v = image_iou(pm, gt)
            if v is not None:
                ious.append(v)
            has_defect = bool(s.boxes) or bool(gt.any())
            labels.append(has_defect)
            if score is not None:
                scores.append(score)
            img_def_hits += int(bool(preds) == has_defect)
            if with_class:
                k = len(data_names)
                if class_conf is None:
                    class_conf = np.zeros((k + 1, k + 2), np.int64)
                gcm = np.clip(gt_class_map(s), 0, k)
                pcm = pred_class_map(gt.shape, preds, data_names)
                pair_ids = (gcm * (k + 2) + pcm).ravel()
                class_conf += np.bincount(pair_ids, minlength=(k + 1) * (k + 2)).reshape(k + 1, k + 2)
            gt_ids = {c for _, c in s.boxes}
            one_class_per_image &= len(gt_ids) <= 1
            if one_class_per_image and with_class:
                (cid,) = gt_ids or {0}
                gt_cls = GOOD if cid == 0 else (s.class_names[cid - 1] if cid <= len(s.class_names) else str(cid))
                img_cls_hits += int(image_class(preds) == gt_cls)
            if examples is not None:
                examples.offer(s, gt, pm, preds, score)
            iou = iou_matrix(s, preds)
            n_gt += len(s.boxes)
            n_pred += len(preds)
            for kk, t in enumerate(ar_thr):
                ar_hits[kk] += len(greedy_matches(iou, float(t)))
            pairs = greedy_matches(iou, 0.5)
            hit_any += len(pairs)
            gt_names = [s.class_names[c - 1] if 0 < c <= len(s.class_names) else str(c) for _, c in s.boxes]
            if with_class:
                allowed = np.array([[p.defect_class == g for p in preds] for g in gt_names], bool).reshape(iou.shape)
                hit_cls += len(greedy_matches(iou, 0.5, allowed))
            matched_g = {i for i, _ in pairs}
            matched_p = {j for _, j in pairs}
            for i, j in pairs:
                bump(gt_names[i], str(preds[j].defect_class))
                if preds[j].defect_class == gt_names[i]:
                    pred_cls += 1
            for i in range(len(s.boxes)):
                if i not in matched_g:
                    bump(gt_names[i], "missed")
            for j in range(len(preds)):
                if j not in matched_p:
                    bump("background", str(preds[j].defect_class))
            pred_any += len(matched_p)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    iou_def = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    iou_bg = bg_inter / bg_union if bg_union else 1.0
    scored = scored and n_img > 0
    metrics: dict[str, Any] = {
        "images": n_img,
        "pixel_precision": prec, "pixel_recall": rec, "pixel_f1": f1,
        "dice_defect": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "mean_iou": float(np.mean(ious)) if ious else 1.0,
        "iou_defect": iou_def, "miou_2class": (iou_def + iou_bg) / 2,
        "image_auroc": image_auroc(labels, scores) if scored else None,
        "image_ap": average_precision(labels, scores) if scored else None,
        "image_defect_accuracy": img_def_hits / n_img if n_img else None,
        "ar": float(ar_hits.mean() / n_gt) if n_gt else 1.0,
        "gt_defects": n_gt, "predicted_defects": n_pred,
        "defect_recall_iou50": hit_any / n_gt if n_gt else 1.0,
        "defect_precision_iou50": pred_any / n_pred if n_pred else 1.0,
        "images_per_s": n_img / seconds if seconds else 0.0,
    }
    if box_map is not None:  # COCO box mAP (torchmetrics / pycocotools), classes by name
        metrics.update(box_map.compute())
    if with_class:
        metrics["image_accuracy"] = img_cls_hits / n_img if one_class_per_image and n_img else None
        if class_conf is not None:
            metrics.update(class_metrics(class_conf, data_names))
    # the class-agnostic (pooled) figures beside the per-class ones: every defect pixel of any class counts,
    # whatever class was predicted for it (what a plant that only needs "defect here" gets)
    metrics["pooled_defect_iou"] = iou_def
    metrics["pooled_defect_f1"] = f1
    if with_class and set(model_class_names or ()) >= set(data_names):
        metrics["defect_recall_iou50_class"] = hit_cls / n_gt if n_gt else 1.0
        metrics["defect_precision_iou50_class"] = hit_cls / n_pred if n_pred else 1.0
        metrics["classification_accuracy"] = pred_cls / hit_any if hit_any else 0.0
    meta = {"pixel_metrics_from": "boxes" if box_only else "masks",
            "dataset_class_names": list(data_names),
            "model_class_names": list(model_class_names) if model_class_names else None,
            "image_scores": scored,
            "one_class_per_image": one_class_per_image}
    return EvalReport(metrics, conf, meta)


def _detections_to_preds(dets: list[Detection]) -> list[PredictedDefect]:
    """A box detector's detections (mask None) count their box's pixels in the pixel metrics, as box-only ground
    truth does (meta `predicted_pixels_from`)."""
    return [PredictedDefect(d.bbox, np.ones((d.bbox.height, d.bbox.width), bool) if d.mask is None else d.mask,
                            d.defect_class, float(d.confidence)) for d in dets]


def evaluate_inspector(inspector: Any, samples: Iterable[InspectionSample], batch: int = 8,
                       examples: ExampleCollector | None = None) -> EvalReport:
    """Evaluate an `Inspector` (models.core.types) end to end on annotated samples, scored through
    `inspect_scored` (one pass gives detections and the image-level score)."""
    ranked_fn = getattr(inspector, "inspect_ranked", None)  # a box detector: every box above its score floor

    def predict(ims: list[np.ndarray]) -> ScoredPredictions:
        if ranked_fn is None:
            dets, scores = inspector.inspect_scored(ims)
            return ScoredPredictions([_detections_to_preds(d) for d in dets], [float(v) for v in scores])
        ranked, scores = ranked_fn(ims)
        kept = [[d for d in ds if d.confidence >= inspector.threshold] for ds in ranked]
        return ScoredPredictions([_detections_to_preds(d) for d in kept], [float(v) for v in scores],
                                 [_detections_to_preds(d) for d in ranked])

    rep = evaluate_predictions(samples, predict, list(inspector.class_names), batch, examples)
    rep.meta.update({"family": getattr(inspector, "family", None), "model_version": inspector.model_version,
                     "device": inspector.device, "runtime": getattr(inspector, "runtime", "torch")})
    if ranked_fn is not None:
        rep.meta["predicted_pixels_from"] = "boxes"
        rep.meta["map_ranks"] = "every detection above the score floor (0.05), as COCO evaluation does"
    if getattr(inspector, "threshold", None) is not None:
        rep.meta["threshold"] = inspector.threshold
    if hasattr(inspector, "flip_tta"):
        rep.meta["flip_tta"] = bool(inspector.flip_tta)
    return rep


class ThresholdBaseline:
    """Trivial detector: |grey - median-filtered grey| > t, then the same joining/components.

    It is the honesty check of the synthetic data: if it reached the targets, the data would
    be too easy. `fit` picks t on a validation split by mean IoU, like T for the network.
    """

    def __init__(self, t: float = 20.0, ksize: int = 31) -> None:
        self.t, self.ksize = t, ksize

    def response(self, img: np.ndarray) -> np.ndarray:
        g = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        bg = cv2.medianBlur(g, self.ksize)
        return np.abs(g.astype(np.float32) - bg.astype(np.float32))

    def fit(self, samples: Sequence[InspectionSample]) -> float:
        resp = [self.response(s.image) for s in samples]
        self.t, _ = choose_threshold(resp, [gt_mask(s) for s in samples], [float(v) for v in range(4, 80, 2)])
        return self.t

    def predict(self, images: list[np.ndarray]) -> list[list[PredictedDefect]]:
        out = []
        for im in images:
            regs: list[Region] = regions_from_severity(self.response(im), self.t)
            out.append([PredictedDefect(r.bbox, r.mask, None) for r in regs])
        return out


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def to_markdown(title: str, reports: dict[str, EvalReport]) -> str:
    """One Markdown document: a metrics table (one column per report; None and missing as "—")
    and confusion matrices."""
    keys: list[str] = []
    for r in reports.values():
        keys += [k for k in r.metrics if k not in keys]
    lines = [f"# {title}", "", "| metric | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(r.metrics.get(k)) for r in reports.values()) + " |")
    for name, r in reports.items():
        if not r.confusion:
            continue
        rows = sorted(r.confusion)
        cols = sorted({c for row in r.confusion.values() for c in row})
        lines += ["", f"## Confusion ({name}; rows: ground truth, columns: prediction)", "",
                  "| gt \\ pred | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for rw in rows:
            lines.append(f"| {rw} | " + " | ".join(str(r.confusion[rw].get(c, 0)) for c in cols) + " |")
        lines += ["", "meta: `" + json.dumps(r.meta, sort_keys=True) + "`"]
    return "\n".join(lines) + "\n"
