"""Training hooks of the OK/DEFECT patch classifier (the Lite0 engine): patches labelled from masks or boxes, BCE,
AUROC; the patch threshold (best accuracy) and the CAM and its threshold (best mean IoU) chosen on validation."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.core.regions import image_iou
from models.core.types import InspectionSample
from models.data.datasets import DatasetError, image_label, sample_class_mask, tile_samples
from models.evaluation.metrics import image_auroc
from models.families.image_classifier.model import image_probabilities, resize_square
from models.families.image_classifier.train import ImageTask
from models.families.okdefect.model import CAMS, FILE, KIND, CamNet, build_okdefect, patch_outputs, scale_cam
from models.training.lite0 import SPEC_COMMON, CheckpointPlan, LiteTrainer, register_task

__all__ = ["DEFAULT_PATCH", "OkDefectTask", "TASK", "choose_patch_threshold", "choose_cam"]

DEFAULT_PATCH = 64
CAM_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10 .. 0.90


def choose_patch_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold (p >= T is DEFECT) with the best accuracy on validation patches (0.5 on ties)."""
    cands = np.unique(np.r_[0.5, probs])
    acc = [float(((probs >= t) == labels).mean()) for t in cands]
    best = max(acc)
    return float(min(cands[[a == best for a in acc]], key=lambda t: abs(t - 0.5)))


def choose_cam(outs: np.ndarray, masks: Sequence[np.ndarray]) -> tuple[str, float, float]:
    """(CAM, threshold, mean IoU) maximising the mean IoU of the thresholded, scaled CAM with the defect mask
    over validation DEFECT patches (`outs`: their CamNet outputs)."""
    best = (CAMS[1], 0.5, -1.0)
    for ci, name in enumerate(CAMS):
        cams = [scale_cam(o[1 + ci], m.shape) for o, m in zip(outs, masks)]
        for t in CAM_THRESHOLDS:
            ious = [image_iou(c >= t, m) for c, m in zip(cams, masks)]
            v = float(np.mean([x for x in ious if x is not None])) if ious else 0.0
            if v > best[2]:
                best = (name, float(t), v)
    return best


class OkDefectTask(ImageTask):
    """`tile` x `tile` patches (default 64) of every image, DEFECT when any of their pixels (or a box) is a defect."""

    name = "okdefect"

    def prepare(self, tr: LiteTrainer, train: list[InspectionSample], val: list[InspectionSample]) -> None:
        patch = int(tr.cfg.tile or DEFAULT_PATCH)
        train, val = tile_samples(train, patch), tile_samples(val, patch)
        tr.size = int(tr.cfg.size or patch)
        if tr.size < 32:
            raise DatasetError(f"--size must be at least 32 (the encoder's stride), got {tr.size}")
        tr.patch = patch
        tr.choices["input"] = {"size": tr.size, "patch": patch,
                               "rule": f"patches resized to {tr.size} px (--size)" if tr.cfg.size else
                               "the patch itself (no resizing)"}
        tr.tr_img = [s.image for s in train]
        tr.va_img = [s.image for s in val]
        tr.tr_y = np.array([image_label(s) > 0 for s in train])
        tr.va_y = np.array([image_label(s) > 0 for s in val])
        tr.va_mask = [sample_class_mask(s) > 0 for s in val]
        tr.tr_defective = [bool(y) for y in tr.tr_y]  # balanced sampling (training/defaults.py)
        tr.va_defective = int(tr.va_y.sum())
        if tr.tr_y.all() or not tr.tr_y.any():
            raise DatasetError("OK/DEFECT needs OK and DEFECT patches (all training patches are "
                               f"{'DEFECT' if tr.tr_y.all() else 'OK'}); a smaller patch size gives more OK ones")
        tr.n_out = 1
        tr.metric_name = "val_auroc"

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return build_okdefect(pretrained=pretrained)

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        x, y = self.batch(tr, idx)
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        s = image_probabilities(model, tr.va_img, tr.size, tr.device, sigmoid=True)[:, 0]
        auc = image_auroc(tr.va_y, s)
        return (auc if auc is not None else float(((s >= 0.5) == tr.va_y).mean())), {}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        model = model.float().eval()
        s = image_probabilities(model, tr.va_img, tr.size, tr.device, sigmoid=True)[:, 0]
        threshold = choose_patch_threshold(s, tr.va_y)
        pick = [i for i in range(len(s)) if tr.va_y[i] and s[i] >= threshold and tr.va_img[i].shape[:2] == (tr.patch,) * 2]
        cam, cam_t, miou = CAMS[1], 0.5, None
        if pick:
            outs = patch_outputs(CamNet(model).eval(), [resize_square(tr.va_img[i], tr.size) for i in pick], tr.device)
            cam, cam_t, miou = choose_cam(outs, [tr.va_mask[i] for i in pick])
        metrics.update({"val_accuracy": float(((s >= threshold) == tr.va_y).mean()), "val_patches": int(len(s)),
                        "val_defect_patches": int(tr.va_y.sum()), "val_cam_miou": miou})
        return CheckpointPlan(FILE, KIND, "lite0", {"n_outputs": 1},
                              {**SPEC_COMMON, "size": tr.size, "patch": tr.patch,
                               "frames": "cut into patch x patch patches (the last aligned with the edge), "
                                         "small frames reflection-padded"},
                              threshold=threshold, postprocess={"cam": cam, "cam_threshold": cam_t, "min_area": 16})


TASK = register_task(OkDefectTask())
