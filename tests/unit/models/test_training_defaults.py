"""The Lite0 engine's defaults chosen from the data (issue 22): crop geometry, step budget, schedule, smoothed early
stopping sized to the validation set, balanced sampling; and that the engine uses and records them."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import models.families  # noqa: F401  (registers the training tasks)
from models.data.synthetic import write_plain_set
from models.training.defaults import (MIN_DEFECTIVE_VAL, MIN_STEPS, SmoothedStopper, balanced_order, choose_budget,
                                      choose_geometry, choose_stop_rule, lr_factor, parse_duration)
from models.training.lite0 import LiteTrainConfig, defect_bce_dice_loss, train_lite0


# ---- geometry -------------------------------------------------------------------------------
def test_the_crop_follows_the_median_image_not_the_smallest():
    # the magnetic-tile case of issue 22: short sides 103..600, median 258 -> the old rule gave 96
    shapes = [(103, 300)] + [(258, 400)] * 5 + [(600, 600)] * 3
    g = choose_geometry(shapes)
    assert g.patch == 256 and g.min_short == 103 and g.median_short == 258
    assert g.padded_share == pytest.approx(1 / 9)
    assert choose_geometry([(200, 200)] * 4).patch == 192  # NEU-Seg: as the README's --patch 192
    assert choose_geometry([(40, 50)]).patch == 32  # never below one multiple
    assert choose_geometry([(1000, 1600)]).patch == 256  # never above the target
    assert choose_geometry(shapes, patch=128).patch == 128
    with pytest.raises(ValueError):
        choose_geometry(shapes, patch=100)


# ---- budget ---------------------------------------------------------------------------------
def test_the_budget_scales_with_the_data_and_is_clamped():
    small = choose_budget(75, 16)  # CrackForest's training split: the old 30 epochs were 120 steps
    assert small.steps == MIN_STEPS and small.steps_per_pass == 4
    mid = choose_budget(3129, 16)  # NEU-Seg train
    assert mid.steps == round(12 * 3129 / 16) and mid.eval_every == 195
    assert choose_budget(100_000, 16).steps == 3000
    assert choose_budget(75, 16, steps=40).steps == 40
    e = choose_budget(75, 16, epochs=3)
    assert (e.steps, e.eval_every) == (12, 4)
    for b in (small, mid, choose_budget(100_000, 16)):  # between 6 and 15 validations per run
        assert 6 <= b.steps // b.eval_every <= 16
    t = choose_budget(75, 16, seconds=60)
    assert t.seconds == 60 and t.steps >= 10 ** 9
    with pytest.raises(ValueError):
        choose_budget(0, 16)


def test_durations_parse():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("45") == 45 and parse_duration("1.5h") == 5400
    for bad in ("", "20x", "m20", "20 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_the_schedule_warms_up_then_anneals_to_its_floor():
    assert lr_factor(0.0) == pytest.approx(0.02)
    assert lr_factor(0.05) == pytest.approx(1.0)
    assert lr_factor(1.0) == pytest.approx(0.02) and lr_factor(2.0) == pytest.approx(0.02)
    xs = [lr_factor(p / 100) for p in range(5, 101)]
    assert all(a >= b for a, b in zip(xs, xs[1:]))  # monotone after the warm-up


# ---- early stopping -------------------------------------------------------------------------
def test_few_defective_validation_images_mean_no_early_stopping_and_the_last_weights():
    rule = choose_stop_rule(MIN_DEFECTIVE_VAL - 1)
    assert not rule.enabled and rule.keep == "last"
    st = SmoothedStopper(rule)
    keeps = [st.update(v) for v in [0.64, 0.54, 0.57, 0.5, 0.55, 0.56]]
    assert all(keeps) and not st.should_stop(1.0)  # the metal-parts case: noise never stops it


def test_early_stopping_waits_for_the_minimum_budget_and_smooths_noise():
    rule = choose_stop_rule(50, patience=2)
    assert rule.enabled and rule.min_share == 0.5
    st = SmoothedStopper(rule)
    # a noisy but rising metric: one raw peak followed by two lower values must not stop it
    seq = [(0.1, 0.30), (0.2, 0.50), (0.3, 0.40), (0.4, 0.42), (0.5, 0.55), (0.6, 0.56), (0.7, 0.57)]
    for progress, v in seq:
        st.update(v)
        assert not st.should_stop(progress)
    assert st.best_index == len(seq) - 1
    # the raw rule (patience on the best raw value) would have stopped at 0.4: 0.40, 0.42 < 0.50
    for v in (0.30, 0.30):
        st.update(v)
    assert st.should_stop(0.9)
    early = SmoothedStopper(rule)  # nothing stops before half the budget
    for v in (0.9, 0.1, 0.1, 0.1):
        early.update(v)
    assert not early.should_stop(0.49) and early.should_stop(0.5)
    flat = SmoothedStopper(rule)  # a saturated metric (accuracy 1.0 every time) stops too
    for v in (0.99, 1.0, 1.0, 1.0, 1.0, 1.0):
        flat.update(v)
    assert flat.should_stop(0.6)
    st2 = SmoothedStopper(rule)
    st2.load(st.state())
    assert st2.state() == st.state()


# ---- sampling -------------------------------------------------------------------------------
def test_batches_are_half_defective_on_a_mostly_good_set():
    rng = np.random.default_rng(0)
    defective = [i % 10 < 3 for i in range(100)]  # 30 % defective (the tiles: 70 % defect-free)
    idx = balanced_order(defective, 400, rng)
    assert len(idx) == 400 and np.asarray(defective)[idx].mean() == pytest.approx(0.5)
    assert set(idx.tolist()) == set(range(100))  # every item comes up
    only = balanced_order([True] * 7, 20, rng)  # one group: a uniform walk
    assert sorted(only[:7].tolist()) == list(range(7))


def test_the_defect_channel_loss_is_low_for_a_right_and_high_for_a_wrong_prediction():
    import torch
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:4, 2:4] = 2
    right = torch.full((1, 3, 8, 8), -5.0)
    right[:, 0] = 5.0
    right[0, 2, 2:4, 2:4], right[0, 0, 2:4, 2:4] = 5.0, -5.0
    assert float(defect_bce_dice_loss(right, y)) < 0.05
    assert float(defect_bce_dice_loss(-right, y)) > 1.0


# ---- the engine uses them -------------------------------------------------------------------
def _mixed_sizes(root, big: int = 128):
    """A plain set: one 64x64 image and four big x big ones (upscaled synthetic samples, masks alike)."""
    d = write_plain_set(root, 5, (64, 64), seed=7000, defect_prob=1.0)
    for i, p in enumerate(sorted((d / "images").iterdir())):
        if i == 0:
            continue
        m = d / "masks" / p.name
        cv2.imwrite(str(p), cv2.resize(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), (big, big)))
        cv2.imwrite(str(m), cv2.resize(cv2.imread(str(m), cv2.IMREAD_UNCHANGED), (big, big),
                                       interpolation=cv2.INTER_NEAREST))
    return d


def test_the_engine_trains_a_step_budget_records_its_choices_and_crops_from_the_median(tmp_path):
    data = _mixed_sizes(tmp_path / "data")
    lines: list[str] = []
    cfg = LiteTrainConfig(task="segmenter", backbone="none", steps=3, batch=2, threads=1)
    res = train_lite0(cfg, tmp_path / "m", data=str(data), fmt="plain", quiet=True, log=lines.append)
    td = res.info.train_data
    ch = td["choices"]
    assert ch["crop"]["patch"] == 128 and res.info.input_spec["train_patch"] == 128  # the old rule: 64
    assert ch["budget"]["steps"] == 3 and ch["steps_run"] == 3 and ch["ended_by"] == "steps"
    assert not ch["early_stopping"]["enabled"]  # one validation image
    assert any("crop" in ln for ln in lines) and any("early_stopping" in ln for ln in lines)
    json.dumps(ch)  # the sidecar can hold it
    # a wall-time budget ends a run that has no step limit
    t = train_lite0(LiteTrainConfig(task="segmenter", backbone="none", time_budget=0.5, batch=2, threads=1),
                    tmp_path / "t", data=str(data), fmt="plain", quiet=True)
    assert t.info.train_data["choices"]["ended_by"] == "time"


def test_train_prints_its_choices_and_takes_steps_and_a_time_budget(tmp_path, capsys):
    from streams.cli import main

    data = write_plain_set(tmp_path / "data", 6, (64, 64), seed=7000, defect_prob=0.6)
    rc = main(["train", "segmenter", "--data", str(data), "--format", "plain", "--out", str(tmp_path / "m"),
               "--backbone", "none", "--steps", "2", "--batch", "2", "--time-budget", "10m", "--quiet",
               "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "train segmenter: crop: median short side 64 px" in out and "budget: given (--steps)" in out
    assert "sampling: balanced" in out and "after 2 steps (ended by steps)" in out
    ch = json.loads((tmp_path / "m" / "segmenter.json").read_text())["train_data"]["choices"]
    assert ch["budget"]["seconds"] == 600
    with pytest.raises(SystemExit):
        main(["train", "segmenter", "--data", str(data), "--out", str(tmp_path / "x"), "--time-budget", "soon"])
