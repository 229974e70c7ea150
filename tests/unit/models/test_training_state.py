"""`--resume` reads its training state with `torch.load(weights_only=True)`: tensors and plain types only, so a
state file cannot run code (issue 17 item 14); every trainer goes through `models.training.state`."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.data.synthetic import write_plain_set
from models.families.severity.train import DetectorTrainConfig, train_detector
from models.training.lite0 import LiteTrainConfig, train_lite0
from models.training.state import read_state, save_state


class Payload:
    """Stands for any pickled object: under weights_only it must not be rebuilt."""


def _tamper(path) -> None:
    st = torch.load(path, map_location="cpu", weights_only=True)
    st["payload"] = Payload()
    torch.save(st, path)


def test_a_state_holds_only_tensors_and_plain_types(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=4)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    save_state(tmp_path / "s.pt", model, opt, sched, np.random.default_rng(0), step=1, losses=[0.5])
    st = read_state(tmp_path / "s.pt")
    assert st["step"] == 1 and st["losses"] == [0.5] and st["rng"]["bit_generator"] == "PCG64"
    assert not (tmp_path / "s.tmp").exists()  # written atomically
    _tamper(tmp_path / "s.pt")
    with pytest.raises(pickle.UnpicklingError):
        read_state(tmp_path / "s.pt")


def test_the_lite0_engine_resumes_without_unpickling(tmp_path):
    data = write_plain_set(tmp_path / "data", 6, (64, 64), seed=7000, defect_prob=0.9)
    cfg = LiteTrainConfig(task="segmenter", backbone="none", epochs=1, batch=4, threads=1, patch=64)
    first = train_lite0(cfg, tmp_path / "m", data=str(data), fmt="plain", quiet=True)
    again = train_lite0(cfg, tmp_path / "m", data=str(data), fmt="plain", quiet=True, resume=True)
    assert again.model_version == first.model_version  # resumed at the end: the same best epoch
    _tamper(tmp_path / "m" / "train_state_segmenter.pt")
    with pytest.raises(pickle.UnpicklingError):
        train_lite0(cfg, tmp_path / "m", data=str(data), fmt="plain", quiet=True, resume=True)


def test_the_severity_trainers_resume_without_unpickling(tmp_path):
    cfg = DetectorTrainConfig(arch="fast", arch_config={"width": 8, "stem": 8}, steps=4, batch=2, patch=64, n_frames=2,
                              frame_shape=(96, 96), n_val=1, threads=1)
    quiet = {"quiet": True, "log": lambda _m: None}
    train_detector(cfg, tmp_path, **quiet)
    _tamper(tmp_path / "train_state_detector_fast.pt")
    with pytest.raises(pickle.UnpicklingError):
        train_detector(cfg, tmp_path, resume=True, **quiet)
