"""Training of He & Liu's severity detector and region classifier ('cnn4') on a plant's annotated images.

The data come from `models.data.datasets.load_split` (a training set and a validation set: `val_data`
or a seeded fraction of `data`). Images are converted to grey exactly as the Inspector does.
Mask datasets give the annotation directly; box-only datasets (NEU-DET) get their boxes filled
as masks, which the checkpoint records (`train_data.masks_from_boxes`).

Detector: random training patches (images smaller than the patch are reflect-padded), a
fraction `p_defect` of them centred on a pixel of a randomly chosen annotated defect instance
so that rare defect cells are seen often enough; per-cell severity labels from the annotation
(`models.families.severity.labels`). Every `val_every` steps the detector's mean IoU on the validation
images (severity map > T, best T of a fixed grid) is measured and the best weights are kept
(written as `detector_<arch>.pt` at once, so an interrupted run leaves its best model). At the
end the best weights get their post-processing (T, per-region relative cut, hysteresis, hole
filling, flip TTA) chosen on the validation images by mean IoU of the regions
(`SeverityInspector.tune_threshold` with every region accepted: no classifier exists yet;
`defectstream train threshold --data ...` re-tunes with the classifier once it is trained).

Classifier: crops of every annotated instance (class from the data set) plus background crops:
false-positive regions of a given detector on the training images and random defect-free
windows with a blob mask. Validation crops are cut the same way from the validation images;
the epoch with the best balanced validation accuracy (mean recall over the classes present) is
kept. Plain accuracy would reward a model that calls everything background when background
crops dominate.

Both trainers are resumable from `<out>/train_state_*.pt`, which also records the data spec; a
resume on different data is refused.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import cv2
import numpy as np
import torch

from models.core.augment import geometric, photometric
from models.core.checkpoints import CheckpointInfo, load_checkpoint, save_checkpoint, update_metrics
from models.core.regions import choose_threshold, regions_from_severity, upsample_severity
from models.core.types import BBox, InspectionSample
from models.data.datasets import DatasetError, SplitData, instances_from_class_mask, load_split
from models.families.severity.detector import build_detector, infer_severity
from models.families.severity.inspector import SeverityInspector, _to_grey
from models.families.severity.labels import severity_labels
from models.families.severity.region_classifier import CROP, ClassifierOutput, build_classifier, region_crops
from models.families.severity.train_synthetic import (ClassifierTrainConfig, DetectorTrainConfig, TrainResult,
                                                      augment_crops, class_weights, classifier_step, detector_optimiser,
                                                      detector_step)
from models.training.state import load_state, progress, save_state

__all__ = ["DataSpec", "RealDetectorConfig", "RealClassifierConfig", "PreparedImage", "prepare_images",
           "train_detector_on_data", "train_classifier_on_data", "tune_postprocess_on_images",
           "VAL_THRESHOLDS", "POSTPROCESS_GRID"]

# Thresholds tried by the periodic validation (severity map > T; the best one counts).
VAL_THRESHOLDS = tuple(0.5 * i for i in range(2, 24))
# Post-processing searched at the end of detector training and by `train threshold --data`.
POSTPROCESS_GRID = {"candidates": [0.5 * i for i in range(2, 24)], "relatives": [0.0, 0.5],
                    "lows": [1.0, 0.8, 0.7, 0.6, 0.5], "hole_areas": [0, 64, 256], "flip_ttas": [False, True]}
# Synthetic-only fields of the base configs, left out of a real-data checkpoint's config record.
_SYNTHETIC_FIELDS = ("n_frames", "frame_shape", "seed_base", "n_val")


@dataclass(frozen=True)
class DataSpec:
    """Where the training data come from (recorded in checkpoints and training states)."""

    format: str
    data: str
    val_data: str | None = None
    val_split: float = 0.2
    split_seed: int = 0
    limit: int | None = None

    def load(self) -> SplitData:
        """Read the split (see `models.data.datasets.load_split`).

        Raises:
            DatasetError: wrong path or layout, empty set, masks not matching their images.
        """
        if self.format == "synthetic":
            raise DatasetError("--data with --format synthetic is not a plant data set; for synthetic training "
                               "leave out --data (the generator's options are --frames/--seed-base)")
        return load_split(self.format, self.data, self.val_data, self.val_split, self.split_seed, self.limit)


@dataclass
class RealDetectorConfig(DetectorTrainConfig):
    p_defect: float = 0.5  # fraction of training patches centred on an annotated defect
    val_every: int = 250  # steps between validations (best weights kept)


@dataclass
class RealClassifierConfig(ClassifierTrainConfig):
    crops_per_instance: int = 2  # jittered crops per annotated instance and epoch of cutting
    background_per_image: int = 2  # random defect-free windows per image


class PreparedImage(NamedTuple):
    """One annotated image ready for training: grey, class ids, instances and their boxes."""

    grey: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # uint8 (H, W) class ids, 0 = background
    instances: np.ndarray  # int32 (H, W): k = boxes[k - 1]
    boxes: tuple[tuple[BBox, int], ...]
    source: str


def _grey(image: np.ndarray) -> np.ndarray:
    # The Inspector's own conversion: the detector is trained on what it will see in service.
    return _to_grey(np.asarray(image))


def prepare_images(samples: Sequence[InspectionSample]) -> tuple[list[PreparedImage], tuple[str, ...], bool]:
    """Grey images with class/instance masks; box-only samples get their boxes filled as masks.

    Returns:
        (images, class names, whether any mask was filled from boxes).
    Raises:
        DatasetError: no samples, or samples that disagree on the class names.
    """
    if not samples:
        raise DatasetError("the data set holds no images")
    names = tuple(samples[0].class_names)
    out, from_boxes = [], False
    for s in samples:
        if tuple(s.class_names) != names:
            raise DatasetError(f"{s.source} has classes {s.class_names}, the data set {names}")
        g = _grey(s.image)
        if s.class_mask is not None:
            mask = np.asarray(s.class_mask).astype(np.uint8)
            inst, boxes = (s.instance_mask.astype(np.int32), s.boxes) if s.instance_mask is not None \
                else instances_from_class_mask(mask)
        else:
            from_boxes = from_boxes or bool(s.boxes)
            mask = np.zeros(g.shape, np.uint8)
            inst = np.zeros(g.shape, np.int32)
            # larger boxes first, so that a small box inside a large one keeps its own class
            for k in sorted(range(len(s.boxes)), key=lambda i: -s.boxes[i][0].area):
                b, cid = s.boxes[k]
                mask[b.y0:b.y1, b.x0:b.x1] = cid
                inst[b.y0:b.y1, b.x0:b.x1] = k + 1
            boxes = s.boxes
        out.append(PreparedImage(g, mask, inst, tuple(boxes), s.source))
    return out, names, from_boxes


def _spec_record(spec: DataSpec, split: SplitData, names: Sequence[str], from_boxes: bool) -> dict:
    return {"source": f"{spec.format}:{spec.data}", "data_spec": asdict(spec), "split": split.meta,
            "class_names": list(names), "masks_from_boxes": from_boxes,
            "annotation": "boxes filled as masks" if from_boxes else "pixel masks"}


def _check_resume(st: dict, spec: DataSpec, what: str) -> None:
    saved = st.get("data_spec")
    if saved is not None and saved != asdict(spec):
        raise DatasetError(f"the {what} training state in --out was made on other data ({saved}); "
                           f"use a new --out or the same --data/--val-data/--val-split/--split-seed")


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------
def _pad_min(grey: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad a grey image (bottom/right) to at least size x size (texture continues)."""
    ph, pw = max(0, size - grey.shape[0]), max(0, size - grey.shape[1])
    if not (ph or pw):
        return grey
    if grey.shape[0] > 1 and grey.shape[1] > 1:
        return cv2.copyMakeBorder(grey, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    return np.pad(grey, ((0, ph), (0, pw)), mode="edge")


class _PatchSource:
    """Training patches of real images: a fraction centred on defect instances, the rest uniform."""

    def __init__(self, images: Sequence[PreparedImage], patch: int, max_points: int = 256) -> None:
        self.patch = patch
        self.greys = [_pad_min(im.grey, patch) for im in images]
        # the padding is background: a reflected defect there would have no annotation
        self.masks = [np.pad(im.mask, ((0, g.shape[0] - im.mask.shape[0]), (0, g.shape[1] - im.mask.shape[1])))
                      for im, g in zip(images, self.greys)]
        pts_rng = np.random.default_rng(0)
        self.defects: list[tuple[int, np.ndarray]] = []  # (image index, (k, 2) pixel coordinates)
        for i, im in enumerate(images):
            for k in range(1, len(im.boxes) + 1):
                b = im.boxes[k - 1][0]
                ys, xs = np.nonzero(im.instances[b.y0:b.y1, b.x0:b.x1] == k)
                if len(ys) == 0:
                    continue
                if len(ys) > max_points:
                    sel = pts_rng.choice(len(ys), max_points, replace=False)
                    ys, xs = ys[sel], xs[sel]
                self.defects.append((i, np.stack([ys + b.y0, xs + b.x0], 1)))

    def window(self, rng: np.random.Generator, p_defect: float) -> tuple[int, int, int]:
        """(image index, top, left) of one patch."""
        P = self.patch
        if self.defects and rng.random() < p_defect:
            i, pts = self.defects[int(rng.integers(len(self.defects)))]
            cy, cx = pts[int(rng.integers(len(pts)))]
            j = P // 4
            y = int(cy) - P // 2 + int(rng.integers(-j, j + 1))
            x = int(cx) - P // 2 + int(rng.integers(-j, j + 1))
        else:
            i = int(rng.integers(len(self.greys)))
            H, W = self.greys[i].shape
            y, x = int(rng.integers(0, H - P + 1)), int(rng.integers(0, W - P + 1))
        H, W = self.greys[i].shape
        return i, int(np.clip(y, 0, H - P)), int(np.clip(x, 0, W - P))

    def batch(self, rng: np.random.Generator, cfg: RealDetectorConfig, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labels = [], []
        P = self.patch
        for _ in range(cfg.batch):
            i, y, x = self.window(rng, cfg.p_defect)
            im, m = geometric(rng, self.greys[i][y:y + P, x:x + P], self.masks[i][y:y + P, x:x + P])
            im = photometric(rng, im)
            imgs.append(im)
            labels.append(severity_labels(im, m, cell=stride, lam=cfg.label_lambda,
                                          min_defect_severity=cfg.label_floor))
        return (torch.from_numpy(np.stack(imgs)).float().unsqueeze(1),
                torch.from_numpy(np.stack(labels)).unsqueeze(1))


def _severity_px(model: torch.nn.Module, greys: Sequence[np.ndarray], chunk: int = 4) -> list[np.ndarray]:
    """Pixel severity maps, a few images at a time (validation sets may hold large images)."""
    stride = int(model.stride)
    out: list[np.ndarray] = []
    for i in range(0, len(greys), chunk):
        part = list(greys[i:i + chunk])
        out.extend(upsample_severity(c, stride, g.shape) for c, g in zip(infer_severity(model, part), part))
    return out


def _validate_detector(model: torch.nn.Module, val: Sequence[PreparedImage]) -> tuple[float, float]:
    """(T, mean IoU at T) of severity > T on the validation images, T the best of VAL_THRESHOLDS."""
    was_training = model.training
    model.eval()
    try:
        sev = _severity_px(model, [v.grey for v in val])
    finally:
        model.train(was_training)
    return choose_threshold(sev, [v.mask for v in val], VAL_THRESHOLDS)


class _AcceptAll(torch.nn.Module):
    """Region classifier stand-in that calls every region a defect: lets the Inspector's
    post-processing search run on the detector alone."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        logits = torch.zeros(len(x), self.n_classes + 1, device=x.device)
        logits[:, 1] = 10.0
        return ClassifierOutput(logits, logits.softmax(1))


def tune_postprocess_on_images(inspector: Any, images: Sequence[PreparedImage], grid: dict | None = None) -> Any:
    """Choose T and the other post-processing settings of a `SeverityInspector` on annotated
    images by mean IoU (`SeverityInspector.tune_threshold` over `POSTPROCESS_GRID`)."""
    g = dict(POSTPROCESS_GRID if grid is None else grid)
    return inspector.tune_threshold([im.grey for im in images], [im.mask for im in images], **g)


def _detector_only_inspector(model: torch.nn.Module, det_info: CheckpointInfo, names: Sequence[str]) -> Any:
    stand_in = CheckpointInfo(path="", kind="classifier", model_version="accept-all", content_hash="",
                              arch="accept-all", arch_config={}, input_spec={}, class_names=list(names))
    return SeverityInspector(model, det_info, _AcceptAll(len(names)), stand_in, device="cpu")


def _config_record(cfg: Any) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items() if k not in _SYNTHETIC_FIELDS}


def _training_images(cfg: RealDetectorConfig | RealClassifierConfig, spec: DataSpec, split: SplitData | None,
                     needs: str) -> tuple[SplitData, list[PreparedImage], list[PreparedImage], tuple[str, ...], bool]:
    """What both trainings start with: torch's threads and seed from `cfg`, the data loaded (unless
    `split` is given) and prepared.

    Returns:
        (split, training images, validation images, class names, whether any mask was filled from boxes).
    Raises:
        DatasetError: unreadable or empty data, or no annotated defect in the training images
            (the message ends with `needs`).
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    split = split if split is not None else spec.load()
    train, names, fb_train = prepare_images(split.train)
    val, _, fb_val = prepare_images(split.val)
    if not any(im.boxes for im in train):
        raise DatasetError(f"no annotated defect in the {len(train)} training images of {spec.data}; {needs}")
    return split, train, val, names, fb_train or fb_val


def train_detector_on_data(cfg: RealDetectorConfig, spec: DataSpec, out_dir: str | os.PathLike[str],
                           resume: bool = False, quiet: bool = False, log: Callable[[str], None] = print,
                           split: SplitData | None = None, grid: dict | None = None) -> TrainResult:
    """Train He & Liu's severity detector on annotated images; writes `<out>/detector_<arch>.pt`.

    Args:
        cfg: training settings (steps, batch, patch, lr, labels, p_defect, val_every, ...).
        spec: the data (format, path, validation set or split).
        out_dir: where the checkpoint and the resumable training state go.
        resume: continue from `<out>/train_state_detector_<arch>.pt` (same data only).
        split: already loaded data (else `spec.load()`); grid: post-processing search override.
    Returns:
        the checkpoint of the best validation step, its T and post-processing tuned on the
        validation images; `info.metrics` holds the validation mean IoU.
    Raises:
        DatasetError: unreadable or empty data, no annotated defect in the training images, or a
            training state made on other data.
    """
    t0 = time.time()
    split, train, val, names, from_boxes = _training_images(cfg, spec, split,
                                                            "the detector needs defect masks or boxes to learn from")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck_path = out / f"detector_{cfg.arch}.pt"
    state_path = out / f"train_state_detector_{cfg.arch}.pt"
    model = build_detector(cfg.arch, **cfg.arch_config)
    if cfg.init:
        ck = load_checkpoint(cfg.init, expected_kind="detector")
        if ck.info.arch != cfg.arch or ck.info.arch_config != dict(cfg.arch_config):
            raise ValueError(f"--init {cfg.init} is a {ck.info.arch} {ck.info.arch_config}, not {cfg.arch} {cfg.arch_config}")
        model.load_state_dict(ck.state_dict)
    stride = int(model.stride)
    opt, sched = detector_optimiser(model, cfg)
    rng = np.random.default_rng(cfg.seed)
    step, losses, history = 0, [], []
    best: dict[str, Any] = {"miou": -1.0, "step": 0, "threshold": None, "state": None}
    if resume and state_path.is_file():
        st = load_state(state_path, model, opt, sched, rng)
        _check_resume(st, spec, "detector")
        step, losses, history, best = int(st["step"]), list(st["losses"]), list(st["history"]), dict(st["best"])
        log(f"resumed detector training at step {step} (best validation mean IoU so far {best['miou']:.3f})")
    source = _PatchSource(train, cfg.patch)
    record = _spec_record(spec, split, names, from_boxes)
    input_spec = {"channels": int(getattr(model, "in_channels", 1)), "dtype": "uint8", "range": [0, 255],
                  "stride": stride, "pad_multiple": int(model.pad_multiple), "train_patch": cfg.patch,
                  "severity_range": [0, 12], "label_lambda": cfg.label_lambda, "label_floor": cfg.label_floor,
                  "colour": "converted to grey (ITU-R 601, as the Inspector does)"}

    def write(metrics: dict, threshold: float) -> Any:
        return save_checkpoint(
            ck_path, best["state"], kind="detector", arch=cfg.arch, arch_config=dict(cfg.arch_config),
            class_names=list(names), threshold=threshold, input_spec=input_spec,
            train_data={**record, "config": _config_record(cfg), "best_step": best["step"], "steps_done": step,
                        "val_history": history, "train_seconds": round(time.time() - t0, 1),
                        "init_from": cfg.init, "final_loss": float(np.mean(losses[-50:])) if losses else None},
            metrics=metrics)

    val_every = max(1, cfg.val_every)
    model.train()
    with progress(cfg.steps, f"train detector[{cfg.arch}] on {spec.format}", initial=step, disable=quiet) as bar:
        while step < cfg.steps:
            x, t = source.batch(rng, cfg, stride)
            losses.append(detector_step(model, opt, sched, x, t, cfg.defect_weight))
            step += 1
            bar.update(1)
            post = {"loss": f"{np.mean(losses[-50:]):.3f}"}
            if step % val_every == 0 or step == cfg.steps:
                thr, miou = _validate_detector(model, val)
                history.append([step, round(miou, 4), thr])
                if miou > best["miou"]:
                    best = {"miou": miou, "step": step, "threshold": thr,
                            "state": copy.deepcopy(model.state_dict())}
                    write({"val_mean_iou": miou, "val_threshold_pixel": thr}, thr)
            if history:
                post.update(val_miou=f"{history[-1][1]:.3f}", best=f"{best['miou']:.3f}")
            bar.set_postfix(post)
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_state(state_path, model, opt, sched, rng, step=step, losses=losses, history=history,
                            best=best, data_spec=asdict(spec))
    if best["state"] is None:  # resumed a finished run that never validated
        best = {"miou": -1.0, "step": step, "threshold": None, "state": copy.deepcopy(model.state_dict())}
    model.load_state_dict(best["state"])
    model.eval()
    info = write({"val_mean_iou": best["miou"]}, best["threshold"] or 6.0)
    insp = _detector_only_inspector(model, info, names)
    tuned = tune_postprocess_on_images(insp, val, grid)
    seconds = time.time() - t0
    info = update_metrics(ck_path, {"val_mean_iou": best["miou"], "val_regions_mean_iou": tuned.mean_iou,
                                    "threshold_tuned_on": f"{len(val)} validation images of {spec.data} "
                                                          "(detector only, every region accepted)"},
                          threshold=tuned.threshold, postprocess=tuned.postprocess())
    log(f"best step {best['step']}: validation mean IoU {best['miou']:.3f}; post-processing T={tuned.threshold:.2f}, "
        f"relative {tuned.relative:.2f}, low {tuned.low:.2f}, holes {tuned.hole_area}, flip TTA "
        f"{'on' if tuned.flip_tta else 'off'} (regions mean IoU {tuned.mean_iou:.3f}); {seconds:.0f} s")
    return TrainResult(str(ck_path), losses, seconds, info)


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------
def _blob_window(rng: np.random.Generator, im: PreparedImage) -> tuple[np.ndarray, BBox] | None:
    """A random elliptic blob (full-size mask, box) over defect-free pixels, or None if none fits."""
    H, W = im.grey.shape
    for _ in range(8):
        ry, rx = int(rng.integers(3, max(4, min(24, H // 4)))), int(rng.integers(3, max(4, min(24, W // 4))))
        if H <= 2 * ry or W <= 2 * rx:
            return None
        cy, cx = int(rng.integers(ry, H - ry)), int(rng.integers(rx, W - rx))
        bb = BBox(cx - rx, cy - ry, cx + rx + 1, cy + ry + 1)
        if im.mask[bb.y0:bb.y1, bb.x0:bb.x1].any():
            continue
        m = np.zeros((H, W), np.uint8)
        cv2.ellipse(m, (cx, cy), (rx, ry), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        return m > 0, bb
    return None


def _region_samples(rng: np.random.Generator, images: Sequence[PreparedImage], cfg: RealClassifierConfig,
                    detector: tuple[torch.nn.Module, float, dict] | None, jitter: bool, desc: str,
                    quiet: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crops (float32 (n, 2, CROP, CROP)) and labels (0 = background, else the class id)."""
    xs: list[np.ndarray] = []
    ys: list[int] = []

    def add(crops: np.ndarray, label: int, cap: int) -> None:
        if len(crops) > cap:
            crops = crops[rng.choice(len(crops), cap, replace=False)]
        xs.extend(crops)
        ys.extend([label] * len(crops))

    reps = cfg.crops_per_instance if jitter else 1
    with progress(len(images), desc, disable=quiet) as bar:
        for im in images:
            for k, (box, cid) in enumerate(im.boxes):
                full = im.instances == (k + 1)
                if not full.any():
                    continue
                for _ in range(reps):
                    jit = (int(rng.integers(-8, 9)), int(rng.integers(-8, 9))) if jitter else (0, 0)
                    add(region_crops(im.grey, full, box, jitter=jit), cid, cap=4)
            for _ in range(cfg.background_per_image):
                blob = _blob_window(rng, im)
                if blob is not None:
                    add(region_crops(im.grey, blob[0], blob[1]), 0, cap=1)
            if detector is not None:
                model, thr, pp = detector
                sev = _severity_px(model, [im.grey])[0]
                regs = regions_from_severity(sev, thr, relative=float(pp.get("relative", 0.0)),
                                             low=float(pp.get("low", 1.0)), hole_area=int(pp.get("hole_area", 0)))
                regs += regions_from_severity(sev, 0.5 * thr)
                for reg in regs:
                    sub_gt = im.mask[reg.bbox.y0:reg.bbox.y1, reg.bbox.x0:reg.bbox.x1][reg.mask]
                    if not sub_gt.any():
                        add(region_crops(im.grey, None, reg.bbox, reg.mask), 0, cap=2)  # a false positive
                    elif (sub_gt > 0).mean() >= 0.5:
                        # a found defect, cut the way the pipeline will cut it: its majority class
                        add(region_crops(im.grey, None, reg.bbox, reg.mask), int(np.bincount(sub_gt).argmax()), cap=2)
            bar.update(1)
    if not xs:
        return np.zeros((0, 2, CROP, CROP), np.float32), np.zeros(0, np.int64)
    return np.stack(xs).astype(np.float32), np.asarray(ys, np.int64)


def _accuracies(model: torch.nn.Module, X: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy = mean recall over the classes present) of `model` on crops."""
    if len(X) == 0:
        return 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(torch.from_numpy(X[i:i + 256])).logits.argmax(1) for i in range(0, len(X), 256)]).numpy()
    model.train(was_training)
    recalls = [float((pred[Y == c] == c).mean()) for c in np.unique(Y)]
    return float((pred == Y).mean()), float(np.mean(recalls))


def _load_detector(path: str) -> tuple[tuple[torch.nn.Module, float, dict], CheckpointInfo]:
    ck = load_checkpoint(path, expected_kind="detector")
    dm = build_detector(ck.info.arch, **ck.info.arch_config)
    dm.load_state_dict(ck.state_dict)
    dm.eval()
    thr = float(ck.info.threshold if ck.info.threshold is not None else 6.0)
    return (dm, thr, dict(ck.info.postprocess)), ck.info


def train_classifier_on_data(cfg: RealClassifierConfig, spec: DataSpec, out_dir: str | os.PathLike[str],
                             resume: bool = False, quiet: bool = False, log: Callable[[str], None] = print,
                             split: SplitData | None = None) -> TrainResult:
    """Train He & Liu's region classifier ('cnn4') on annotated images; writes `<out>/classifier.pt`.

    Args:
        cfg: training settings; `cfg.detector` (a detector checkpoint) adds its false positives
            on the training images as background crops.
        spec: the data (format, path, validation set or split); split: already loaded data.
    Returns:
        the checkpoint of the epoch with the best balanced validation accuracy.
    Raises:
        DatasetError: unreadable or empty data, no annotated defect in the training images, or a
            training state made on other data.
        CheckpointError: an unreadable `cfg.detector`.
    """
    t0 = time.time()
    split, train, val, names, from_boxes = _training_images(cfg, spec, split,
                                                            "the classifier needs defect regions to learn from")
    detector = None
    if cfg.detector:
        detector, det_info = _load_detector(cfg.detector)
        if list(det_info.class_names) != list(names):
            log(f"warning: detector {cfg.detector} knows classes {det_info.class_names}, the data {list(names)}; "
                "the Inspector needs both checkpoints to agree")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "train_state_classifier.pt"
    crop_rng = np.random.default_rng(cfg.seed)  # crops are cut identically on a resume
    X, Y = _region_samples(crop_rng, train, cfg, detector, True, "cut training crops", quiet)
    Xv, Yv = _region_samples(np.random.default_rng(cfg.seed + 1), val, cfg, detector, False,
                             "cut validation crops", quiet)
    n_cls = len(names)
    counts = np.bincount(Y, minlength=n_cls + 1).astype(np.float64)
    weights = class_weights(counts)
    log(f"classifier crops per class (background first): train {counts.astype(int).tolist()}, "
        f"validation {np.bincount(Yv, minlength=n_cls + 1).tolist()}")
    model = build_classifier(n_cls, width=cfg.width)
    steps_per_epoch = int(math.ceil(len(X) / cfg.batch))
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.15)
    rng = np.random.default_rng(cfg.seed + 2)
    epoch, losses, history = 0, [], []
    best: dict[str, Any] = {"balanced": -1.0, "accuracy": 0.0, "epoch": 0, "state": None}
    if resume and state_path.is_file():
        st = load_state(state_path, model, opt, sched, rng)
        _check_resume(st, spec, "classifier")
        epoch, losses, history, best = int(st["epoch"]), list(st["losses"]), list(st["history"]), dict(st["best"])
        log(f"resumed classifier training at epoch {epoch}")
    model.train()
    with progress(total, f"train classifier[cnn4] on {spec.format}", initial=epoch * steps_per_epoch,
                   disable=quiet) as bar:
        while epoch < cfg.epochs:
            order = rng.permutation(len(X))
            for i in range(steps_per_epoch):
                idx = order[i * cfg.batch:(i + 1) * cfg.batch]
                losses.append(classifier_step(model, opt, sched, augment_crops(rng, X[idx]),
                                              torch.from_numpy(Y[idx]), weights))
                bar.update(1)
                post = {"epoch": epoch + 1, "loss": f"{np.mean(losses[-50:]):.3f}"}
                if history:
                    post.update(val_acc=f"{history[-1][1]:.3f}", best=f"{best['balanced']:.3f}")
                bar.set_postfix(post)
            epoch += 1
            acc, bal = _accuracies(model, Xv, Yv)
            history.append([epoch, round(acc, 4), round(bal, 4)])
            if (bal, acc) > (best["balanced"], best["accuracy"]):  # ties: the better plain accuracy
                best = {"balanced": bal, "accuracy": acc, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(losses[-50:]):.3f}", val_acc=f"{acc:.3f}",
                            best=f"{best['balanced']:.3f}")
            if epoch % cfg.save_every == 0 or epoch == cfg.epochs:
                save_state(state_path, model, opt, sched, rng, epoch=epoch, losses=losses, history=history,
                            best=best, data_spec=asdict(spec))
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    train_acc, _ = _accuracies(model, X, Y)
    seconds = time.time() - t0
    log(f"best epoch {best['epoch']}: validation accuracy {best['accuracy']:.3f} (balanced {best['balanced']:.3f}), "
        f"train accuracy {train_acc:.3f}; {seconds:.0f} s")
    info = save_checkpoint(
        out / "classifier.pt", model.state_dict(), kind="classifier", arch="cnn4",
        arch_config={"n_classes": n_cls, "width": cfg.width}, class_names=list(names),
        input_spec={"channels": 2, "crop": CROP, "channel_0": "grey minus crop median, /40",
                    "channel_1": "region mask", "background_index": 0,
                    "colour": "converted to grey (ITU-R 601, as the Inspector does)"},
        train_data={**_spec_record(spec, split, names, from_boxes), "hard_negatives_from": cfg.detector,
                    "crops_per_class": counts.astype(int).tolist(),
                    "val_crops_per_class": np.bincount(Yv, minlength=n_cls + 1).tolist(),
                    "config": _config_record(cfg), "best_epoch": best["epoch"], "val_history": history,
                    "train_seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-50:]))},
        metrics={"val_accuracy": best["accuracy"], "val_balanced_accuracy": best["balanced"],
                 "train_accuracy": train_acc},
    )
    return TrainResult(str(out / "classifier.pt"), losses, seconds, info)
