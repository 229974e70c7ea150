"""Tiny CNN+RNN classifier for the tests: random weights, and seconds of training on tiny synthetic data."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.families.cnn_rnn.model import ARCH, FILE, KIND, CnnRnn
from models.families.segmenter import example as segmenter_example

CLASSES = ["scratch", "pit", "patch"]


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random-init CNN+RNN of 3 classes (no "good" class: every frame gets one frame-wide detection)."""
    torch.manual_seed(seed)
    net = CnnRnn(len(CLASSES), 32)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / FILE, net.state_dict(), kind=KIND, arch=ARCH,
                    arch_config={"n_outputs": len(CLASSES), "has_good": False, "hidden": 32},
                    input_spec={"channels": 3, "size": 64}, class_names=CLASSES)
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """Three short epochs from scratch on the tiny synthetic set (as `train cnn-rnn --data`)."""
    return segmenter_example.tiny_train(directory, task="cnn-rnn", defect_prob=0.6)
