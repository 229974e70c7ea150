"""Training hooks of the RetinaNet box detector (the Lite0 engine, `models.training.lite0`).

Boxes come from any format: NEU-DET's VOC XML (`neu`), or the 8-connected components of the masks of a mask
format (the readers fill `InspectionSample.boxes`). Anchors are sized from the training boxes (`choose_anchors`,
printed and recorded). Training items are square crops of the side `choose_geometry` picks (the median image's
short side rounded down to 32, at most 512; smaller images padded), boxes clipped with the crop (a box keeps its
part in the crop when that holds at least half of it), flips and brightness/contrast; loss = torchvision's focal
loss + L1 box loss. Validation metric: mAP@0.5 (`BoxMAP`, torchmetrics) on the whole validation images; the
Inspector's score threshold is then chosen on them (best F1 of class-aware matches at IoU 0.5).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from models.core.augment import lite_photometric as photometric
from models.core.backbone import to_input
from models.core.types import BBox, InspectionSample, box_iou
from models.data.datasets import DatasetError
from models.evaluation.metrics import BoxMAP, greedy_matches
from models.families.boxes.model import (ARCH, FILE, FPN_CHANNELS, KIND, PAD_MULTIPLE, build_boxnet, choose_anchors,
                                         predict_boxes)
from models.training.defaults import choose_geometry
from models.training.lite0 import SPEC_COMMON, CheckpointPlan, LiteTask, LiteTrainer, register_task

__all__ = ["BoxesTask", "TASK", "choose_score_threshold", "crop_boxes"]

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 19))  # 0.05 .. 0.90


def crop_boxes(boxes: Sequence[tuple[BBox, int]], x: int, y: int, size: int) -> list[tuple[BBox, int]]:
    """The parts of `boxes` inside the crop at (x, y) of side `size`, in crop coordinates; a box is kept when at
    least half of it lies inside."""
    out = []
    for b, c in boxes:
        cb = BBox(max(b.x0, x) - x, max(b.y0, y) - y, min(b.x1, x + size) - x, min(b.y1, y + size) - y)
        if cb.width > 0 and cb.height > 0 and 2 * cb.area >= b.area:
            out.append((cb, c))
    return out


def choose_score_threshold(preds: Sequence[dict], gts: Sequence[Sequence[tuple[BBox, int]]]) -> tuple[float, float]:
    """(threshold, F1) with the best F1 of class-aware one-to-one matches at box IoU >= 0.5 over `THRESHOLDS`
    (the lower threshold on ties); preds as `predict_boxes` gives them, labels 0-based, gt class ids 1-based."""
    best = (0.5, -1.0)
    for t in THRESHOLDS:
        tp = n_pred = n_gt = 0
        for p, g in zip(preds, gts):
            keep = p["scores"] >= t
            pb, pl = p["boxes"][keep], p["labels"][keep]
            n_pred += len(pb)
            n_gt += len(g)
            if not len(pb) or not len(g):
                continue
            iou = np.array([[box_iou(tuple(gb), tuple(q)) for q in pb] for gb, _ in g])
            allowed = np.array([[int(c) - 1 == int(lab) for lab in pl] for _, c in g], bool)
            tp += len(greedy_matches(iou, 0.5, allowed))
        f1 = 2 * tp / (n_pred + n_gt) if n_pred + n_gt else 0.0
        if f1 > best[1] + 1e-9:
            best = (float(t), float(f1))
    return best


class BoxesTask(LiteTask):
    name = "boxes"
    # the engine's 2e-3 blew the fresh RetinaNet heads up in the first steps on NEU-DET (mean loss 7.7 over the
    # first 7 steps, then no box above the score floor); AdamW at 2e-4 is what detection heads usually get
    default_lr = 2e-4

    def prepare(self, tr: LiteTrainer, train: list[InspectionSample], val: list[InspectionSample]) -> None:
        cfg = tr.cfg
        scale = float(cfg.scale or 1.0)
        tr.scale = scale

        def scaled(s: InspectionSample) -> tuple[np.ndarray, list[tuple[BBox, int]]]:
            im = s.image
            if scale != 1.0:
                import cv2

                h, w = im.shape[:2]
                im = cv2.resize(im, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
            bx = [(BBox(int(b.x0 * scale), int(b.y0 * scale), max(int(b.x0 * scale) + 1, int(round(b.x1 * scale))),
                        max(int(b.y0 * scale) + 1, int(round(b.y1 * scale)))), c) for b, c in s.boxes]
            return im, bx

        items = [scaled(s) for s in train]
        tr.tr_img = [im for im, _ in items]
        tr.tr_boxes = [bx for _, bx in items]
        tr.va_img = [s.image for s in val]
        tr.va_boxes = [list(s.boxes) for s in val]
        if not any(tr.tr_boxes):
            raise DatasetError("the box detector needs training boxes (NEU-DET XML, or masks whose components "
                               "become boxes); the training images hold none")
        geo = choose_geometry([im.shape[:2] for im in tr.tr_img], target=512, multiple=PAD_MULTIPLE, patch=cfg.patch)
        tr.crop = geo.patch
        wh = np.array([(b.width, b.height) for bx in tr.tr_boxes for b, _ in bx], np.float64).reshape(-1, 2)
        tr.anchor_plan = choose_anchors(wh)
        self._plan = tr.anchor_plan  # `build` gets no trainer: the network of this run uses these anchors
        tr.choices["crop"] = geo.to_dict()
        tr.choices["scale"] = {"scale": scale, "rule": "given (--scale)" if scale != 1.0 else "1 (frames as they are)"}
        tr.choices["anchors"] = dict(tr.anchor_plan)
        tr.tr_defective = [bool(bx) for bx in tr.tr_boxes]
        tr.n_out = len(tr.class_names)
        tr.metric_name = "val_map_50"

    def n_train(self, tr: LiteTrainer) -> int:
        return len(tr.tr_img)

    def train_defective(self, tr: LiteTrainer) -> Sequence[bool]:
        return tr.tr_defective

    def val_defective(self, tr: LiteTrainer) -> int:
        return sum(bool(b) for b in tr.va_boxes)

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return build_boxnet(self._arch_config(n_out, self._plan), pretrained=pretrained)

    @staticmethod
    def _arch_config(n_classes: int, plan: dict) -> dict:
        return {"n_classes": int(n_classes), "anchor_sizes": plan["sizes"], "aspect_ratios": plan["aspect_ratios"],
                "fpn_channels": FPN_CHANNELS, "max_detections": 100}

    def _batch(self, tr: LiteTrainer, idx: Sequence[int]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        size = tr.crop
        ims, targets = [], []
        for i in idx:
            im, boxes = tr.tr_img[i], tr.tr_boxes[i]
            h, w = im.shape[:2]
            if h > size or w > size:  # a crop; with boxes, mostly one that holds one of them
                if boxes and tr.rng.random() < 0.7:
                    b = boxes[int(tr.rng.integers(len(boxes)))][0]
                    cx, cy = (b.x0 + b.x1) // 2, (b.y0 + b.y1) // 2
                    x = int(np.clip(cx - int(tr.rng.integers(0, size)), 0, max(0, w - size)))
                    y = int(np.clip(cy - int(tr.rng.integers(0, size)), 0, max(0, h - size)))
                else:
                    x, y = int(tr.rng.integers(0, max(1, w - size + 1))), int(tr.rng.integers(0, max(1, h - size + 1)))
                im = im[y:y + size, x:x + size]
                boxes = crop_boxes(boxes, x, y, size)
            im = np.ascontiguousarray(im)
            h, w = im.shape[:2]
            bx = np.array([[b.x0, b.y0, b.x1, b.y1] for b, _ in boxes], np.float32).reshape(-1, 4)
            if tr.rng.random() < 0.5:
                im = im[:, ::-1]
                bx[:, [0, 2]] = w - bx[:, [2, 0]]
            if tr.rng.random() < 0.5:
                im = im[::-1]
                bx[:, [1, 3]] = h - bx[:, [3, 1]]
            ims.append(photometric(tr.rng, np.ascontiguousarray(im)))
            targets.append({"boxes": torch.from_numpy(bx).to(tr.device),
                            "labels": torch.tensor([c - 1 for _, c in boxes], dtype=torch.int64, device=tr.device)})
        x = torch.zeros(len(ims), 3, size, size, device=tr.device)  # zero = the ImageNet mean, as at inference
        for k, im in enumerate(ims):
            x[k, :, :im.shape[0], :im.shape[1]] = to_input([im], tr.device)[0]
        return x, targets

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        x, targets = self._batch(tr, idx)
        return model.train_loss(x.contiguous(memory_format=torch.channels_last), targets)

    def _predict(self, tr: LiteTrainer, model: torch.nn.Module) -> list[dict]:
        model.eval()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=tr.device == "cuda"):
            return predict_boxes(model, model.heads, tr.va_img, tr.scale, tr.device)

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        preds = self._predict(tr, model)
        m = BoxMAP()
        names = tr.class_names
        for p, g in zip(preds, tr.va_boxes):
            m.add([(b, names[int(c)], s) for b, c, s in zip(p["boxes"], p["labels"], p["scores"])],
                  [(tuple(b), names[c - 1]) for b, c in g])
        r = m.compute()
        return float(r["map_50"] or 0.0), {"val_map_50_95": r["map_50_95"]}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        model = model.float().eval()
        t, f1 = choose_score_threshold(self._predict(tr, model), tr.va_boxes)
        metrics.update({"val_f1_iou50": f1, "val_images": len(tr.va_img)})
        return CheckpointPlan(FILE, KIND, ARCH, self._arch_config(tr.n_out, tr.anchor_plan),
                              {**SPEC_COMMON, "scale": tr.scale, "pad_multiple": PAD_MULTIPLE,
                               "frames": "scaled, zero-padded (the ImageNet mean) at the bottom/right to a multiple "
                                         "of 32; decoding and NMS after the network, in Python"},
                              threshold=t, postprocess={"score_floor": 0.05, "nms_iou": 0.5})


TASK = register_task(BoxesTask())
