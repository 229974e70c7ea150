"""Training hooks of the gate (the Lite0 engine): defect / no-defect per image or tile, BCE, AUROC,
recall-first threshold."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.data.datasets import DatasetError
from models.evaluation.evaluate import image_auroc
from models.families.gate.model import choose_gate_threshold
from models.families.image_classifier.model import image_probabilities
from models.families.image_classifier.train import ImageTask
from models.training.lite0 import SPEC_COMMON, CheckpointPlan, LiteTrainer, register_task

__all__ = ["GateTask", "TASK"]


class GateTask(ImageTask):
    """Validation metric: AUROC (accuracy at 0.5 when the validation set has one class only); the threshold is
    chosen recall-first on validation (`choose_gate_threshold`, `gate_min_recall`)."""

    name = "gate"

    def labels(self, tr: LiteTrainer, tl: list[int], vl: list[int]) -> None:
        tr.tr_y = np.array([y > 0 for y in tl])
        tr.va_y = np.array([y > 0 for y in vl])
        if tr.tr_y.all() or not tr.tr_y.any():
            raise DatasetError("the gate needs defective and defect-free training images (all are "
                               f"{'defective' if tr.tr_y.all() else 'defect-free'}); with defects on every "
                               "image, --tile N cuts them into tiles so that the good tiles serve")
        tr.n_out = 1
        tr.metric_name = "val_auroc"

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        x, y = self.batch(tr, idx)
        logits = model(x.contiguous(memory_format=torch.channels_last)).float()
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        s = image_probabilities(model, tr.va_img, tr.size, tr.device, sigmoid=True)[:, 0]
        auc = image_auroc(tr.va_y, s)  # None when the validation set holds one class only
        return (auc if auc is not None else float(((s >= 0.5) == tr.va_y).mean())), {}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        s = image_probabilities(model, tr.va_img, tr.size, tr.device, sigmoid=True)[:, 0]
        threshold = choose_gate_threshold(s, tr.va_y, tr.cfg.gate_min_recall)
        passed = s >= threshold
        metrics.update({"val_recall_at_threshold": float(passed[tr.va_y].mean()) if tr.va_y.any() else None,
                        "val_good_skipped_share": float((~passed[~tr.va_y]).mean()) if (~tr.va_y).any() else None,
                        "val_frames_skipped_share": float((~passed).mean())})
        return CheckpointPlan("gate.pt", "gate", "lite0", {"n_outputs": 1},
                              {**SPEC_COMMON, "size": tr.size, "tile": tr.cfg.tile}, threshold=threshold)


TASK = register_task(GateTask())
