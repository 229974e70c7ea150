"""Tiny end-to-end run: train both models for a few steps, load an Inspector, evaluate, CLI."""
import json

import numpy as np
import pytest
import torch

from models.core.types import BBox, Detection
from models.data.synthetic import CLASS_NAMES, render_sample
from models.evaluation.evaluate import PredictedDefect, ThresholdBaseline, evaluate_predictions
from models.families.severity.inspector import SeverityInspector
from models.families.severity.train import ClassifierTrainConfig, DetectorTrainConfig, train_classifier, train_detector


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    # batches of 8 patches, 9 in 10 on a defect: per-step losses of 4 patches swing with their defect content
    det = train_detector(DetectorTrainConfig(steps=60, batch=8, patch=64, n_frames=12, n_val=4, lr=3e-3, p_defect=0.9,
                                             arch_config={"width": 8}, threads=1), out, quiet=True,
                         log=lambda s: None)
    clf = train_classifier(ClassifierTrainConfig(epochs=None, steps=24, n_frames=12, width=8, batch=16, threads=1),
                           out, quiet=True, log=lambda s: None)
    return out, det, clf


def test_detector_and_classifier_losses_fall(tiny):
    _, det, clf = tiny
    assert len(det.losses) == 60 and np.mean(det.losses[-15:]) < 0.8 * np.mean(det.losses[:15])
    assert np.mean(clf.losses[-6:]) < np.mean(clf.losses[:6])
    assert det.info.threshold is not None and det.info.kind == "detector"


def test_resume_continues_from_the_saved_state(tiny, tmp_path):
    cfg = DetectorTrainConfig(steps=6, batch=2, patch=64, n_frames=4, n_val=2, arch_config={"width": 8},
                              threads=1)
    first = train_detector(cfg, tmp_path, quiet=True, log=lambda s: None)
    again = train_detector(cfg, tmp_path, resume=True, quiet=True, log=lambda s: None)
    assert len(first.losses) == 6 and again.losses == first.losses  # already complete: nothing retrained


def test_inspector_output_types(tiny):
    out, _, _ = tiny
    insp = SeverityInspector.load(str(out), device="cpu")
    assert insp.device == "cpu" and insp.class_names == list(CLASS_NAMES)
    assert insp.model_version.startswith("detector-fast-") and "+classifier-" in insp.model_version
    insp.threshold, insp.relative, insp.low = -1.0, 0.0, 1.0  # everything is a candidate ...
    with torch.no_grad():
        insp.classifier.head[-1].bias[0] = -100.0  # ... and nothing is background
    frames = [render_sample(1).image, np.repeat(render_sample(2, (96, 160)).image[:, :, None], 3, 2),
              np.zeros((40, 50), np.uint8)]
    res = insp.inspect(frames)
    assert len(res) == 3
    for f, dets in zip(frames, res):
        assert len(dets) == 1
        d = dets[0]
        assert isinstance(d, Detection) and isinstance(d.bbox, BBox)
        assert d.bbox == BBox(0, 0, f.shape[1], f.shape[0])
        assert d.mask.dtype == bool and d.mask.shape == (d.bbox.height, d.bbox.width)
        assert d.defect_class in CLASS_NAMES and 0 <= d.confidence <= 1
        assert 0 <= d.severity_mean <= d.severity_max <= 12 and d.area_px == d.mask.sum()
        assert len(d.class_scores) == len(CLASS_NAMES) and sum(d.class_scores) == pytest.approx(1, abs=1e-4)
    assert insp.inspect([]) == []
    with pytest.raises(ValueError):
        insp.inspect([np.zeros((4, 4, 2), np.uint8)])


def test_threshold_tuning_cache_changes_no_detection(tiny):
    out, _, _ = tiny
    insp = SeverityInspector.load(str(out), device="cpu")
    greys = [render_sample(s).image for s in (3, 4, 5)]
    sev = insp.severity_maps(greys)
    t = float(np.quantile(np.concatenate([m.ravel() for m in sev]), 0.97))  # some regions on every frame
    cache: dict = {}
    for low in (1.0, 0.7, 1.0):  # the third call is answered from the cache
        plain = insp._detections(greys, sev, t, 0.0, low)
        cached = insp._detections(greys, sev, t, 0.0, low, cache)
        assert [[(d.bbox, d.defect_class, round(d.confidence, 6)) for d in f] for f in plain] == \
            [[(d.bbox, d.defect_class, round(d.confidence, 6)) for d in f] for f in cached]
    assert cache, "regions were classified and cached"


def test_flip_tta_is_the_mean_over_mirrors_and_tuning_stores_its_choice(tiny):
    out, _, _ = tiny
    insp = SeverityInspector.load(str(out), device="cpu")
    g = render_sample(7, (64, 96)).image
    plain = insp.severity_maps([g], flip_tta=False)[0]
    lr = insp.severity_maps([np.ascontiguousarray(g[:, ::-1])], flip_tta=False)[0][:, ::-1]
    ud = insp.severity_maps([np.ascontiguousarray(g[::-1])], flip_tta=False)[0][::-1]
    np.testing.assert_allclose(insp.severity_maps([g], flip_tta=True)[0], (plain + lr + ud) / 3, atol=1e-5)
    val = [render_sample(s) for s in (8, 9)]
    best = insp.tune_threshold([s.image for s in val], [s.class_mask for s in val], candidates=[1.0, 3.0],
                               lows=[1.0, 0.5], hole_areas=[0, 64], flip_ttas=[False, True])
    assert best.threshold in (1.0, 3.0) and best.low in (1.0, 0.5) and best.hole_area in (0, 64)
    assert (insp.threshold, insp.low, insp.hole_area, insp.flip_tta) == \
        (best.threshold, best.low, best.hole_area, best.flip_tta)  # the Inspector uses what was chosen
    assert set(best.postprocess()) == {"relative", "low", "hole_area", "flip_tta"}


def test_evaluation_of_a_perfect_predictor_and_the_baseline():
    samples = [render_sample(s, (96, 96)) for s in range(6)]
    lookup = {id(s.image): s for s in samples}

    def perfect(images):
        out = []
        for im in images:
            s = lookup[id(im)]
            preds = []
            for k, (b, c) in enumerate(s.boxes):
                m = (s.instance_mask == k + 1)[b.y0:b.y1, b.x0:b.x1]
                preds.append(PredictedDefect(b, m, CLASS_NAMES[c - 1]))
            out.append(preds)
        return out

    rep = evaluate_predictions(samples, perfect, CLASS_NAMES)
    m = rep.metrics
    for k in ("pixel_f1", "mean_iou", "ar", "defect_recall_iou50", "defect_precision_iou50",
              "defect_recall_iou50_class", "classification_accuracy"):
        assert m[k] == pytest.approx(1.0), k
    base = ThresholdBaseline()
    base.fit(samples)
    brep = evaluate_predictions(samples, base.predict, None)
    assert "classification_accuracy" not in brep.metrics and 0 <= brep.metrics["pixel_f1"] <= 1


def test_cli_help_train_and_evaluate(tiny, tmp_path, capsys):
    from streams.cli import main

    with pytest.raises(SystemExit):
        main(["train", "detector", "--help"])
    assert "--arch" in capsys.readouterr().out
    assert main(["train", "detector", "--arch", "paper", "--out", str(tmp_path), "--steps", "2", "--batch", "2",
                 "--frames", "2", "--val-frames", "2", "--patch", "64", "--threads", "1", "--quiet"]) == 0
    assert (tmp_path / "detector_paper.pt").is_file()
    out, _, _ = tiny
    assert main(["evaluate", "--data", "synthetic:seed=9000,n=3,size=96x96", "--model", str(out),
                 "--out", str(tmp_path / "ev"), "--threads", "1"]) == 0
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    (rep,) = data.values()
    assert rep["metrics"]["images"] == 3 and "pixel_f1" in rep["metrics"]
    assert "| pixel_f1 |" in (tmp_path / "ev" / "metrics.md").read_text()
