"""Tiny image classifier for the tests: random weights, and seconds of training on tiny synthetic data."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.families.image_classifier.model import build_image_classifier
from models.families.segmenter import example as segmenter_example

CLASSES = ["scratch", "pit", "patch"]


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random-init classifier of 3 classes (no "good" class: every frame gets one frame-wide detection)."""
    torch.manual_seed(seed)
    clf = build_image_classifier(len(CLASSES))
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / "classifier.pt", clf.state_dict(), kind="classifier", arch="lite0",
                    arch_config={"n_outputs": len(CLASSES), "has_good": False},
                    input_spec={"channels": 3, "size": 64}, class_names=CLASSES)
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """Three short epochs from scratch on the same tiny synthetic set (as `train classifier --data`)."""
    return segmenter_example.tiny_train(directory, task="classifier", defect_prob=0.6)
