"""Tiny segmenter for the tests: random confident weights, and seconds of training on tiny synthetic data."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.data.synthetic import write_plain_set
from models.families.segmenter.model import DEFAULT_DECODER, LiteUNet
from models.training.lite0 import LiteTrainConfig, train_lite0

CLASSES = ["blob", "bar"]


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random-init 2-class segmenter whose head is scaled so that its probabilities form confident regions."""
    torch.manual_seed(seed)
    seg = LiteUNet(len(CLASSES), pretrained=False, **DEFAULT_DECODER)
    with torch.no_grad():
        seg.head.weight.mul_(40.0)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / "segmenter.pt", seg.state_dict(), kind="segmenter", arch="lite0-unet",
                    arch_config={"n_classes": len(CLASSES), **DEFAULT_DECODER},
                    input_spec={"channels": 3, "scale": 1.0, "pad_multiple": 32}, class_names=CLASSES)
    return directory


def tiny_train(directory: Path, task: str = "segmenter", defect_prob: float = 0.9, n: int = 12,
               epochs: int = 3, batch: int = 4, backbone: str = "none") -> TinyRun:
    """`epochs` short epochs (from scratch unless `backbone` is lite0) on `n` synthetic 64x64 images (the Lite0
    engine, as `train segmenter`)."""
    data = write_plain_set(directory / "data", n, (64, 64), seed=7000, defect_prob=defect_prob)
    cfg = LiteTrainConfig(task=task, backbone=backbone, epochs=epochs, batch=batch, threads=1, patch=64, size=64,
                          patience=epochs)
    res = train_lite0(cfg, directory / "model", data=str(data), fmt="plain", quiet=True)
    return TinyRun(res.checkpoint.parent, [h["loss"] for h in res.info.train_data["history"]])
