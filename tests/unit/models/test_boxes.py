"""The RetinaNet box family: anchors from box statistics, crops, box-only detections, box mAP in `evaluate`."""
from __future__ import annotations

import numpy as np
import pytest

from models.core.types import BBox, Detection, InspectionSample
from models.data.synthetic import render_sample
from models.evaluation.evaluate import ScoredPredictions, evaluate_inspector, evaluate_predictions
from models.evaluation.metrics import BoxMAP, PredictedDefect
from models.families.boxes import example
from models.families.boxes.model import choose_anchors
from models.families.boxes.train import choose_score_threshold, crop_boxes
from models.loading import load_inspector
from streams.tracking.tracker import merge_adjacent


def test_anchors_span_the_box_scales_and_aspect_ratios_of_the_data():
    rng = np.random.default_rng(0)
    w = rng.uniform(8, 40, 200)
    wh = np.c_[w, w * rng.choice([0.25, 1.0, 3.0], 200)]
    plan = choose_anchors(wh)
    s = np.sqrt(wh[:, 0] * wh[:, 1])
    flat = [v for lv in plan["sizes"] for v in lv]
    assert len(plan["sizes"]) == 5 and all(len(lv) == 3 for lv in plan["sizes"]) and flat == sorted(flat)
    assert flat[0] == pytest.approx(np.quantile(s, 0.05), abs=0.1)
    assert flat[0] <= np.quantile(s, 0.5) <= flat[-1] and flat[-1] >= np.quantile(s, 0.95)
    assert plan["aspect_ratios"] == sorted({0.25, 1.0, 3.0})
    assert plan["boxes"] == 200 and "sizes" in plan["rule"]
    assert choose_anchors(np.zeros((0, 2)))["aspect_ratios"] == [0.5, 1.0, 2.0]
    with pytest.raises(ValueError):
        choose_anchors(np.array([[0.0, 3.0]]))


def test_a_crop_keeps_the_boxes_mostly_inside_it_in_crop_coordinates():
    boxes = [(BBox(10, 10, 20, 20), 1), (BBox(28, 0, 40, 10), 2), (BBox(60, 60, 70, 70), 1)]
    assert crop_boxes(boxes, 0, 0, 30) == [(BBox(10, 10, 20, 20), 1)]  # the second has 2/12 inside, the third none
    assert crop_boxes(boxes, 0, 0, 36) == [(BBox(10, 10, 20, 20), 1), (BBox(28, 0, 36, 10), 2)]


def test_the_score_threshold_is_the_best_f1_of_class_aware_matches():
    gts = [[(BBox(0, 0, 10, 10), 1)], [(BBox(5, 5, 25, 25), 2)]]
    preds = [{"boxes": np.array([[0, 0, 10, 10], [40, 40, 50, 50]], float), "scores": np.array([0.9, 0.3]),
              "labels": np.array([0, 0])},
             {"boxes": np.array([[5, 5, 25, 25]], float), "scores": np.array([0.7]), "labels": np.array([1])}]
    t, f1 = choose_score_threshold(preds, gts)
    assert 0.3 < t <= 0.7 and f1 == pytest.approx(1.0)


def _sample(boxes: list[tuple[BBox, int]]) -> InspectionSample:
    return InspectionSample(np.zeros((64, 64), np.uint8), None, tuple(boxes), ("a", "b"))


def test_box_map_by_torchmetrics_perfect_half_and_none():
    m = BoxMAP()
    m.add([((0, 0, 10, 10), "a", 0.9)], [((0, 0, 10, 10), "a")])
    assert m.compute() == {"map_50": pytest.approx(1.0), "map_50_95": pytest.approx(1.0)}
    m = BoxMAP()
    m.add([((0, 0, 10, 10), "a", 0.9)], [((0, 0, 10, 10), "a"), ((30, 30, 40, 40), "a")])
    assert m.compute()["map_50"] == pytest.approx(0.5, abs=0.01)
    assert BoxMAP().compute() == {"map_50": None, "map_50_95": None}


def test_evaluate_reports_map_over_the_ranked_boxes():
    samples = [_sample([(BBox(0, 0, 10, 10), 1)]), _sample([(BBox(20, 20, 40, 30), 2)])]
    box = lambda b, c, s: PredictedDefect(BBox(*b), np.ones((b[3] - b[1], b[2] - b[0]), bool), c, s)  # noqa: E731

    def predict(ims):  # the low-scored true box is not kept, but it is ranked
        return ScoredPredictions([[box((0, 0, 10, 10), "a", 0.9)], []], [0.9, 0.2],
                                 [[box((0, 0, 10, 10), "a", 0.9)], [box((20, 20, 40, 30), "b", 0.2)]])

    rep = evaluate_predictions(samples, predict, ["a", "b"])
    assert rep.metrics["map_50"] == pytest.approx(1.0) and rep.metrics["map_50_95"] == pytest.approx(1.0)
    assert rep.metrics["defect_recall_iou50"] == pytest.approx(0.5)  # the kept detections
    assert evaluate_predictions(samples, lambda ims: [[], []], None).metrics.get("map_50") is None


def test_the_inspector_gives_boxes_without_masks_and_evaluate_handles_them(tmp_path):
    insp = load_inspector(example.tiny_model(tmp_path / "m"), device="cpu")
    frames = [render_sample(4100 + i, (64, 96), defect_prob=1.0).image for i in range(2)]
    dets = insp.inspect(frames)
    assert sum(map(len, dets)) > 0
    for d in (d for ds in dets for d in ds):
        assert d.mask is None and d.area_px == 0 and d.severity_max == 0.0 and d.confidence >= insp.threshold
    ranked, scores = insp.inspect_ranked(frames)
    assert all(len(r) >= len(k) for r, k in zip(ranked, dets)) and scores == insp.inspect_scored(frames)[1]
    samples = [render_sample(4100 + i, (64, 96), defect_prob=1.0) for i in range(2)]
    samples = [s._replace(class_names=("blob", "bar")) for s in samples]
    rep = evaluate_inspector(insp, samples)
    assert rep.metrics["map_50"] is not None and rep.meta["predicted_pixels_from"] == "boxes"


def test_merging_box_only_detections_invents_no_mask():
    ds = [Detection(BBox(0, 0, 10, 10), None, "a", 0.9, 0.0, 0.0, 0),  # type: ignore[arg-type]
          Detection(BBox(12, 0, 20, 10), None, "b", 0.5, 0.0, 0.0, 0)]  # type: ignore[arg-type]
    (m,) = merge_adjacent(ds, gap_px=4)
    assert m.mask is None and m.area_px == 0 and m.bbox == BBox(0, 0, 20, 10) and m.defect_class == "a"


def test_train_boxes_and_evaluate_through_the_command_line(tmp_path, capsys):
    from models.data.synthetic import write_plain_set
    from streams.cli import main

    data = write_plain_set(tmp_path / "data", 8, (64, 64), seed=7100, defect_prob=0.9)
    rc = main(["train", "boxes", "--data", str(data), "--format", "plain", "--out", str(tmp_path / "m"),
               "--steps", "3", "--batch", "4", "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "train boxes: anchors:" in out and "sizes" in out, out
    insp = load_inspector(tmp_path / "m", device="cpu")
    assert insp.family == "boxes" and insp.info.arch_config["anchor_sizes"] == insp.info.train_data["choices"]["anchors"]["sizes"]
    rc = main(["evaluate", "--data", str(data), "--format", "plain", "--model", str(tmp_path / "m"), "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "| map_50 |" in out and "| map_50_95 |" in out


def test_evaluate_families_all_prints_one_table_of_the_models_that_apply(tmp_path, capsys):
    from models.families.image_classifier import example as classifier_example
    from models.families.segmenter import example as segmenter_example
    from streams.cli import main

    data = _blob_bar_set(tmp_path / "data")
    root = tmp_path / "models"
    example.tiny_model(root / "boxes")
    segmenter_example.tiny_model(root / "seg")
    classifier_example.tiny_model(root / "cls")  # scratch, pit, patch: does not apply
    rc = main(["evaluate", "--families", "all", "--data", str(data), "--format", "plain", "--model", str(root),
               "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0, out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| family | model version | map_50 | map_50_95 |") and table[0].endswith("frames/s |")
    assert sorted(line.split(" | ")[0][2:] for line in table[1:]) == ["boxes", "segmenter"]
    assert "Not applicable:" in out and "classifier" in out.split("Not applicable:")[1]
    assert (tmp_path / "out" / "families.json").is_file()
    rc = main(["evaluate", "--families", "nope", "--data", str(data), "--format", "plain", "--model", str(root)])
    assert rc == 2
    # --held-out: each model on its own held-out images; the tiny models record none, so none is evaluated
    rc = main(["evaluate", "--families", "all", "--held-out", "--data", str(data), "--format", "plain", "--model",
               str(root), "--device", "cpu", "--threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "the images each model's training held out" in out
    assert out.split("Not applicable:")[1].count("records no complete list of held-out images") == 2
    from models.evaluation.all_families import find_models  # the walk behind --families: every model directory

    assert len(find_models(root)) == 3 and all(root in p.parents or p == root for p in find_models(root))


def _blob_bar_set(root):
    """A plain folder of four 64x64 images with a bright square (class blob) or bar (class bar) each."""
    import cv2

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("blob\nbar\n")
    for i in range(4):
        img = np.full((64, 64), 90, np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        y, x = 8 + 9 * i, 10 + 7 * i
        h, w, c = (12, 12, 1) if i % 2 == 0 else (6, 24, 2)
        img[y:y + h, x:x + w] = 220
        mask[y:y + h, x:x + w] = c
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"im{i}.png"), mask)
    return root
