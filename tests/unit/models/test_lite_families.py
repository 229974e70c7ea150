"""Segmenter, image classifier and gate: tiny training runs on images the test writes, through the
CLI and the trainer; each lowers its loss, writes a checkpoint that loads as an Inspector, and
records its data split."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.core.types import Inspector
from models.data.datasets import DatasetError, open_dataset, tile_samples
from models.families.gate.model import choose_gate_threshold
from models.families.segmenter.model import SegPostprocess, choose_postprocess, class_regions
from models.loading import load_inspector, model_files, model_identity
from models.training.lite0 import LiteTrainConfig, focal_tversky_loss, image_label, train_lite0
from streams.cli import main as cli


def write_blobs(root: Path, n: int = 16, size: int = 64, good_every: int = 0, seed: int = 0) -> Path:
    """Plain-format set: grey texture, class 1 = bright disc, class 2 = dark bar; every
    `good_every`-th image is defect-free."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("blob\nbar\n")
    for i in range(n):
        img = rng.normal(120, 10, (size, size)).clip(0, 255).astype(np.uint8)
        m = np.zeros_like(img)
        if not (good_every and i % good_every == 0):
            cls = 1 + i % 2
            x, y = (int(v) for v in rng.integers(14, size - 14, 2))
            if cls == 1:
                cv2.circle(img, (x, y), 8, 220, -1)
                cv2.circle(m, (x, y), 8, 1, -1)
            else:
                cv2.rectangle(img, (x - 10, y - 3), (x + 10, y + 3), 30, -1)
                cv2.rectangle(m, (x - 10, y - 3), (x + 10, y + 3), 2, -1)
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), m)
    return root


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    return write_blobs(tmp_path_factory.mktemp("blobs"), n=20, good_every=5)


def _losses(ckpt_json: Path) -> list[float]:
    return [h["loss"] for h in json.loads(ckpt_json.read_text())["train_data"]["history"]]


def test_segmenter_cli_learns_writes_a_loadable_checkpoint_and_inspects(blobs, tmp_path, capsys):
    out = tmp_path / "seg"
    rc = cli(["train", "segmenter", "--data", str(blobs), "--format", "plain", "--out", str(out), "--epochs", "6",
              "--batch", "8", "--patch", "64", "--patience", "10", "--quiet", "--threads", "1"])
    assert rc == 0
    assert "segmenter.pt" in capsys.readouterr().out
    losses = _losses(out / "segmenter.json")
    assert len(losses) == 6 and losses[-1] < losses[0]
    meta = json.loads((out / "segmenter.json").read_text())
    assert meta["kind"] == "segmenter" and meta["class_names"] == ["blob", "bar"]
    assert meta["train_data"]["val_split"] == 0.2 and meta["train_data"]["val_images"] == 4
    assert len(meta["postprocess"]["class_thresholds"]) == 2
    insp = load_inspector(out, device="cpu")
    assert isinstance(insp, Inspector) and insp.family == "segmenter"
    assert model_files(out).family == "segmenter"
    assert model_identity(out)[0] == insp.model_version
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((blobs / "images").iterdir())[:3]]
    frames.append(np.full((50, 77, 3), 120, np.uint8))  # another size, colour
    dets, scores = insp.inspect_scored(frames)
    assert len(dets) == len(scores) == 4
    assert all(0.0 <= s <= 1.0 for s in scores)
    for ds, f in zip(dets, frames):
        for d in ds:
            assert d.defect_class in ("blob", "bar")
            assert d.mask.shape == (d.bbox.height, d.bbox.width) and d.mask.sum() == d.area_px
            assert 0 <= d.bbox.x0 < d.bbox.x1 <= f.shape[1] and 0 <= d.bbox.y0 < d.bbox.y1 <= f.shape[0]


def test_classifier_trains_one_class_per_image_and_reports_frame_wide_detections(blobs, tmp_path):
    res = train_lite0(LiteTrainConfig(task="classifier", epochs=5, batch=8, size=64, patience=10, threads=1),
                      tmp_path / "cls", data=str(blobs), fmt="plain", quiet=True)
    losses = _losses(tmp_path / "cls" / "classifier.json")
    assert losses[-1] < losses[0]
    insp = load_inspector(tmp_path / "cls", device="cpu")
    assert insp.family == "classifier" and insp.class_names == ["blob", "bar"]
    assert insp.info.arch_config == {"n_outputs": 3, "has_good": True}  # good + two classes
    dets, scores = insp.inspect_scored([np.full((40, 90), 120, np.uint8)])
    assert len(dets) == 1 and 0.0 <= scores[0] <= 1.0
    for d in dets[0]:
        assert tuple(d.bbox) == (0, 0, 90, 40) and d.defect_class in ("blob", "bar")
    assert res.metric_name == "val_accuracy" and 0.0 <= res.metric <= 1.0


def test_gate_in_front_of_a_segmenter_skips_frames_below_its_threshold(blobs, tmp_path):
    out = tmp_path / "m"
    train_lite0(LiteTrainConfig(task="segmenter", epochs=1, batch=8, patch=64, threads=1), out, data=str(blobs),
                fmt="plain", quiet=True)
    res = train_lite0(LiteTrainConfig(task="gate", epochs=4, batch=8, size=64, threads=1, patience=10), out,
                      data=str(blobs), fmt="plain", quiet=True)
    assert res.info.kind == "gate" and 0.001 <= res.info.threshold <= 0.5
    insp = load_inspector(out, device="cpu")
    assert insp.family == "gate+segmenter"
    assert insp.model_version == model_identity(out)[0]
    assert insp.model_version.startswith(insp.inner.model_version + "+gate-")
    insp.threshold = 1.01  # nothing passes: every frame skipped, no detections
    dets, scores = insp.inspect_scored([np.full((64, 64), 120, np.uint8)] * 2)
    assert dets == [[], []] and insp.stats == {"frames": 2, "skipped": 2} and all(s < 0.5 for s in scores)
    insp.threshold = 0.0  # everything passes to the segmenter
    _, scores = insp.inspect_scored([np.full((64, 64), 120, np.uint8)])
    assert scores[0] >= 0.5 and insp.stats["skipped"] == 2


def test_gate_refuses_data_without_good_images_unless_tiled(tmp_path):
    data = write_blobs(tmp_path / "d", n=8, size=128)
    with pytest.raises(DatasetError, match="--tile"):
        train_lite0(LiteTrainConfig(task="gate", epochs=1, batch=4, size=64, threads=1), tmp_path / "g",
                    data=str(data), fmt="plain", quiet=True)
    samples = list(open_dataset("plain", str(data)))
    tiles = tile_samples(samples, 32)
    assert len(tiles) == 16 * len(samples)
    assert any(image_label(t) == 0 for t in tiles) and any(image_label(t) > 0 for t in tiles)
    assert sum(int((t.class_mask > 0).sum()) for t in tiles) == sum(int((s.class_mask > 0).sum()) for s in samples)


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli(["train", "segmenter", "--data", str(tmp_path / "nope"), "--format", "plain", "--out",
                str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_focal_tversky_is_small_for_a_perfect_prediction_and_large_for_a_miss():
    import torch

    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:5] = 1
    good = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 20
    bad = torch.nn.functional.one_hot(torch.zeros_like(target), 2).permute(0, 3, 1, 2).float() * 20
    assert float(focal_tversky_loss(good, target)) < 0.01
    assert float(focal_tversky_loss(bad, target)) > 0.5


def test_postprocess_choice_drops_small_noise_and_keeps_the_defect():
    probs = np.zeros((2, 32, 32), np.float32)
    probs[0] = 1.0
    gt = np.zeros((32, 32), np.int64)
    gt[10:20, 10:20] = 1
    probs[1, 10:20, 10:20], probs[0, 10:20, 10:20] = 0.9, 0.1
    probs[1, 2:4, 2:4], probs[0, 2:4, 2:4] = 0.95, 0.05  # 4-px noise
    post, ious = choose_postprocess([(probs, gt)], 1)
    assert post.min_areas[0] > 4 and ious[0] == pytest.approx(1.0)
    regions = class_regions(probs, post)
    assert len(regions) == 1 and int(regions[0][2][:, 4].sum()) == 100
    assert class_regions(probs, SegPostprocess((0.5,), (0,)))[0][2][:, 4].sum() == 104


def test_gate_threshold_is_recall_first():
    scores = [0.9, 0.8, 0.05, 0.3, 0.01, 0.02]
    labels = [True, True, True, False, False, False]
    t = choose_gate_threshold(scores, labels, min_recall=1.0)
    assert 0.02 < t <= 0.05  # every defective image passes; two of three good ones are skipped
    assert choose_gate_threshold([0.9], [False]) == 1e-3


def test_evaluate_held_out_and_tiles(blobs, tmp_path):
    train_lite0(LiteTrainConfig(task="classifier", epochs=1, batch=8, size=64, threads=1), tmp_path / "c",
                data=str(blobs), fmt="plain", quiet=True)
    common = ["evaluate", "--data", str(blobs), "--format", "plain", "--model", str(tmp_path / "c"),
              "--threads", "1"]
    assert cli([*common, "--held-out", "--out", str(tmp_path / "e1")]) == 0
    rep = next(iter(json.loads((tmp_path / "e1" / "metrics.json").read_text()).values()))
    assert rep["metrics"]["images"] == 4  # the 20 % recorded at training
    assert rep["meta"]["family"] == "classifier" and rep["metrics"]["image_accuracy"] is not None
    assert cli([*common, "--tile", "32", "--limit", "5", "--out", str(tmp_path / "e2")]) == 0
    rep = next(iter(json.loads((tmp_path / "e2" / "metrics.json").read_text()).values()))
    assert rep["metrics"]["images"] == 20


def test_threshold_command_retunes_a_segmenter_on_validation_images(blobs, tmp_path, capsys):
    out = tmp_path / "s"
    train_lite0(LiteTrainConfig(task="segmenter", epochs=1, batch=8, patch=64, threads=1), out, data=str(blobs),
                fmt="plain", quiet=True)
    version = json.loads((out / "segmenter.json").read_text())["model_version"]
    assert cli(["train", "threshold", "--data", str(blobs), "--format", "plain", "--out", str(out),
                "--threads", "1"]) == 0
    assert "blob: p >=" in capsys.readouterr().out
    meta = json.loads((out / "segmenter.json").read_text())
    assert meta["model_version"] == version  # weights unchanged
    assert "postprocess_tuned_on" in meta["metrics"] and len(meta["postprocess"]["min_areas"]) == 2
