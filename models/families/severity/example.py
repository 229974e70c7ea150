"""Tiny severity model for the tests: random confident weights, and seconds of training on synthetic frames."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.data.synthetic import CLASS_NAMES
from models.families.severity.detector import build_detector
from models.families.severity.region_classifier import build_classifier
from models.families.severity.train import ClassifierTrainConfig, DetectorTrainConfig, train_classifier, train_detector

TINY = {"width": 8, "stem": 8}  # fast detector of a few thousand parameters


def tiny_model(directory: Path, seed: int = 3) -> Path:
    """A tiny fast detector and region classifier with random weights scaled into confident regions."""
    torch.manual_seed(seed)
    det = build_detector("fast", **TINY)
    clf = build_classifier(len(CLASS_NAMES), width=4)
    with torch.no_grad():
        det.head.weight.mul_(60.0)
        det.head.bias.fill_(2.0)
        clf.head[-1].bias[0] = -4.0  # no region is called background: detections to compare
        clf.head[-1].bias[3] = 3.0  # and one class clearly ahead, as a trained classifier would be
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(directory / "detector_fast.pt", det.state_dict(), kind="detector", arch="fast",
                    arch_config=dict(TINY), input_spec={"channels": 1}, class_names=list(CLASS_NAMES), threshold=3.0)
    save_checkpoint(directory / "classifier.pt", clf.state_dict(), kind="classifier", arch="cnn4",
                    arch_config={"n_classes": len(CLASS_NAMES), "width": 4}, input_spec={"channels": 2, "crop": 64},
                    class_names=list(CLASS_NAMES))
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """60 detector steps and one classifier epoch on 8 synthetic 96x96 frames (as `train detector|classifier`);
    the losses are the detector's, by step."""
    quiet = {"quiet": True, "log": lambda _msg: None}
    det = train_detector(DetectorTrainConfig(arch="fast", arch_config=dict(TINY), steps=60, batch=4, patch=64,
                                             n_frames=8, frame_shape=(96, 96), n_val=4, threads=1),
                         directory, **quiet)
    train_classifier(ClassifierTrainConfig(epochs=1, batch=32, n_frames=8, frame_shape=(96, 96), width=4, threads=1),
                     directory, **quiet)
    return TinyRun(directory, det.losses)
