"""Training hooks of the image classifier (the Lite0 engine, `models.training.lite0`), and the image
pieces the gate shares.

One label per image (the class covering most of its annotated area; "good" when the data holds
defect-free images), images resized to `size` (default: the median longer side rounded up to 32,
64..384); cross-entropy with label smoothing. Validation metric: accuracy.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.core.augment import lite_geometric as geometric
from models.core.augment import lite_photometric as photometric
from models.core.backbone import to_input
from models.core.types import InspectionSample
from models.data.datasets import DatasetError, image_label, tile_samples
from models.families.image_classifier.model import build_image_classifier, image_probabilities, resize_square
from models.training.lite0 import SPEC_COMMON, CheckpointPlan, LiteTask, LiteTrainer, register_task

__all__ = ["ImageTask", "ClassifierTask", "TASK"]


class ImageTask(LiteTask):
    """Whole images (or `tile` tiles) resized to one square size; data on the trainer: `tr_img`, `va_img`,
    `tr_y`, `va_y`, `size`. Subclasses set the labels (`labels`) and the loss / metric."""

    def labels(self, tr: LiteTrainer, tl: list[int], vl: list[int]) -> None:
        raise NotImplementedError

    def prepare(self, tr: LiteTrainer, train: list[InspectionSample], val: list[InspectionSample]) -> None:
        cfg = tr.cfg
        if cfg.tile:
            train, val = tile_samples(train, cfg.tile), tile_samples(val, cfg.tile)
        tl = [image_label(s) for s in train]
        vl = [image_label(s) for s in val]
        sides = sorted(max(s.image.shape[:2]) for s in train)
        tr.size = int(cfg.size or min(384, max(64, int(math.ceil(sides[len(sides) // 2] / 32.0)) * 32)))
        tr.tr_img = [s.image for s in train]
        tr.va_img = [s.image for s in val]
        tr.tr_defective = [y > 0 for y in tl]
        tr.va_defective = sum(y > 0 for y in vl)
        tr.choices["input"] = {"size": tr.size, "median_longer_side": sides[len(sides) // 2],
                               "rule": "given (--size)" if cfg.size else
                               f"median longer side {sides[len(sides) // 2]} px rounded up to 32, in [64, 384]"}
        self.labels(tr, tl, vl)

    def train_defective(self, tr: LiteTrainer) -> Sequence[bool]:
        return tr.tr_defective

    def val_defective(self, tr: LiteTrainer) -> int:
        return tr.va_defective

    def n_train(self, tr: LiteTrainer) -> int:
        return len(tr.tr_img)

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return build_image_classifier(n_out, pretrained=pretrained)

    def batch(self, tr: LiteTrainer, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = []
        for i in idx:
            im = resize_square(tr.tr_img[i], tr.size)
            pad = max(1, tr.size // 16)
            big = cv2.copyMakeBorder(im, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
            y0, x0 = tr.rng.integers(0, 2 * pad + 1, size=2)
            im, _ = geometric(tr.rng, big[y0:y0 + tr.size, x0:x0 + tr.size], None)
            imgs.append(photometric(tr.rng, im))
        return to_input(imgs, tr.device), torch.from_numpy(tr.tr_y[list(idx)]).to(tr.device)


class ClassifierTask(ImageTask):
    name = "classifier"

    def labels(self, tr: LiteTrainer, tl: list[int], vl: list[int]) -> None:
        tr.has_good = any(y == 0 for y in tl)
        off = 0 if tr.has_good else 1
        if not tr.has_good and any(y == 0 for y in vl):
            raise DatasetError("validation images without defects, but no defect-free training image to learn "
                               "'good' from")
        tr.tr_y = np.array([y - off for y in tl])
        tr.va_y = np.array([y - off for y in vl])
        tr.n_out = len(tr.class_names) + (1 if tr.has_good else 0)
        tr.metric_name = "val_accuracy"

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        x, y = self.batch(tr, idx)
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        return F.cross_entropy(logits, y.long(), label_smoothing=0.1)

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        probs = image_probabilities(model, tr.va_img, tr.size, tr.device, sigmoid=False)
        return float((probs.argmax(1) == tr.va_y).mean()), {}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        return CheckpointPlan("classifier.pt", "classifier", "lite0", {"n_outputs": tr.n_out, "has_good": tr.has_good},
                              {**SPEC_COMMON, "size": tr.size})


TASK = register_task(ClassifierTask())
