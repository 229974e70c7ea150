"""Training of the severity detector and the defect classifier on synthetic data (CPU-friendly).

Both trainers are resumable: every `save_every` steps they write `<out>/train_state_<kind>.pt`
(model, optimiser, scheduler, step, sampling RNG); `resume=True` continues from it. At the end
they write a checkpoint (`detector_<arch>.pt` / `classifier.pt`) with threshold T
(detector: chosen on a validation split by mean IoU), class names and the training data spec.

Seeds: training frames use `seed_base + i` with defaults (detector 100000+, classifier 200000+,
validation 50000+) that never overlap the evaluation seeds of the README (9000+).

Training on a plant's annotated images lives in `models.families.severity.train_data`; it shares the optimiser,
loss and augmentation steps defined here (`detector_step`, `classifier_step`, ...).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.core.augment import defect_crop, geometric, photometric
from models.core.checkpoints import load_checkpoint, save_checkpoint
from models.core.regions import choose_threshold, regions_from_severity, upsample_severity
from models.core.types import BBox, box_iou
from models.data.synthetic import CLASS_NAMES, VAL_SEED_BASE, render_scene
from models.families.severity.detector import build_detector, infer_severity
from models.families.severity.labels import severity_labels
from models.families.severity.region_classifier import CROP, build_classifier, region_crops
from models.training.state import load_state, progress, save_state

__all__ = ["DetectorTrainConfig", "ClassifierTrainConfig", "train_detector", "train_classifier", "TrainResult",
           "detector_optimiser", "detector_step", "classifier_step", "class_weights", "augment_crops"]



@dataclass
class DetectorTrainConfig:
    arch: str = "fast"
    steps: int = 3000
    batch: int = 16
    patch: int = 128
    lr: float = 2e-3
    n_frames: int = 1200
    frame_shape: tuple[int, int] = (256, 256)
    seed_base: int = 100000
    n_val: int = 100
    seed: int = 0
    label_lambda: float = 24.0  # grey levels; small enough that defect interiors saturate
    # Min severity of annotated cells (see models.families.severity.labels). High on purpose: with a
    # floor F every annotated cell sits at F or above, so a threshold T a little under F keeps
    # whole low-contrast defects (e.g. the flat centre of a mild imprint) instead of cutting
    # holes in them. Measured with the ground-truth labels themselves as the "prediction"
    # (2x2 cells, seeds 9000-9199): floor 3 at T 6 caps pixel F1 at 0.911 and mean IoU at
    # 0.826; floor 8 at T 6 allows 0.971 and 0.926.
    label_floor: float = 8.0
    defect_weight: float = 3.0  # class-imbalance: L2 weight of defect cells (background weight 1)
    arch_config: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # warm start from this detector checkpoint (same arch and config)
    save_every: int = 250
    threads: int = 2


@dataclass
class ClassifierTrainConfig:
    epochs: int = 6
    batch: int = 64
    lr: float = 2e-3
    n_frames: int = 1000
    frame_shape: tuple[int, int] = (256, 256)
    seed_base: int = 200000
    seed: int = 0
    width: int = 16
    detector: str | None = None  # checkpoint used to mine false positives (hard negatives)
    save_every: int = 1
    threads: int = 2


@dataclass
class TrainResult:
    checkpoint: str
    losses: list[float]
    seconds: float
    info: Any



# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------
def detector_optimiser(model: torch.nn.Module, cfg: DetectorTrainConfig) -> tuple[Any, Any]:
    """AdamW with a one-cycle schedule over `cfg.steps` (shared by synthetic and real-data training)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    # OneCycleLR divides by (pct_start * steps - 1): a warm-up of exactly one step (10 steps) is refused
    pct = 0.2 if abs(0.1 * cfg.steps - 1.0) < 1e-9 else 0.1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=pct)
    return opt, sched


def detector_step(model: torch.nn.Module, opt: Any, sched: Any, x: torch.Tensor, t: torch.Tensor,
                  defect_weight: float) -> float:
    """One optimisation step of the severity regression; returns the loss.

    The loss is L2 against the per-cell severity labels with defect cells weighted
    1 + defect_weight (against the imbalance of the few defect cells).
    """
    pred = model(x).raw
    w = 1.0 + defect_weight * (t > 0).float()
    loss = (w * (pred - t) ** 2).sum() / w.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def _detector_batch(rng: np.random.Generator, scenes: list, cfg: DetectorTrainConfig, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, labels = [], []
    for _ in range(cfg.batch):
        s = scenes[int(rng.integers(len(scenes)))].sample
        y, x = defect_crop(rng, s.image.shape, cfg.patch, [b for b, _ in s.boxes])
        im = s.image[y:y + cfg.patch, x:x + cfg.patch]
        m = s.class_mask[y:y + cfg.patch, x:x + cfg.patch]
        im, m = geometric(rng, im, m)
        im = photometric(rng, im)
        imgs.append(im)
        labels.append(severity_labels(im, m, cell=stride, lam=cfg.label_lambda, min_defect_severity=cfg.label_floor))
    x = torch.from_numpy(np.stack(imgs)).float().unsqueeze(1)
    t = torch.from_numpy(np.stack(labels)).unsqueeze(1)
    return x, t


def _render(seeds: range, shape: tuple[int, int], desc: str, quiet: bool) -> list:
    out = []
    with progress(len(seeds), desc, disable=quiet) as bar:
        for s in seeds:
            out.append(render_scene(s, shape))
            bar.update(1)
    return out


def train_detector(cfg: DetectorTrainConfig, out_dir: str | os.PathLike[str], resume: bool = False,
                   quiet: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train a severity detector; returns the written checkpoint. L2 loss, defect cells weighted."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / f"train_state_detector_{cfg.arch}.pt"
    model = build_detector(cfg.arch, **cfg.arch_config)
    prior_seconds = 0.0
    if cfg.init:
        ck = load_checkpoint(cfg.init, expected_kind="detector")
        if ck.info.arch != cfg.arch or ck.info.arch_config != dict(cfg.arch_config):
            raise ValueError(f"--init {cfg.init} is a {ck.info.arch} {ck.info.arch_config}, not {cfg.arch} {cfg.arch_config}")
        model.load_state_dict(ck.state_dict)
        prior_seconds = float(ck.info.train_data.get("train_seconds_total", ck.info.train_data.get("train_seconds", 0.0)))
    stride = int(model.stride)
    opt, sched = detector_optimiser(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    step, losses = 0, []
    if resume and state_path.is_file():
        st = load_state(state_path, model, opt, sched, rng)
        step, losses = int(st["step"]), list(st["losses"])
        log(f"resumed detector training at step {step}")
    t0 = time.time()
    scenes = _render(range(cfg.seed_base, cfg.seed_base + cfg.n_frames), cfg.frame_shape, "render train frames", quiet)
    model.train()
    with progress(cfg.steps, f"train detector[{cfg.arch}]", initial=step, disable=quiet) as bar:
        while step < cfg.steps:
            x, t = _detector_batch(rng, scenes, cfg, stride)
            losses.append(detector_step(model, opt, sched, x, t, cfg.defect_weight))
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_state(state_path, model, opt, sched, rng, step=step, losses=losses)
    model.eval()
    val = _render(range(VAL_SEED_BASE, VAL_SEED_BASE + cfg.n_val), cfg.frame_shape, "render val frames", quiet)
    cells = infer_severity(model, [s.sample.image for s in val])
    sev_px = [upsample_severity(c, stride, s.sample.image.shape) for c, s in zip(cells, val)]
    thr, miou = choose_threshold(sev_px, [s.sample.class_mask for s in val])
    seconds = time.time() - t0
    log(f"threshold T={thr:.2f} (validation mean IoU {miou:.3f}); {seconds:.0f} s")
    cfg_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
    info = save_checkpoint(
        out / f"detector_{cfg.arch}.pt", model.state_dict(), kind="detector", arch=cfg.arch,
        arch_config=dict(cfg.arch_config), class_names=list(CLASS_NAMES), threshold=thr,
        input_spec={"channels": int(getattr(model, "in_channels", 1)), "dtype": "uint8", "range": [0, 255],
                    "stride": stride, "pad_multiple": int(model.pad_multiple), "train_patch": cfg.patch,
                    "severity_range": [0, 12], "label_lambda": cfg.label_lambda, "label_floor": cfg.label_floor},
        train_data={"source": f"synthetic:seed={cfg.seed_base},n={cfg.n_frames},"
                              f"size={cfg.frame_shape[0]}x{cfg.frame_shape[1]}",
                    "val": f"synthetic:seed={VAL_SEED_BASE},n={cfg.n_val}", "config": cfg_dict,
                    "train_seconds": round(seconds, 1), "train_seconds_total": round(seconds + prior_seconds, 1),
                    "init_from": cfg.init, "final_loss": float(np.mean(losses[-50:]))},
        metrics={"val_mean_iou": miou},
    )
    return TrainResult(str(out / f"detector_{cfg.arch}.pt"), losses, seconds, info)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------

def _classifier_samples(rng: np.random.Generator, scenes: list, detector: Any, quiet: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crops and labels: GT regions (class id), nuisances and random windows (0), and, when a
    detector is given, its regions on the frames (matched class, or 0 for false positives)."""
    xs: list[np.ndarray] = []
    ys: list[int] = []

    def add(crops: np.ndarray, label: int, cap: int = 4) -> None:
        if len(crops) > cap:
            crops = crops[rng.choice(len(crops), cap, replace=False)]
        xs.extend(crops)
        ys.extend([label] * len(crops))

    det_model = thr = None
    if detector is not None:
        det_model, thr = detector
    with progress(len(scenes), "cut classifier crops", disable=quiet) as bar:
        for sc in scenes:
            s = sc.sample
            grey = s.image
            H, W = grey.shape
            for k, (box, cid) in enumerate(s.boxes):
                full = s.instance_mask == (k + 1)
                for _ in range(2):
                    jit = (int(rng.integers(-8, 9)), int(rng.integers(-8, 9)))
                    add(region_crops(grey, full, box, jitter=jit), cid)
            for nb in sc.nuisance_boxes:
                m = np.zeros((H, W), bool)
                ys_, xs_ = np.mgrid[nb.y0:nb.y1, nb.x0:nb.x1]
                cy, cx = (nb.y0 + nb.y1) / 2, (nb.x0 + nb.x1) / 2
                ry, rx = max(1.0, nb.height / 2), max(1.0, nb.width / 2)
                m[nb.y0:nb.y1, nb.x0:nb.x1] = ((ys_ - cy) / ry) ** 2 + ((xs_ - cx) / rx) ** 2 <= 1
                if m.any():
                    add(region_crops(grey, m, nb), 0, cap=1)
            # one random background window with a random blob mask
            r = int(rng.integers(4, 20))
            cy, cx = int(rng.integers(r, H - r)), int(rng.integers(r, W - r))
            bb = BBox(cx - r, cy - r, cx + r, cy + r)
            if not any(box_iou(bb, b) > 0 for b, _ in s.boxes):
                m = np.zeros((H, W), bool)
                yy, xx = np.ogrid[:H, :W]
                m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = True
                add(region_crops(grey, m, bb), 0, cap=1)
            if det_model is not None:
                cells = infer_severity(det_model, [grey])[0]
                sev = upsample_severity(cells, int(det_model.stride), grey.shape)
                regs = regions_from_severity(sev, thr) + regions_from_severity(sev, 0.5 * thr)
                for reg in regs:
                    ious = [(box_iou(reg.bbox, b), c) for b, c in s.boxes]
                    best = max(ious, default=(0.0, 0))
                    if best[0] >= 0.3:
                        label = best[1]
                    elif best[0] < 0.05:
                        label = 0
                    else:
                        continue
                    add(region_crops(grey, None, reg.bbox, reg.mask), label, cap=2)
            bar.update(1)
    return np.stack(xs).astype(np.float32), np.asarray(ys, np.int64)


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Cross-entropy weights against class imbalance: (total / count) ** 0.5, mean 1."""
    w = torch.tensor((counts.sum() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32)
    return w / w.mean()


def classifier_step(model: torch.nn.Module, opt: Any, sched: Any, x: torch.Tensor, y: torch.Tensor,
                    weights: torch.Tensor) -> float:
    """One optimisation step of the region classifier (class-weighted cross-entropy); returns the loss."""
    loss = F.cross_entropy(model(x).logits, y, weight=weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def augment_crops(rng: np.random.Generator, x: np.ndarray) -> torch.Tensor:
    """Training augmentation of a batch of 2-channel region crops (rotation, flip, gain, noise)."""
    k = int(rng.integers(4))
    t = torch.from_numpy(x)
    t = torch.rot90(t, k, dims=(2, 3))
    if rng.random() < 0.5:
        t = torch.flip(t, dims=(3,))
    g = t[:, :1]
    gain = torch.from_numpy(rng.uniform(0.95, 1.05, (len(x), 1, 1, 1)).astype(np.float32))
    noise = torch.from_numpy(rng.normal(0, rng.uniform(0, 0.06), g.shape).astype(np.float32))
    return torch.cat([g * gain + noise, t[:, 1:]], 1).contiguous()


def train_classifier(cfg: ClassifierTrainConfig, out_dir: str | os.PathLike[str], resume: bool = False,
                     quiet: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train the defect-type classifier (class-weighted cross-entropy against imbalance)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state_classifier.pt"
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    detector = None
    if cfg.detector:
        ck = load_checkpoint(cfg.detector, expected_kind="detector")
        dm = build_detector(ck.info.arch, **ck.info.arch_config)
        dm.load_state_dict(ck.state_dict)
        dm.eval()
        detector = (dm, float(ck.info.threshold))
    scenes = _render(range(cfg.seed_base, cfg.seed_base + cfg.n_frames), cfg.frame_shape, "render train frames", quiet)
    X, Y = _classifier_samples(rng, scenes, detector, quiet)
    n_cls = len(CLASS_NAMES)
    counts = np.bincount(Y, minlength=n_cls + 1).astype(np.float64)
    weights = class_weights(counts)
    log(f"classifier crops per class (background first): {counts.astype(int).tolist()}")
    model = build_classifier(n_cls, width=cfg.width)
    steps_per_epoch = int(math.ceil(len(X) / cfg.batch))
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    epoch, losses = 0, []
    if resume and state_path.is_file():
        st = load_state(state_path, model, opt, sched, rng)
        epoch, losses = int(st["epoch"]), list(st["losses"])
        log(f"resumed classifier training at epoch {epoch}")
    model.train()
    with progress(total, "train classifier", initial=epoch * steps_per_epoch, disable=quiet) as bar:
        while epoch < cfg.epochs:
            order = rng.permutation(len(X))
            for i in range(steps_per_epoch):
                idx = order[i * cfg.batch:(i + 1) * cfg.batch]
                losses.append(classifier_step(model, opt, sched, augment_crops(rng, X[idx]), torch.from_numpy(Y[idx]),
                                              weights))
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-50:]):.3f}")
            epoch += 1
            if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
                save_state(state_path, model, opt, sched, rng, epoch=epoch, losses=losses)
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(torch.from_numpy(X[i:i + 256])).logits.argmax(1) for i in range(0, len(X), 256)])
    train_acc = float((pred.numpy() == Y).mean())
    seconds = time.time() - t0
    log(f"classifier train accuracy {train_acc:.3f}; {seconds:.0f} s")
    cfg_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
    info = save_checkpoint(
        out / "classifier.pt", model.state_dict(), kind="classifier", arch="cnn4",
        arch_config={"n_classes": n_cls, "width": cfg.width}, class_names=list(CLASS_NAMES),
        input_spec={"channels": 2, "crop": CROP, "channel_0": "grey minus crop median, /40",
                    "channel_1": "region mask", "background_index": 0},
        train_data={"source": f"synthetic:seed={cfg.seed_base},n={cfg.n_frames},"
                              f"size={cfg.frame_shape[0]}x{cfg.frame_shape[1]}",
                    "hard_negatives_from": cfg.detector, "crops_per_class": counts.astype(int).tolist(),
                    "config": cfg_dict, "train_seconds": round(seconds, 1),
                    "final_loss": float(np.mean(losses[-50:]))},
        metrics={"train_accuracy": train_acc},
    )
    return TrainResult(str(out / "classifier.pt"), losses, seconds, info)
