"""Tiny sequence vote for the tests: random weights beside the tiny severity model, and seconds of training."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import save_checkpoint
from models.core.families import TinyRun
from models.data.synthetic import CLASS_NAMES
from models.families.severity import example as severity_example
from models.families.track_vote.model import ARCH, FILE, KIND, TrackVoterNet
from models.families.track_vote.train import VoteTrainConfig, train_track_vote

SIZE = 32


def tiny_model(directory: Path, seed: int = 0) -> Path:
    """The tiny severity model with a random-init voter of its classes beside it."""
    severity_example.tiny_model(directory)
    torch.manual_seed(seed)
    net = TrackVoterNet(len(CLASS_NAMES), hidden=16)
    save_checkpoint(directory / FILE, net.state_dict(), kind=KIND, arch=ARCH,
                    arch_config={"n_classes": len(CLASS_NAMES), "hidden": 16},
                    input_spec={"channels": 3, "size": SIZE}, class_names=list(CLASS_NAMES))
    return directory


def tiny_train(directory: Path) -> TinyRun:
    """Four epochs from scratch on the tracks of 10 small rendered parts (as `train track-vote`), beside the tiny
    severity model."""
    severity_example.tiny_model(directory)
    cfg = VoteTrainConfig(out=str(directory), parts=10, val_parts=3, frames_per_part=4, frame_shape=(96, 192),
                          size=SIZE, epochs=4, batch=4, lr=3e-3, threads=1, pretrained=False, progress=False)
    _path, losses, _fig = train_track_vote(cfg, list(CLASS_NAMES), log=lambda _m: None)
    return TinyRun(directory, losses)
