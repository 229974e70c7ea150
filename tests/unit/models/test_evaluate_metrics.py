"""Evaluation metrics: image-level AUROC/AP, per-class pixel IoU/Dice, image accuracy, worst-example
overlays and `defectstream evaluate` on a plain folder with any Inspector."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.core.types import BBox, Detection, InspectionSample
from models.data.datasets import instances_from_class_mask
from models.evaluation.evaluate import (ExampleCollector, PredictedDefect, ScoredPredictions, average_precision,
                             evaluate_predictions, image_auroc, to_markdown)
from streams.cli import main

NAMES = ("a", "b", "c")


def _mask_sample(cm: np.ndarray, names=NAMES, source: str = "") -> InspectionSample:
    inst, boxes = instances_from_class_mask(cm)
    return InspectionSample(np.zeros(cm.shape, np.uint8), cm.astype(np.uint8), boxes, tuple(names), inst, None, source)


def _pred(mask_full: np.ndarray, cls: str | None, conf: float | None = None) -> PredictedDefect:
    ys, xs = np.nonzero(mask_full)
    b = BBox(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return PredictedDefect(b, mask_full[b.y0:b.y1, b.x0:b.x1].copy(), cls, conf)


def _rows(shape, r0, r1, c0=0, c1=None) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def _by_image(samples, preds, scores=None):
    """A predictor that answers from a table keyed by the image object (images are passed through)."""
    table = {id(s.image): (p, None if scores is None else sc)
             for s, p, sc in zip(samples, preds, scores or [None] * len(samples))}

    def predict(images):
        got = [table[id(im)] for im in images]
        if scores is None:
            return [p for p, _ in got]
        return ScoredPredictions([p for p, _ in got], [sc for _, sc in got])

    return predict


# ------------------------------------------------------------------ AUROC / AP
def test_auroc_and_ap_without_ties_match_hand_values():
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (.35,.1) (.35,.4)x (.8,.1) (.8,.4) -> 3/4
    assert image_auroc(y, s) == pytest.approx(0.75)
    # descending: .8 pos (P 1, R .5), .4 neg, .35 pos (P 2/3, R 1), .1 neg -> .5*1 + .5*2/3
    assert average_precision(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ties_count_half_and_form_one_threshold():
    y, s = [0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]
    # (.9,.5) 1, (.9,.2) 1, (.5,.5) tie 1/2, (.5,.2) 1 -> 3.5/4
    assert image_auroc(y, s) == pytest.approx(0.875)
    # thresholds .9 (P 1, R .5), .5 holds one pos and one neg together (P 2/3, R 1); breaking the
    # tie with the positive first would give 1.0, with the negative first 5/6 only by luck
    assert average_precision(y, s) == pytest.approx(5 / 6)
    assert average_precision([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    assert image_auroc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)
    # the order of tied items must not matter
    assert average_precision([1, 0, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(5 / 6)


def test_perfect_and_inverted_ranking_and_single_label():
    assert image_auroc([0, 1, 1], [0.1, 0.2, 0.3]) == 1.0 and average_precision([0, 1, 1], [0.1, 0.2, 0.3]) == 1.0
    assert image_auroc([1, 0, 0], [0.1, 0.2, 0.3]) == 0.0
    # one positive ranked last of three: P = 1/3 at R = 1
    assert average_precision([1, 0, 0], [0.1, 0.2, 0.3]) == pytest.approx(1 / 3)
    assert image_auroc([1, 1], [0.2, 0.3]) is None and average_precision([0, 0], [0.2, 0.3]) is None
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.5])


# ------------------------------------------------------------------ per-class pixel metrics
def test_per_class_iou_and_dice_are_summed_over_the_split():
    shape = (10, 10)
    cm1 = np.zeros(shape, np.uint8)
    cm1[0:2] = 1  # a: 20 px
    cm1[8:10] = 2  # b: 20 px
    cm2 = np.zeros(shape, np.uint8)
    cm2[0:1] = 1  # a: 10 px
    s1, s2 = _mask_sample(cm1), _mask_sample(cm2)
    p1 = [_pred(_rows(shape, 0, 3), "a", 0.9),  # 30 px, 20 on a, 10 on background
          _pred(_rows(shape, 9, 10), "b", 0.8),  # 10 px on b
          _pred(_rows(shape, 5, 6, 0, 5), "zzz", 0.7)]  # 5 px of a class the data does not know
    p2 = [_pred(_rows(shape, 0, 1), "a", 0.9)]
    m = evaluate_predictions([s1, s2], _by_image([s1, s2], [p1, p2]), list(NAMES) + ["zzz"]).metrics
    # a: inter 20+10, gt 30, pred 40 -> IoU 30/40 (per-image mean would be (2/3+1)/2), Dice 60/70
    assert m["iou[a]"] == pytest.approx(0.75) and m["dice[a]"] == pytest.approx(6 / 7)
    # b: inter 10, gt 20, pred 10 -> IoU 1/2, Dice 20/30
    assert m["iou[b]"] == pytest.approx(0.5) and m["dice[b]"] == pytest.approx(2 / 3)
    # c never occurs nor is predicted: undefined, left out of the means
    assert m["iou[c]"] is None and m["dice[c]"] is None
    # background: gt 60+90, pred 55+90, inter 45+90 -> 135/160 (the unknown-class pixels count against it)
    assert m["iou_background"] == pytest.approx(135 / 160)
    assert m["miou_classes_with_background"] == pytest.approx((0.75 + 0.5 + 135 / 160) / 3)
    assert m["miou_classes"] == pytest.approx(0.625)
    assert m["mean_dice_classes"] == pytest.approx((6 / 7 + 2 / 3) / 2)
    # binary: gt 50, pred 55, tp 40 -> Dice 80/105, equal to pixel F1
    assert m["dice_defect"] == pytest.approx(80 / 105) and m["pixel_f1"] == pytest.approx(80 / 105)
    assert m["image_accuracy"] is None  # image 1 holds two classes
    assert m["image_auroc"] is None and m["image_ap"] is None  # the predictor gives no scores


def test_wrong_class_counts_against_both_classes_and_confidence_wins_overlaps():
    shape = (10, 10)
    cm = np.zeros(shape, np.uint8)
    cm[0:2] = 1
    s = _mask_sample(cm)
    # "b" (more confident) painted over "a" on the same 20 px: every gt pixel gets the wrong class
    preds = [_pred(_rows(shape, 0, 2), "b", 0.9), _pred(_rows(shape, 0, 2), "a", 0.3)]
    m = evaluate_predictions([s], _by_image([s], [preds]), list(NAMES)).metrics
    assert m["iou[a]"] == 0.0 and m["iou[b]"] == 0.0 and m["dice[a]"] == 0.0
    assert m["iou_background"] == 1.0 and m["pixel_f1"] == 1.0
    assert m["image_accuracy"] == 0.0  # image class = "b" (highest confidence), ground truth "a"


def test_class_agnostic_predictor_gets_no_class_metrics():
    cm = np.zeros((8, 8), np.uint8)
    cm[2:4, 2:4] = 1
    s = _mask_sample(cm)
    m = evaluate_predictions([s], _by_image([s], [[_pred(cm > 0, None)]]), None).metrics
    assert "iou[a]" not in m and "image_accuracy" not in m and m["dice_defect"] == 1.0


# ------------------------------------------------------------------ image accuracy
def test_image_accuracy_on_one_class_per_image_data_and_scores():
    shape = (8, 8)
    full = np.ones(shape, bool)
    # box-only, NEU-CLS-like: the class covers the whole image
    a_img = InspectionSample(np.zeros(shape, np.uint8), None, ((BBox(0, 0, 8, 8), 1),), NAMES, None, None, "a.png")
    good = _mask_sample(np.zeros(shape, np.uint8))
    b_cm = np.zeros(shape, np.uint8)
    b_cm[1:3, 1:3] = 2
    b_img = _mask_sample(b_cm)
    good2 = _mask_sample(np.zeros(shape, np.uint8))
    samples = [a_img, good, b_img, good2]
    preds = [[_pred(full, "b", 0.4), _pred(full, "a", 0.9)],  # top class a == a
             [],  # good == good
             [_pred(b_cm > 0, "a", 0.7)],  # a != b
             [_pred(full, "a", 0.2)]]  # a != good
    rep = evaluate_predictions(samples, _by_image(samples, preds, [0.9, 0.1, 0.7, 0.8]), list(NAMES))
    m = rep.metrics
    assert m["image_accuracy"] == pytest.approx(0.5)
    assert m["image_defect_accuracy"] == pytest.approx(0.75)
    # positives .9 .7, negatives .1 .8: 3 of 4 pairs ordered
    assert m["image_auroc"] == pytest.approx(0.75)
    # .9 pos (P 1, R .5), .8 neg, .7 pos (P 2/3, R 1)
    assert m["image_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert rep.meta["pixel_metrics_from"] == "boxes" and rep.meta["one_class_per_image"] is True
    md = to_markdown("t", {"x": rep})
    assert "| image_auroc | 0.750 |" in md and "| iou[c] | — |" in md


# ------------------------------------------------------------------ worst examples
def _sample_with_source(cm: np.ndarray, source: str) -> InspectionSample:
    return _mask_sample(cm)._replace(source=source)


def test_example_collector_keeps_only_the_worst_n():
    shape = (10, 10)
    col = ExampleCollector(2)
    gt_empty = np.zeros(shape, bool)
    for k, n_fp in enumerate([3, 9, 1, 5, 9]):
        s = _sample_with_source(np.zeros(shape, np.uint8), f"img{k}.png")
        pm = np.zeros(shape, bool)
        pm.flat[:n_fp] = True
        col.offer(s, gt_empty, pm, [], score=0.1 * k)
    worst = col.worst()
    # 9 px twice: the higher score (img4) first; nothing missed -> no false negatives
    assert [e.source for e in worst["fp"]] == ["img4.png", "img1.png"] and worst["fn"] == []
    assert len(col._fp) == 2
    with pytest.raises(ValueError):
        ExampleCollector(0)


class FakeInspector:
    """Implements the Inspector protocol: pixels brighter than 200 are one defect of class "a"."""

    model_version = "fake-1"
    class_names = ["a", "b"]
    device = "cpu"
    family = "fake"

    def inspect(self, frames):
        return self.inspect_scored(frames)[0]

    def inspect_scored(self, frames):
        dets, scores = [], []
        for f in frames:
            m = np.asarray(f) > 200
            if m.ndim == 3:
                m = m.any(axis=2)
            scores.append(float(np.asarray(f).max()) / 255.0)
            if not m.any():
                dets.append([])
                continue
            ys, xs = np.nonzero(m)
            b = BBox(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            crop = m[b.y0:b.y1, b.x0:b.x1]
            dets.append([Detection(b, crop, "a", 0.8, 6.0, 9.0, int(crop.sum()))])
        return dets, scores


def _write_plain(root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], names=("a", "b")) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    for stem, (img, cm) in items.items():
        cv2.imwrite(str(root / "images" / f"{stem}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), cm)
    return root


def _square(img_or_mask: np.ndarray, y: int, x: int, size: int, value: int) -> np.ndarray:
    img_or_mask[y:y + size, x:x + size] = value
    return img_or_mask


def _fake_dataset(tmp_path: Path) -> Path:
    z = lambda: np.zeros((32, 32), np.uint8)  # noqa: E731
    return _write_plain(tmp_path / "data", {
        "perfect": (_square(z() + 40, 4, 4, 6, 255), _square(z(), 4, 4, 6, 1)),
        "small_fp": (_square(z() + 40, 10, 10, 4, 255), z()),  # 16 px outside the ground truth
        "missed": (z() + 40, _square(z(), 8, 8, 5, 2)),  # 25 px missed
        "big_fp": (_square(z() + 40, 2, 2, 6, 255), z()),  # 36 px outside the ground truth
    })


def test_save_examples_writes_worst_overlays(tmp_path, monkeypatch, capsys):
    import models.loading

    monkeypatch.setattr(models.loading, "load_inspector", lambda *a, **k: FakeInspector())
    data = _fake_dataset(tmp_path)
    out = tmp_path / "ev"
    rc = main(["evaluate", "--data", str(data), "--format", "plain", "--out", str(out), "--threads", "1",
               "--save-examples", "1"])
    assert rc == 0
    files = sorted(p.name for p in (out / "examples").glob("*.png"))
    assert files == ["fn_01_missed.png", "fp_01_big_fp.png"]
    index = json.loads((out / "examples" / "index.json").read_text())
    assert [(e["kind"], e["pixels"]) for e in index] == [("fp", 36), ("fn", 25)]
    fp_img = cv2.imread(str(out / "examples" / "fp_01_big_fp.png"))
    b, g, r = (int(v) for v in fp_img[4, 4])  # inside the predicted square: tinted red
    assert r > 150 and r > g + 60 and r > b + 60
    fn_img = cv2.imread(str(out / "examples" / "fn_01_missed.png"))
    b, g, r = (int(v) for v in fn_img[8, 8])  # corner of the ground-truth square: green contour
    assert g == 255 and r == 0 and b == 0
    assert int(fn_img[20, 20][1]) == int(fn_img[20, 20][2])  # elsewhere plain grey
    rep = next(iter(json.loads((out / "metrics.json").read_text()).values()))
    assert rep["meta"]["family"] == "fake" and rep["meta"]["examples"]["written"] == 2
    m = rep["metrics"]
    # scores: perfect 1.0 (defect), small_fp 1.0 (clean), missed .157 (defect), big_fp 1.0 (clean):
    # the two ties with 1.0 count 1/2, the missed image ranks below both clean ones
    assert m["image_auroc"] == pytest.approx((0.5 + 0.5 + 0 + 0) / 4)
    assert m["iou[a]"] == pytest.approx(36 / (36 + 16 + 36)) and m["iou[b]"] == 0.0


def test_save_examples_without_out_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import models.loading

    monkeypatch.setattr(models.loading, "load_inspector", lambda *a, **k: FakeInspector())
    rc = main(["evaluate", "--data", str(_fake_dataset(tmp_path)), "--format", "plain", "--save-examples", "3"])
    assert rc == 2 and "--save-examples needs --out" in capsys.readouterr().err


def test_record_writes_metrics_into_every_checkpoint(tmp_path, monkeypatch, capsys):
    import models.loading
    import models.core.checkpoints

    monkeypatch.setattr(models.loading, "load_inspector", lambda *a, **k: FakeInspector())
    roles = {"segmenter": tmp_path / "m" / "segmenter.pt", "gate": tmp_path / "m" / "gate.pt"}
    monkeypatch.setattr(models.loading, "model_files",
                        lambda *a, **k: models.loading.ModelFiles("segmenter", roles))
    written = {}
    monkeypatch.setattr(models.core.checkpoints, "update_metrics", lambda p, metrics, **k: written.setdefault(Path(p), metrics))
    data = _fake_dataset(tmp_path)
    assert main(["evaluate", "--data", str(data), "--format", "plain", "--record", "--threads", "1"]) == 0
    assert set(written) == set(roles.values())
    for metrics in written.values():
        assert metrics[f"eval[{data}]"]["images"] == 4 and "image_auroc" in metrics[f"eval[{data}]"]


# ------------------------------------------------------------------ CLI with the packaged model
def test_evaluate_plain_folder_with_the_packaged_default_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    items = {}
    for k in range(3):
        img = (rng.normal(120, 6, (48, 48))).clip(0, 255).astype(np.uint8)
        cm = np.zeros((48, 48), np.uint8)
        if k < 2:
            img[10:30, 20 + k:23 + k] = 30  # a dark scratch-like line
            cm[10:30, 20 + k:23 + k] = 1
        items[f"im{k}"] = (img, cm)
    data = _write_plain(tmp_path / "plain", items, names=("scratch", "crack"))
    out = tmp_path / "ev"
    assert main(["evaluate", "--data", str(data), "--format", "plain", "--out", str(out), "--threads", "1",
                 "--device", "cpu"]) == 0
    (rep,) = json.loads((out / "metrics.json").read_text()).values()
    m = rep["metrics"]
    assert m["images"] == 3
    for key in ("image_auroc", "image_ap", "iou_background", "iou[scratch]", "dice[scratch]", "iou[crack]",
                "miou_classes_with_background", "dice_defect", "mean_dice_classes", "image_accuracy",
                "image_defect_accuracy", "pixel_f1", "ar"):
        assert key in m, key
    assert m["image_accuracy"] is None or 0.0 <= m["image_accuracy"] <= 1.0
    assert m["image_auroc"] is None or 0.0 <= m["image_auroc"] <= 1.0
    assert m["iou[crack]"] is None or m["iou[crack]"] == 0.0  # no crack in the ground truth
    assert rep["meta"]["family"] == "severity" and "+" in rep["meta"]["model_version"]
    assert "| image_auroc |" in (out / "metrics.md").read_text()


def test_evaluate_help_names_any_family(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "any family" in text and "--save-examples" in text and "detector + classifier checkpoints" not in text


def test_missing_model_directory_is_a_clear_error(tmp_path, capsys):
    rc = main(["evaluate", "--data", "synthetic:seed=1,n=2", "--model", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: model path") and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("flag,expected", [("checkpoint", True), ("off", False), ("on", True)])
def test_evaluate_flip_tta_forces_the_detectors_setting(tmp_path, monkeypatch, flag, expected):
    import models.loading

    fake = FakeInspector()
    fake.flip_tta = True  # as a severity checkpoint tuned with flip TTA
    monkeypatch.setattr(models.loading, "load_inspector", lambda *a, **k: fake)
    out = tmp_path / "ev"
    assert main(["evaluate", "--data", str(_fake_dataset(tmp_path)), "--format", "plain", "--out", str(out),
                 "--threads", "1", "--flip-tta", flag]) == 0
    rep = next(iter(json.loads((out / "metrics.json").read_text()).values()))
    assert rep["meta"]["flip_tta"] is expected and fake.flip_tta is expected


def test_pooled_defect_iou_and_f1_ignore_the_class_beside_the_per_class_figures():
    cm = np.zeros((8, 8), np.uint8)
    cm[2:4, 2:4] = 1  # class "a"
    cm[5:7, 5:8] = 2  # class "b"
    s = _mask_sample(cm)
    # every defect pixel found, but all of it called "b": per-class IoU of "a" is 0, the pooled figures are 1
    m = evaluate_predictions([s], _by_image([s], [[_pred(cm > 0, "b")]]), list(NAMES)).metrics
    assert m["pooled_defect_iou"] == pytest.approx(1.0) and m["pooled_defect_f1"] == pytest.approx(1.0)
    assert m["iou[a]"] == pytest.approx(0.0)
