"""Evaluation of the Inspector (or a trivial intensity-threshold baseline) on annotated samples.

Metrics (He & Liu 2020, section on evaluation):
- pixel precision / recall / F1 over all pixels of the split (defect vs background);
- mean IoU: per-image defect IoU averaged over the images where ground truth or prediction
  holds a defect (clean images predicted clean are skipped); `miou_2class` is the usual
  mean of background and defect IoU over the split;
- AR: defect-level recall averaged over IoU thresholds 0.50:0.05:0.95 (COCO-style average
  recall; our reading of the paper's eq. 3, class-agnostic);
- defect-level recall / precision at IoU >= 0.5, class-agnostic and with class (greedy
  one-to-one matching by IoU; mask IoU where instance masks exist, box IoU otherwise);
- confusion matrix (rows ground truth + "background" for false positives, columns
  prediction + "missed") over class-agnostic matches, classification accuracy on them;
- images/s of the whole pipeline.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import cv2
import numpy as np

from models.postprocess import Region, choose_threshold, image_iou, regions_from_severity
from models.types import BBox, Detection, InspectionSample, box_iou

__all__ = ["PredictedDefect", "evaluate_predictions", "evaluate_inspector", "ThresholdBaseline",
           "EvalReport", "to_markdown", "run_evaluation_cli"]


class PredictedDefect(NamedTuple):
    bbox: BBox
    mask: np.ndarray  # bool, bbox-cropped
    defect_class: str | None  # None for class-agnostic predictors


@dataclass
class EvalReport:
    metrics: dict[str, Any]
    confusion: dict[str, dict[str, int]]
    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "confusion": self.confusion, "meta": self.meta}



def _mask_iou(gt_full: np.ndarray, p: PredictedDefect) -> float:
    b = p.bbox
    sub = gt_full[b.y0:b.y1, b.x0:b.x1]
    inter = int(np.logical_and(sub, p.mask).sum())
    union = int(gt_full.sum()) + int(p.mask.sum()) - inter
    return inter / union if union else 0.0


def _iou_matrix(sample: InspectionSample, preds: Sequence[PredictedDefect]) -> np.ndarray:
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
            m[i, j] = _mask_iou(gt_full, p) if use_masks else box_iou(gb, p.bbox)
    return m


def _greedy(iou: np.ndarray, thr: float, allowed: np.ndarray | None = None) -> list[tuple[int, int]]:
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


def _pred_mask(shape: tuple[int, int], preds: Sequence[PredictedDefect]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for p in preds:
        b = p.bbox
        m[b.y0:b.y1, b.x0:b.x1] |= p.mask
    return m


def _gt_mask(sample: InspectionSample) -> np.ndarray:
    if sample.class_mask is not None:
        return sample.class_mask > 0
    m = np.zeros(sample.image.shape[:2], bool)
    for b, _ in sample.boxes:
        m[b.y0:b.y1, b.x0:b.x1] = True
    return m


def evaluate_predictions(samples: Iterable[InspectionSample],
                         predict: Callable[[list[np.ndarray]], list[list[PredictedDefect]]],
                         model_class_names: Sequence[str] | None, batch: int = 8) -> EvalReport:
    """Run `predict` over samples (in batches) and compute every metric of the module doc."""
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

    def bump(r: str, c: str) -> None:
        conf.setdefault(r, {})
        conf[r][c] = conf[r].get(c, 0) + 1

    it = iter(samples)
    while True:
        chunk = [s for _, s in zip(range(batch), it)]
        if not chunk:
            break
        t0 = time.perf_counter()
        preds_all = predict([s.image for s in chunk])
        seconds += time.perf_counter() - t0
        for s, preds in zip(chunk, preds_all):
            n_img += 1
            data_names = s.class_names
            box_only |= s.class_mask is None
            gt = _gt_mask(s)
            pm = _pred_mask(gt.shape, preds)
            tp += int(np.logical_and(pm, gt).sum())
            fp += int(np.logical_and(pm, ~gt).sum())
            fn += int(np.logical_and(~pm, gt).sum())
            bg_inter += int(np.logical_and(~pm, ~gt).sum())
            bg_union += int(np.logical_or(~pm, ~gt).sum())
            v = image_iou(pm, gt)
            if v is not None:
                ious.append(v)
            iou = _iou_matrix(s, preds)
            n_gt += len(s.boxes)
            n_pred += len(preds)
            for k, t in enumerate(ar_thr):
                ar_hits[k] += len(_greedy(iou, float(t)))
            pairs = _greedy(iou, 0.5)
            hit_any += len(pairs)
            gt_names = [s.class_names[c - 1] if 0 < c <= len(s.class_names) else str(c) for _, c in s.boxes]
            if with_class:
                allowed = np.array([[p.defect_class == g for p in preds] for g in gt_names], bool).reshape(iou.shape)
                hit_cls += len(_greedy(iou, 0.5, allowed))
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
    metrics: dict[str, Any] = {
        "images": n_img,
        "pixel_precision": prec, "pixel_recall": rec, "pixel_f1": f1,
        "mean_iou": float(np.mean(ious)) if ious else 1.0,
        "iou_defect": iou_def, "miou_2class": (iou_def + iou_bg) / 2,
        "ar": float(ar_hits.mean() / n_gt) if n_gt else 1.0,
        "gt_defects": n_gt, "predicted_defects": n_pred,
        "defect_recall_iou50": hit_any / n_gt if n_gt else 1.0,
        "defect_precision_iou50": pred_any / n_pred if n_pred else 1.0,
        "images_per_s": n_img / seconds if seconds else 0.0,
    }
    if with_class and set(model_class_names or ()) >= set(data_names):
        metrics["defect_recall_iou50_class"] = hit_cls / n_gt if n_gt else 1.0
        metrics["defect_precision_iou50_class"] = hit_cls / n_pred if n_pred else 1.0
        metrics["classification_accuracy"] = pred_cls / hit_any if hit_any else 0.0
    meta = {"pixel_metrics_from": "boxes" if box_only else "masks",
            "dataset_class_names": list(data_names),
            "model_class_names": list(model_class_names) if model_class_names else None}
    return EvalReport(metrics, conf, meta)


def _detections_to_preds(dets: list[Detection]) -> list[PredictedDefect]:
    return [PredictedDefect(d.bbox, d.mask, d.defect_class) for d in dets]


def evaluate_inspector(inspector: Any, samples: Iterable[InspectionSample], batch: int = 8) -> EvalReport:
    """Evaluate an `Inspector` end to end on annotated samples."""
    rep = evaluate_predictions(samples, lambda ims: [_detections_to_preds(d) for d in inspector.inspect(ims)],
                               inspector.class_names, batch)
    rep.meta.update({"model_version": inspector.model_version, "threshold": inspector.threshold,
                     "device": inspector.device})
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
        self.t, _ = choose_threshold(resp, [_gt_mask(s) for s in samples], [float(v) for v in range(4, 80, 2)])
        return self.t

    def predict(self, images: list[np.ndarray]) -> list[list[PredictedDefect]]:
        out = []
        for im in images:
            regs: list[Region] = regions_from_severity(self.response(im), self.t)
            out.append([PredictedDefect(r.bbox, r.mask, None) for r in regs])
        return out


def to_markdown(title: str, reports: dict[str, EvalReport]) -> str:
    """One Markdown document: a metrics table (one column per report) and confusion matrices."""
    keys: list[str] = []
    for r in reports.values():
        keys += [k for k in r.metrics if k not in keys]
    lines = [f"# {title}", "", "| metric | " + " | ".join(reports) + " |", "|---|" + "---|" * len(reports)]
    for k in keys:
        vals = []
        for r in reports.values():
            v = r.metrics.get(k)
            vals.append("—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {k} | " + " | ".join(vals) + " |")
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


def run_evaluation_cli(args: Any) -> int:
    """Handler of `defectstream evaluate` (see models/cli.py for the arguments)."""
    import torch

    from models.datasets import open_dataset
    from models.inspector import SeverityInspector, resolve_checkpoints
    from models.registry import update_metrics

    torch.set_num_threads(args.threads)
    insp = SeverityInspector.load(args.checkpoint, device=args.device, detector_arch=args.detector_arch)
    samples = list(open_dataset(args.format, args.data, limit=args.limit))
    reports: dict[str, EvalReport] = {}
    rep = evaluate_inspector(insp, samples)
    reports[f"inspector ({insp.det_info.arch})"] = rep
    if args.baseline:
        from models.synthetic import render_sample
        from models.train import VAL_SEED_BASE

        base = ThresholdBaseline()
        val = [render_sample(VAL_SEED_BASE + i) for i in range(100)] if args.format == "synthetic" else samples
        t = base.fit(val)
        brep = evaluate_predictions(samples, base.predict, None)
        brep.meta["threshold"] = t
        brep.meta["fitted_on"] = "synthetic validation seeds" if args.format == "synthetic" else "the evaluated data"
        reports["intensity threshold baseline"] = brep
    md = to_markdown(f"Evaluation on {args.format}: {args.data}", reports)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({k: v.to_dict() for k, v in reports.items()}, indent=2) + "\n")
        (out / "metrics.md").write_text(md)
        print(f"wrote {out / 'metrics.json'} and {out / 'metrics.md'}")
    if args.record:
        det_p, cls_p = resolve_checkpoints(args.checkpoint, args.detector_arch)
        key = f"eval[{args.data}]"
        update_metrics(det_p, {key: rep.metrics})
        update_metrics(cls_p, {key: {k: v for k, v in rep.metrics.items() if "class" in k}})
    return 0
