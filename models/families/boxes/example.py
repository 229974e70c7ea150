"""Tiny box detector for the tests: random weights that find boxes, and seconds of training on tiny synthetic data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.data.synthetic import write_plain_set
from models.families.boxes.model import ARCH, FILE, KIND, build_boxnet, choose_anchors
from models.training.lite0 import LiteTrainConfig, train_lite0

CLASSES = ["blob", "bar"]


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random-init 2-class RetinaNet whose class prior is raised so that some anchors pass its threshold."""
    torch.manual_seed(seed)
    plan = choose_anchors(np.array([[6, 6], [12, 8], [24, 24], [40, 12]], np.float64))
    cfg = {"n_classes": len(CLASSES), "anchor_sizes": plan["sizes"], "aspect_ratios": plan["aspect_ratios"],
           "fpn_channels": 64, "max_detections": 20}
    net = build_boxnet(cfg)
    with torch.no_grad():
        net.head.classification_head.cls_logits.bias.fill_(0.0)
        net.head.classification_head.cls_logits.weight.mul_(1000.0)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / FILE, net.state_dict(), kind=KIND, arch=ARCH, arch_config=cfg,
                    input_spec={"channels": 3, "scale": 1.0, "pad_multiple": 32}, class_names=CLASSES, threshold=0.6)
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """Short training (pretrained encoder) on 16 synthetic 64x64 images whose mask components are the boxes
    (as `train boxes --format plain`)."""
    data = write_plain_set(directory / "data", 16, (64, 64), seed=7000, defect_prob=0.9)
    cfg = LiteTrainConfig(task="boxes", backbone="lite0", steps=40, batch=8, lr=1e-3, threads=1)
    res = train_lite0(cfg, directory / "model", data=str(data), fmt="plain", quiet=True)
    return TinyRun(res.checkpoint.parent, [h["loss"] for h in res.info.train_data["history"]])
