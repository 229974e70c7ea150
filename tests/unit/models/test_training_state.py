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


def test_weight_ema_averages_parameters_and_copies_buffers():
    from models.training.lite0 import WeightEMA

    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(10.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)  # warm-up: d = min(0.5, 2 / 11)
    d = 2 / 11
    assert ema.model[0].weight.item() == pytest.approx(10.0 * (1 - d))
    assert ema.model[1].running_mean.item() == 3.0 and not ema.model[0].weight.requires_grad
    st = ema.state_dict()
    again = WeightEMA(model, decay=0.5)
    again.load_state_dict(st)
    assert again.updates == 1 and again.model[0].weight.item() == pytest.approx(ema.model[0].weight.item())
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightEMA(model, decay=1.0)


def test_the_engine_validates_and_keeps_the_averaged_weights_and_resumes_them(tmp_path):
    data = write_plain_set(tmp_path / "data", 6, (64, 64), seed=7000, defect_prob=0.9)
    plain = LiteTrainConfig(task="segmenter", backbone="none", steps=6, batch=4, threads=1, patch=64)
    averaged = LiteTrainConfig(task="segmenter", backbone="none", steps=6, batch=4, threads=1, patch=64, ema=0.9)
    a = train_lite0(plain, tmp_path / "a", data=str(data), fmt="plain", quiet=True)
    b = train_lite0(averaged, tmp_path / "b", data=str(data), fmt="plain", quiet=True)
    assert a.losses == b.losses  # the same optimisation: only what is validated and kept differs
    assert b.info.train_data["choices"]["weights_ema"].startswith("decay 0.9")
    assert a.info.train_data["choices"]["weights_ema"] == "off" and a.model_version != b.model_version
    st = read_state(tmp_path / "b" / "train_state_segmenter.pt")
    assert st["ema"]["updates"] == 6
    again = train_lite0(averaged, tmp_path / "b", data=str(data), fmt="plain", quiet=True, resume=True)
    assert again.model_version == b.model_version
