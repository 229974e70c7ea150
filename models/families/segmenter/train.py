"""Training hooks of the segmenter (the Lite0 engine, `models.training.lite0`): crops, loss, mIoU
validation, thresholds.

Random square crops of the size `choose_geometry` picks from the median image (smaller images padded;
half of the crops centred on a defect pixel when the image has one: defects are a small share of the
pixels), flips / 90° turns / brightness and contrast; loss = cross-entropy + BCE (pos_weight 5) + Dice
on the class-agnostic defect channel (`--seg-loss ce+focal_tversky`: the Focal-Tversky loss of before)
+ 0.2 x BCE of the image-level head. Validation metric: mean IoU over background and the classes (argmax).
Per-class thresholds and minimum areas are then chosen on the validation images (`choose_postprocess`).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.core.augment import lite_geometric as geometric
from models.core.augment import lite_photometric as photometric
from models.core.backbone import to_input
from models.core.types import InspectionSample
from models.data.datasets import DatasetError, sample_class_mask
from models.families.segmenter.model import (DEFAULT_DECODER, LEGACY_DECODER, LiteUNet, choose_postprocess,
                                             frame_probabilities, prepare_frame)
from models.training.defaults import choose_geometry
from models.training.lite0 import (SPEC_COMMON, CheckpointPlan, LiteTask, LiteTrainer, defect_bce_dice_loss,
                                   focal_tversky_loss, register_task)

SEG_LOSSES = ("ce+bce_dice", "ce+focal_tversky")
DECODERS = {"sep4": DEFAULT_DECODER, "res4": {**DEFAULT_DECODER, "block": "res"}, "res2": LEGACY_DECODER}

__all__ = ["SegmenterTask", "TASK"]


def _scaled(s: InspectionSample, scale: float) -> tuple[np.ndarray, np.ndarray]:
    img = s.image if s.image.ndim == 2 or s.image.shape[2] == 3 else s.image[:, :, 0]
    cm = sample_class_mask(s)
    if scale != 1.0:
        h, w = img.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        cm = cv2.resize(cm, size, interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(img), cm


def _defect_points(cm: np.ndarray, rng: np.random.Generator, cap: int = 256) -> np.ndarray:
    pts = np.argwhere(cm > 0)
    if len(pts) > cap:
        pts = pts[rng.choice(len(pts), cap, replace=False)]
    return pts.astype(np.int32)


def _pad_to(img: np.ndarray, cm: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    ph, pw = max(0, p - h), max(0, p - w)
    if not ph and not pw:
        return img, cm
    mode = cv2.BORDER_REFLECT_101 if h > 1 and w > 1 else cv2.BORDER_REPLICATE
    return cv2.copyMakeBorder(img, 0, ph, 0, pw, mode), cv2.copyMakeBorder(cm, 0, ph, 0, pw, mode)


class SegmenterTask(LiteTask):
    """The segmenter's hooks; data on the trainer: `tr` / `va` (scaled image, class ids), `points`, `patch`."""

    name = "segmenter"

    def prepare(self, tr: LiteTrainer, train: list[InspectionSample], val: list[InspectionSample]) -> None:
        cfg = tr.cfg
        tr.tr = [_scaled(s, cfg.scale) for s in train]
        tr.va = [_scaled(s, cfg.scale) for s in val]
        tr.va_samples = val  # at their own size: thresholds and minimum areas are chosen in frame pixels
        tr.points = [_defect_points(cm, tr.rng) for _, cm in tr.tr]
        if not any(len(p) for p in tr.points):
            raise DatasetError("the training images hold no annotated defect pixels; a segmenter needs masks "
                               "or boxes (a data set of good parts only trains nothing here)")
        try:
            geo = choose_geometry([im.shape[:2] for im, _ in tr.tr], patch=cfg.patch)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        if cfg.decoder not in DECODERS:
            raise DatasetError(f"segmenter decoder must be one of {tuple(DECODERS)}, got {cfg.decoder!r}")
        tr.choices["decoder"] = {"name": cfg.decoder, **DECODERS[cfg.decoder]}
        if cfg.seg_loss not in SEG_LOSSES:
            raise DatasetError(f"segmenter loss must be one of {SEG_LOSSES}, got {cfg.seg_loss!r}")
        tr.patch = geo.patch
        tr.choices["crop"] = geo.to_dict()
        tr.choices["loss"] = {"rule": f"{cfg.seg_loss} + 0.2 x image-head BCE" + (
            " (BCE pos_weight 5 + Dice on defect vs background, cross-entropy for the classes)"
            if cfg.seg_loss == "ce+bce_dice" else "")}
        tr.n_out = len(tr.class_names)
        tr.metric_name = "val_miou_classes_with_background"

    def n_train(self, tr: LiteTrainer) -> int:
        return len(tr.tr)

    def train_defective(self, tr: LiteTrainer) -> Sequence[bool]:
        return [len(p) > 0 for p in tr.points]

    def val_defective(self, tr: LiteTrainer) -> int:
        return sum(bool((cm > 0).any()) for _, cm in tr.va)

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return LiteUNet(n_out, pretrained=pretrained, **DEFAULT_DECODER)

    def build_for(self, tr: LiteTrainer) -> torch.nn.Module:
        return LiteUNet(tr.n_out, pretrained=tr.cfg.backbone == "lite0", **DECODERS[tr.cfg.decoder])

    def batch(self, tr: LiteTrainer, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p, imgs, masks = tr.patch, [], []
        for i in idx:
            img, cm = _pad_to(*tr.tr[i], p)
            h, w = img.shape[:2]
            pts = tr.points[i]
            if len(pts) and tr.rng.random() < tr.cfg.defect_crop_share:
                cy, cx = pts[tr.rng.integers(len(pts))]
                y0 = int(np.clip(cy - p // 2 + tr.rng.integers(-p // 4, p // 4 + 1), 0, h - p))
                x0 = int(np.clip(cx - p // 2 + tr.rng.integers(-p // 4, p // 4 + 1), 0, w - p))
            else:
                y0, x0 = int(tr.rng.integers(0, h - p + 1)), int(tr.rng.integers(0, w - p + 1))
            ci, cc = geometric(tr.rng, img[y0:y0 + p, x0:x0 + p], cm[y0:y0 + p, x0:x0 + p])
            imgs.append(photometric(tr.rng, ci))
            masks.append(cc)
        x = to_input(imgs, tr.device)
        y = torch.from_numpy(np.stack(masks).astype(np.int64)).to(tr.device)
        return x, y, (y > 0).flatten(1).any(1).float()

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        x, y, has = self.batch(tr, idx)
        out = model(x.contiguous(memory_format=torch.channels_last))
        extra = (defect_bce_dice_loss(out.logits, y) if tr.cfg.seg_loss == "ce+bce_dice"
                 else focal_tversky_loss(out.logits, y))
        return (F.cross_entropy(out.logits.float(), y) + extra
                + 0.2 * F.binary_cross_entropy_with_logits(out.image_logit.float(), has))

    def probs(self, tr: LiteTrainer, model: torch.nn.Module, items: Sequence[tuple[np.ndarray, np.ndarray]]):
        """Yield ((1 + C, H, W) probabilities, class ids) for validation images."""
        model.eval()
        with torch.inference_mode():
            for img, cm in items:
                x = to_input([prepare_frame(img)], tr.device)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=tr.amp):
                    logits = model(x).logits
                h, w = cm.shape
                yield logits.float().softmax(1)[0, :, :h, :w].cpu().numpy(), cm

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        k = tr.n_out + 1
        conf = np.zeros((k, k), np.int64)
        for probs, cm in self.probs(tr, model, tr.va):
            conf += np.bincount(cm.reshape(-1).astype(np.int64) * k + probs.argmax(0).reshape(-1),
                                minlength=k * k).reshape(k, k)
        inter = np.diag(conf).astype(np.float64)
        union = conf.sum(0) + conf.sum(1) - inter
        present = union > 0
        ious = np.where(present, inter / np.maximum(union, 1), np.nan)
        per = {("background" if c == 0 else tr.class_names[c - 1]): (None if np.isnan(v) else float(v))
               for c, v in enumerate(ious)}
        return float(np.nanmean(ious)), {"val_iou_per_class": per}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        cfg = tr.cfg
        post_t, per_iou = choose_postprocess(frame_probabilities(model, tr.va_samples, cfg.scale, tr.device), tr.n_out)
        metrics["val_iou_per_class_postprocessed"] = dict(zip(tr.class_names, per_iou))
        return CheckpointPlan("segmenter.pt", "segmenter", "lite0-unet",
                              {"n_classes": tr.n_out, **DECODERS[cfg.decoder]},
                              {**SPEC_COMMON, "scale": cfg.scale, "pad_multiple": 32, "train_patch": tr.patch,
                               "train_crop": tr.choices.get("crop")},
                              postprocess=post_t.to_dict())


TASK = register_task(SegmenterTask())
