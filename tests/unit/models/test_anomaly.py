"""Anomaly family (PatchCore): coreset, fit on good images only, thresholds, tiling, ONNX score parity, synthetic AUROC."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.core.types import InspectionSample
from models.data.datasets import image_label
from models.data.synthetic import render_sample
from models.evaluation.metrics import image_auroc
from models.families.anomaly.fit import AnomalyFitConfig, choose_anomaly_threshold, fit_anomaly_samples, greedy_coreset
from models.families.anomaly.tiling import cut_tiles, stitch_max, tile_positions
from models.loading import load_inspector


FAMILY = "steel_strip"  # one line, one surface: the model is fitted on that surface's good parts


def _good(seed: int, n: int, shape=(64, 64)) -> list[InspectionSample]:
    return [render_sample(seed + i, shape, family=FAMILY, defect_prob=0.0) for i in range(n)]


def _bad(seed: int, n: int, shape=(64, 64)) -> list[InspectionSample]:
    return [render_sample(seed + i, shape, family=FAMILY, defect_prob=1.0) for i in range(n)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("anomaly")
    train = _good(81000, 12) + _bad(82000, 3)
    val = _good(83000, 4) + _bad(84000, 4)
    res = fit_anomaly_samples(AnomalyFitConfig(tile=64, bank_size=300, threads=1), out, train, val)
    return res, train, val


def test_greedy_coreset_takes_one_point_per_cluster_and_its_radius_never_grows():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10], [5, 30]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    idx, radius = greedy_coreset(pts, 5, seed=0)
    assert sorted(set(int(i) // 50 for i in idx)) == [0, 1, 2, 3, 4]
    assert all(b <= a + 1e-6 for a, b in zip(radius, radius[1:])) and radius[-1] < 1.0 < radius[0]


def test_threshold_rules_false_alarm_quantile_and_best_f1():
    ok = np.arange(200, dtype=float)
    t, rule = choose_anomaly_threshold(ok, [], 0.01)
    assert rule == "false_alarm_0.01" and np.mean(ok > t) <= 0.01
    t, rule = choose_anomaly_threshold([1.0, 2.0, 3.0], [5.0, 6.0], 0.01)
    assert rule == "best_f1" and 3.0 <= t < 5.0


def test_fits_on_the_good_images_only_and_records_the_bank(fitted):
    fitted, train, val = fitted
    m = fitted.info.metrics
    n_bad_train = sum(image_label(s) != 0 for s in train)
    assert n_bad_train >= 2  # the generator may leave a frame without a visible defect
    assert m["fitted_images"] == len(train) - n_bad_train  # defective training images validate, never fitted
    assert m["val_defect_images"] == sum(image_label(s) != 0 for s in val) + n_bad_train
    assert 0 < fitted.bank_size <= 300 and m["bank_size"] == fitted.bank_size
    insp = load_inspector(fitted.checkpoint.parent, device="cpu")
    assert insp.model.bank.shape[0] == fitted.bank_size and insp.threshold == fitted.info.threshold


def test_large_frames_are_tiled_not_squashed(fitted):
    fitted = fitted[0]
    assert tile_positions(150, 64) == [0, 64, 86] and tile_positions(40, 64) == [0]
    frame = np.concatenate([s.image for s in _good(85000, 3)], 1)  # 64 x 192: three good tiles side by side
    tiles, tiling = cut_tiles(frame, 64)
    assert [t.shape for t in tiles] == [(64, 64)] * 3 and tiling.corners == [(0, 0), (0, 64), (0, 128)]
    assert np.array_equal(stitch_max([t.astype(np.float32) for t in tiles], tiling), frame.astype(np.float32))
    insp = load_inspector(fitted.checkpoint.parent, device="cpu")
    alone = insp.distance_tiles([tiles[2]])[0]
    stitched = stitch_max(insp.distance_tiles(tiles), tiling)
    np.testing.assert_allclose(stitched[:, 128:], alone, rtol=1e-5)  # each tile scored at the fitted size
    bad = frame.copy()
    yy, xx = np.mgrid[0:16, 0:16]
    bad[20:36, 150:166] = np.where((yy // 2 + xx // 2) % 2 == 0, 0, 255)  # a checkered square in the third tile
    (dets,), _ = insp.inspect_scored([bad])
    assert dets and any(d.bbox.x0 <= 157 < d.bbox.x1 and d.bbox.y0 <= 27 < d.bbox.y1 for d in dets)
    assert all(d.defect_class == "anomaly" and d.confidence > 0.5 for d in dets)


def test_onnx_runtime_gives_the_same_scores_and_maps(fitted, tmp_path):
    fitted = fitted[0]
    d = fitted.checkpoint.parent
    ref = load_inspector(d, device="cpu")
    ort = load_inspector(d, device="cpu", runtime="onnxruntime", export_cache=tmp_path / "cache")
    frames = [render_sample(86000 + i, (100, 300), defect_prob=1.0).image for i in range(3)]
    frames.append(np.repeat(frames[0][:, :, None], 3, 2))
    ma, mb = ref.anomaly_maps(frames), ort.anomaly_maps(frames)
    for a, b in zip(ma, mb):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3 * fitted.info.threshold)
    sa, sb = ref.inspect_scored(frames)[1], ort.inspect_scored(frames)[1]
    np.testing.assert_allclose(sb, sa, atol=1e-5)


def test_synthetic_defects_score_above_good_frames_of_another_seed_range(fitted):
    fitted = fitted[0]
    insp = load_inspector(fitted.checkpoint.parent, device="cpu")
    test = _good(87000, 12) + _bad(88000, 12)
    _, scores = insp.inspect_scored([s.image for s in test])
    auc = image_auroc([image_label(s) != 0 for s in test], scores)
    assert auc is not None and auc >= 0.8, auc


def test_explain_writes_the_map_and_regions_over_each_image(fitted, tmp_path):
    import cv2

    from streams.cli import main

    fitted = fitted[0]
    paths = []
    for i, s in enumerate(_bad(89000, 2)):
        p = tmp_path / f"f{i}.png"
        cv2.imwrite(str(p), s.image)
        paths.append(str(p))
    out = tmp_path / "explained"
    assert main(["explain", *paths, "--model", str(fitted.checkpoint.parent), "--out", str(out)]) == 0
    pics = sorted(out.glob("*_explain.png"))
    assert [p.name for p in pics] == ["f0_explain.png", "f1_explain.png"]
    im = cv2.imread(str(pics[0]))
    assert im.shape == (64, 64, 3) and im.std() > 0


def test_train_anomaly_and_okdefect_subcommands_then_evaluate(tmp_path, capsys):
    import json

    from models.data.synthetic import write_plain_set
    from streams.cli import main

    data = write_plain_set(tmp_path / "data", 12, (64, 64), seed=7300, defect_prob=0.5)
    assert main(["train", "anomaly", "--data", str(data), "--format", "plain", "--out", str(tmp_path / "an"),
                 "--bank-size", "64", "--false-alarm", "0.05", "--threads", "1"]) == 0
    info = json.loads((tmp_path / "an" / "anomaly.json").read_text())
    assert info["metrics"]["bank_size"] <= 64 and info["arch_config"]["bank_size"] == info["metrics"]["bank_size"]
    assert main(["train", "okdefect", "--data", str(data), "--format", "plain", "--out", str(tmp_path / "ok"),
                 "--tile", "32", "--epochs", "1", "--batch", "8", "--threads", "1", "--quiet"]) == 0
    assert json.loads((tmp_path / "ok" / "okdefect.json").read_text())["input_spec"]["patch"] == 32
    for model in ("an", "ok"):
        capsys.readouterr()
        assert main(["evaluate", "--data", str(data), "--format", "plain", "--model", str(tmp_path / model),
                     "--out", str(tmp_path / f"eval-{model}")]) == 0
        rep = json.loads((tmp_path / f"eval-{model}" / "metrics.json").read_text())
        metrics = next(iter(rep.values()))["metrics"]
        assert metrics["image_auroc"] is not None and "pixel_f1" in metrics
