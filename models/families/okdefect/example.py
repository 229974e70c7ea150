"""Tiny OK/DEFECT model for the tests: random weights that call every patch DEFECT, and seconds of training."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint, update_metrics
from models.core.families import TinyRun
from models.data.synthetic import write_plain_set
from models.families.okdefect.model import CLASS, FILE, KIND, build_okdefect
from models.training.lite0 import LiteTrainConfig, train_lite0


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random-init classifier whose bias makes every patch DEFECT (so its CAM regions can be compared)."""
    torch.manual_seed(seed)
    net = build_okdefect()
    with torch.no_grad():
        net.classifier.bias.fill_(6.0)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    save_checkpoint(path, net.state_dict(), kind=KIND, arch="lite0", arch_config={"n_outputs": 1},
                    input_spec={"channels": 3, "size": 64, "patch": 64}, class_names=[CLASS], threshold=0.5)
    update_metrics(path, {}, postprocess={"cam": "gradcam++", "cam_threshold": 0.5, "min_area": 4})
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """Four short epochs on 32x32 patches of 16 synthetic 64x64 images (as `train okdefect`; the pretrained
    encoder, which loads from the installed wheel in a fraction of a second)."""
    data = write_plain_set(directory / "data", 16, (64, 64), seed=7000, defect_prob=0.6)
    cfg = LiteTrainConfig(task="okdefect", backbone="lite0", epochs=4, batch=16, lr=2e-3, threads=1, tile=32,
                          patience=4)
    res = train_lite0(cfg, directory / "model", data=str(data), fmt="plain", quiet=True)
    return TinyRun(res.checkpoint.parent, [h["loss"] for h in res.info.train_data["history"]])
