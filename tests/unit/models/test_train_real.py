"""Training He & Liu's detector and region classifier on a plant's annotated images (plain format)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.core.checkpoints import load_checkpoint
from models.core.types import BBox, Detection, InspectionSample
from models.data.datasets import DatasetError
from models.families.severity.train import ClassifierTrainConfig, DetectorTrainConfig, train_classifier, train_detector
from models.families.severity.train_data import DataSpec, prepare_images
from models.loading import load_inspector

CLASSES = ("spot", "streak")


def _image(rng: np.random.Generator, size: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey textured surface with one bright defect: 1 = round spot, 2 = thin streak, 0 = none."""
    img = np.clip(rng.normal(90, 6, (size, size)), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    c = int(rng.integers(16, size - 16))
    r = int(rng.integers(16, size - 16))
    if kind == 1:
        cv2.circle(mask, (c, r), int(rng.integers(5, 9)), 1, -1)
    elif kind == 2:
        cv2.line(mask, (c - 12, r - 3), (c + 12, r + 3), 2, 3)
    img[mask > 0] = np.clip(img[mask > 0].astype(int) + 90, 0, 255).astype(np.uint8)
    return img, mask


def write_plain_dataset(root: Path, n: int = 12, seed: int = 0, small: bool = True) -> Path:
    """images/*.png (64x64 and 96x96, one 48x48 smaller than the training patch), masks/*.png
    with class ids, classes.txt; the last image is defect-free."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        size = 48 if (small and i == 0) else (64 if i % 2 else 96)
        kind = 0 if i == n - 1 else 1 + i % 2
        img, mask = _image(rng, size, kind)
        if i % 3 == 2:  # colour images are converted to grey as the Inspector does
            img = np.repeat(img[:, :, None], 3, 2).copy()
            img[:, :, 0] = np.clip(img[:, :, 0].astype(int) + 3, 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"im{i:02d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"im{i:02d}.png"), mask)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_plain_dataset(tmp_path_factory.mktemp("plant"))


def _det_cfg(**kw) -> DetectorTrainConfig:
    base = dict(steps=60, batch=4, patch=64, lr=3e-3, arch_config={"width": 8, "stem": 8}, val_every=20, threads=1)
    return DetectorTrainConfig(**{**base, **kw})


_SMALL_GRID = {"candidates": [2.0, 4.0, 6.0], "relatives": [0.0], "lows": [1.0, 0.7], "hole_areas": [0, 64],
               "flip_ttas": [False]}


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    spec = DataSpec("plain", str(dataset), val_split=0.25, split_seed=3)
    det = train_detector(_det_cfg(), out, spec, quiet=True, log=lambda s: None, grid=_SMALL_GRID)
    clf = train_classifier(ClassifierTrainConfig(epochs=12, width=8, batch=8, lr=3e-3, threads=1,
                                                 detector=det.checkpoint), out, spec, quiet=True, log=lambda s: None)
    return out, spec, det, clf


def test_detector_learns_and_records_data_split_and_classes(trained, dataset):
    out, spec, det, _ = trained
    assert np.mean(det.losses[-10:]) < 0.5 * np.mean(det.losses[:10])
    info = load_checkpoint(out / "detector_fast.pt", expected_kind="detector").info
    assert info.class_names == list(CLASSES)
    td = info.train_data
    assert td["data_spec"] == {"format": "plain", "data": str(dataset), "val_data": None, "val_split": 0.25,
                               "split_seed": 3, "limit": None}
    assert td["train_images"] == 9 and td["val_images"] == 3
    assert len(td["val_sources"]) == 3 and td["masks_from_boxes"] is False
    # validated every 20 steps on the one engine; the checkpoint holds the weights of the kept validation
    assert [h["step"] for h in td["history"]] == [20, 40, 60]
    kept = next(h for h in td["history"] if h["step"] == td["best_step"])
    assert abs(info.metrics["val_mean_iou"] - kept["val_mean_iou"]) < 1e-6
    assert info.threshold in _SMALL_GRID["candidates"]
    assert set(info.postprocess) == {"relative", "low", "hole_area", "flip_tta"}
    assert td["config"]["task"] == "detector" and td["config"]["options"]["p_defect"] == 0.5
    # fewer than 20 defective validation images: no early stopping, the whole budget and the last weights
    assert td["choices"]["steps_run"] == 60 and td["best_step"] == 60 and not td["stopped_early"]
    assert td["choices"]["crop"]["patch"] == 64 and "synthetic" not in td["source"]


def test_detector_finds_the_bright_defects_on_validation_images(trained):
    _, _, det, _ = trained
    assert det.info.metrics["val_mean_iou"] > 0.3  # untrained (all zero) maps score 0 on defect images


def test_classifier_records_real_classes_and_loads_with_the_detector_as_an_inspector(trained, dataset):
    out, _, _, clf = trained
    assert np.mean(clf.losses[-3:]) < np.mean(clf.losses[:3])
    assert clf.info.arch == "cnn4" and clf.info.class_names == list(CLASSES)
    counts = clf.info.train_data["crops_per_class"]
    assert len(counts) == 3 and all(c > 0 for c in counts)  # background, spot, streak
    assert clf.info.metrics["val_accuracy"] >= 0.75  # chance is 1/3: background, spot, streak
    assert [h["epoch"] for h in clf.info.train_data["history"]] == [float(e) for e in range(1, 13)]
    assert clf.info.train_data["hard_negatives_from"].endswith("detector_fast.pt")
    insp = load_inspector(out, device="cpu")
    assert insp.family == "severity" and insp.class_names == list(CLASSES)
    right = 0
    for i in range(11):  # every image but the last holds one defect: spot on even, streak on odd index
        img = cv2.imread(str(dataset / "images" / f"im{i:02d}.png"), cv2.IMREAD_UNCHANGED)
        if img.ndim == 3:
            img = np.ascontiguousarray(img[:, :, ::-1])  # colour images are served as RGB
        (dets,) = insp.inspect([img])
        assert all(isinstance(d, Detection) and d.defect_class in CLASSES for d in dets)
        right += [d.defect_class for d in dets] == [CLASSES[i % 2]]
    assert right >= 8


def test_resume_continues_and_refuses_other_data(dataset, tmp_path):
    spec = DataSpec("plain", str(dataset), val_split=0.25)
    cfg = _det_cfg(steps=6, val_every=3)
    first = train_detector(cfg, tmp_path, spec, quiet=True, log=lambda s: None, grid=_SMALL_GRID)
    again = train_detector(cfg, tmp_path, spec, resume=True, quiet=True, log=lambda s: None, grid=_SMALL_GRID)
    assert len(first.losses) == 6 and again.losses == first.losses  # complete: nothing retrained
    other = DataSpec("plain", str(dataset), val_split=0.5)
    with pytest.raises(DatasetError, match="other data"):
        train_detector(cfg, tmp_path, other, resume=True, quiet=True, log=lambda s: None)


def test_box_only_samples_get_their_boxes_filled_as_masks():
    img = np.full((40, 60, 3), 100, np.uint8)
    s = InspectionSample(img, None, ((BBox(5, 6, 25, 16), 2), (BBox(10, 8, 14, 12), 1)), ("a", "b"), None, None, "x")
    (im,), names, from_boxes = prepare_images([s])
    assert from_boxes and names == ("a", "b") and im.grey.shape == (40, 60)
    assert (im.mask > 0).sum() == 20 * 10
    assert im.mask[9, 11] == 1 and im.mask[7, 6] == 2  # the small box inside the large keeps its class
    assert set(np.unique(im.instances)) == {0, 1, 2}


def test_cli_trains_both_models_on_plain_data_and_writes_the_split(dataset, tmp_path, capsys):
    from streams.cli import main

    common = ["--data", str(dataset), "--format", "plain", "--val-split", "0.25", "--split-seed", "1",
              "--out", str(tmp_path), "--threads", "1", "--quiet"]
    assert main(["train", "detector", *common, "--steps", "4", "--batch", "2", "--patch", "64",
                 "--arch-config", '{"width": 8, "stem": 8}']) == 0
    assert main(["train", "classifier", "--arch", "cnn4", *common, "--epochs", "1", "--batch", "16",
                 "--detector", str(tmp_path / "detector_fast.pt")]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    assert main(["train", "threshold", *common]) == 0  # re-tuned with the classifier on the validation images
    assert "validation pipeline mean IoU" in capsys.readouterr().out
    meta = json.loads((tmp_path / "detector_fast.json").read_text())
    assert meta["train_data"]["split_seed"] == 1 and meta["train_data"]["data_spec"]["split_seed"] == 1 and meta["class_names"] == list(CLASSES)
    assert "val_pipeline_mean_iou" in meta["metrics"] and meta["metrics"]["threshold_tuning_split"]["val_images"] == 3
    assert json.loads((tmp_path / "classifier.json").read_text())["class_names"] == list(CLASSES)
    assert load_inspector(tmp_path, device="cpu").class_names == list(CLASSES)


def test_cli_wrong_path_is_a_clear_error(tmp_path, capsys):
    from streams.cli import main

    rc = main(["train", "detector", "--data", str(tmp_path / "nope"), "--format", "plain", "--out", str(tmp_path),
               "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "does not exist" in err and "Traceback" not in err


def test_cli_mask_of_another_size_is_a_clear_error(tmp_path, capsys):
    from streams.cli import main

    root = write_plain_dataset(tmp_path / "bad", n=3, small=False)
    cv2.imwrite(str(root / "masks" / "im01.png"), np.zeros((10, 10), np.uint8))
    rc = main(["train", "classifier", "--arch", "cnn4", "--data", str(root), "--format", "plain",
               "--out", str(tmp_path / "o"), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "masks must match" in err


def test_cli_data_without_defects_is_a_clear_error(tmp_path, capsys):
    from streams.cli import main

    root = tmp_path / "clean"
    (root / "images").mkdir(parents=True)
    (root / "classes.txt").write_text("spot\n")
    for i in range(3):
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.full((32, 32), 90, np.uint8))
    rc = main(["train", "detector", "--data", str(root), "--format", "plain", "--out", str(tmp_path / "o"),
               "--threads", "1", "--quiet", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "no annotated defect" in err


def test_the_detector_budget_counts_the_patches_that_tile_the_images():
    from types import SimpleNamespace

    from models.families.severity.train import DetectorTask

    tr = SimpleNamespace(patch=64, images=[SimpleNamespace(grey=np.zeros((96, 96), np.uint8)),
                                           SimpleNamespace(grey=np.zeros((48, 200), np.uint8))])
    task = DetectorTask()
    assert task.budget_items(tr) == 2 * 2 + 1 * 4  # a 200 px row needs 4 patches of 64, a 48 px one 1
    assert "64 px patches tiling the 2 training images" == task.budget_unit(tr)
