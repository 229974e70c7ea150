"""Tiny gate for the tests: a random gate in front of the tiny segmenter, and seconds of training."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.families.image_classifier.model import build_image_classifier
from models.families.segmenter import example as segmenter_example


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """The tiny segmenter behind a random gate whose threshold lets every frame pass."""
    segmenter_example.tiny_model(directory, seed)
    torch.manual_seed(seed + 1)
    g = build_image_classifier(1)
    save_checkpoint(directory / "gate.pt", g.state_dict(), kind="gate", arch="lite0", arch_config={"n_outputs": 1},
                    input_spec={"channels": 3, "size": 64}, class_names=segmenter_example.CLASSES, threshold=1e-6)
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """Five short epochs on a tiny synthetic set with good and defective images (as `train gate`), written
    beside a tiny segmenter of the same classes so that the directory is a gated model. On the pretrained encoder
    (shipped in a wheel, nothing downloaded): with balanced batches a gate cannot lower its loss by learning the
    share of good images alone, and from scratch 15 steps learn nothing else."""
    run = segmenter_example.tiny_train(directory, task="gate", defect_prob=0.3, n=24, epochs=5, batch=8,
                                       backbone="lite0")
    seg = segmenter_example.tiny_train(directory / "inner", task="segmenter", defect_prob=0.9)
    for p in seg.directory.glob("segmenter.*"):
        shutil.copy(p, run.directory / p.name)
    return run
