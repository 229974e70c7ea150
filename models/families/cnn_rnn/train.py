"""Training hooks of the CNN+RNN classifier: the image classifier's (one label per image, resized to `size`,
cross-entropy with label smoothing, validation accuracy) with the CNN+RNN network."""
from __future__ import annotations

import torch

from models.families.cnn_rnn.model import ARCH, FILE, KIND, CnnRnn
from models.families.image_classifier.train import ClassifierTask
from models.training.lite0 import SPEC_COMMON, CheckpointPlan, LiteTrainer, register_task

__all__ = ["CnnRnnTask", "TASK"]

HIDDEN = 128


class CnnRnnTask(ClassifierTask):
    name = "cnn-rnn"

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return CnnRnn(n_out, HIDDEN, pretrained=pretrained)

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        return CheckpointPlan(FILE, KIND, ARCH, {"n_outputs": tr.n_out, "has_good": tr.has_good, "hidden": HIDDEN},
                              {**SPEC_COMMON, "size": tr.size, "sequence": "rows of the stride-32 feature map"})


TASK = register_task(CnnRnnTask())
