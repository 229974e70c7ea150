"""Training of He & Liu's severity detector and region classifier ('cnn4') on the one engine (`models.training.lite0`).

Both networks train through the engine every other family uses (budget in steps or wall time chosen from the data,
warm-up + cosine learning rate, balanced sampling, smoothed early stopping, resume, progress bar, every choice
recorded); this module holds their hooks (`DetectorTask`, `RegionClassifierTask`) and the two entry points
`train_detector` / `train_classifier`. The data are a plant's annotated images (`data=DataSpec(...)`: masks, or
boxes filled as masks) or, without data, the deterministic synthetic generator (`synthetic:seed=...` specs for the
training and validation frames; training seeds 100000+ / 200000+, validation 50000+, never the evaluation seeds
9000+ of the README).

Detector: one square patch per training image and draw (`patch`, default the median image's short side rounded
down to 16, at most 128; smaller images reflect-padded with background labels), centred on a pixel of one of the
image's annotated defects with probability `p_defect`, flips / 90° turns / brightness and contrast; per-cell
severity labels (`models.families.severity.labels`); loss = L2 with defect cells weighted 1 + `defect_weight`.
The step budget counts the patches that tile the training images (12 passes, 300..3000 steps). Validation metric:
mean IoU of severity > T over the validation images at the best T of `VAL_THRESHOLDS`; at the end T and the rest
of the post-processing (relative cut, hysteresis, hole filling, flip TTA) are chosen on the validation images with
every region accepted (`train threshold` re-chooses them with the classifier once it exists).

Region classifier: crops of every annotated instance (class from the data) and background crops (random
defect-free windows with a blob mask, and the false positives of `detector` when given), cut once before training
(validation crops the same way from the validation images); class-weighted cross-entropy, rotation / flip / gain /
noise augmentation; validation metric: balanced accuracy (mean recall over the classes present), since plain
accuracy rewards calling everything background.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.core.checkpoints import CheckpointInfo, load_checkpoint
from models.core.types import InspectionSample
from models.data.datasets import DatasetError
from models.data.synthetic import VAL_SEED_BASE
from models.families.severity.detector import build_detector
from models.families.severity.region_classifier import CROP, build_classifier
from models.families.severity.train_data import (DataSpec, PatchSource, accuracies, detector_only_inspector,
                                                 load_detector, prepare_images, region_samples, spec_record,
                                                 tune_postprocess_on_images, validate_detector)
from models.training.defaults import choose_geometry
from models.training.lite0 import CheckpointPlan, LiteTask, LiteTrainConfig, LiteTrainer, register_task

__all__ = ["DetectorTrainConfig", "ClassifierTrainConfig", "TrainResult", "train_detector", "train_classifier",
           "DetectorTask", "RegionClassifierTask", "class_weights", "augment_crops", "DETECTOR_PATCH"]

DETECTOR_PATCH = 128  # the largest default detector patch (the paper's networks were trained on 128 px patches)
GREY = "converted to grey (ITU-R 601, as the Inspector does)"


@dataclass
class DetectorTrainConfig:
    """Settings of `train detector` (None: chosen from the data by the engine, printed and recorded)."""

    arch: str = "fast"
    steps: int | None = None
    time_budget: float | None = None  # wall seconds
    batch: int = 16
    patch: int | None = None
    lr: float | None = None  # peak (warm-up + cosine); None: the task's 2e-3
    label_lambda: float = 24.0  # grey levels; small enough that defect interiors saturate
    # Min severity of annotated cells (see models.families.severity.labels). High on purpose: with a
    # floor F every annotated cell sits at F or above, so a threshold T a little under F keeps
    # whole low-contrast defects (e.g. the flat centre of a mild imprint) instead of cutting
    # holes in them. Measured with the ground-truth labels themselves as the "prediction"
    # (2x2 cells, seeds 9000-9199): floor 3 at T 6 caps pixel F1 at 0.911 and mean IoU at
    # 0.826; floor 8 at T 6 allows 0.971 and 0.926.
    label_floor: float = 8.0
    defect_weight: float = 3.0  # class imbalance: L2 weight of defect cells (background weight 1)
    p_defect: float = 0.5  # share of a defective image's patches centred on one of its defects
    arch_config: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # warm start from this detector checkpoint (same arch and config)
    val_every: int | None = None  # steps between validations (default: the engine's, 6..15 per run)
    patience: int | None = None
    balanced: bool = True
    seed: int = 0
    threads: int = 2
    # the synthetic generator (without data)
    n_frames: int = 1200
    frame_shape: tuple[int, int] = (256, 256)
    seed_base: int = 100000
    n_val: int = 100


@dataclass
class ClassifierTrainConfig:
    """Settings of `train classifier --arch cnn4` (epochs None: the engine's step budget)."""

    epochs: int | None = 6
    steps: int | None = None
    time_budget: float | None = None
    batch: int = 64
    lr: float | None = None  # None: the task's 2e-3
    width: int = 16
    detector: str | None = None  # checkpoint whose false positives on the training images become background crops
    crops_per_instance: int = 2  # jittered crops per annotated instance
    background_per_image: int = 2  # random defect-free windows per image
    balanced: bool = True
    seed: int = 0
    threads: int = 2
    # the synthetic generator (without data)
    n_frames: int = 1000
    frame_shape: tuple[int, int] = (256, 256)
    seed_base: int = 200000
    n_val: int = 100


class TrainResult(NamedTuple):
    checkpoint: str
    losses: list[float]
    seconds: float
    info: Any


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """Cross-entropy weights against class imbalance: (total / count) ** 0.5, mean 1."""
    w = torch.tensor((counts.sum() / np.maximum(counts, 1)) ** 0.5, dtype=torch.float32)
    return w / w.mean()


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


def _all_params(model: torch.nn.Module, lr: float) -> list[dict]:
    return [{"params": list(model.parameters()), "lr": lr}]


class DetectorTask(LiteTask):
    """The severity detector's hooks. `cfg.options`: arch, arch_config, label_lambda, label_floor, defect_weight,
    p_defect, init, grid (post-processing search override)."""

    name = "detector"
    channels_last = False  # small plain convolutions: no measured gain

    @staticmethod
    def _o(cfg: LiteTrainConfig) -> dict:
        d = DetectorTrainConfig()
        return {"arch": d.arch, "arch_config": {}, "label_lambda": d.label_lambda, "label_floor": d.label_floor,
                "defect_weight": d.defect_weight, "p_defect": d.p_defect, "init": None, "grid": None, **cfg.options}

    def pretrained(self, cfg: LiteTrainConfig) -> str:
        init = self._o(cfg)["init"]
        return f"warm start from {init}" if init else "none (He & Liu's severity network, trained from scratch)"

    def param_groups(self, tr: LiteTrainer, model: torch.nn.Module) -> list[dict]:
        return _all_params(model, tr.cfg.lr)

    def state_file(self, tr: LiteTrainer) -> str:
        return f"train_state_detector_{tr.opts['arch']}.pt"

    def prepare(self, tr: LiteTrainer, train: list[InspectionSample], val: list[InspectionSample]) -> None:
        o = self._o(tr.cfg)
        tr.images, names, fb_train = prepare_images(train)
        tr.val_images, _, fb_val = prepare_images(val) if val else ([], names, False)
        if not any(im.boxes for im in tr.images):
            raise DatasetError(f"no annotated defect in the {len(tr.images)} training images; the detector needs "
                               "defect masks or boxes to learn from")
        if not tr.val_images:
            raise DatasetError("the detector chooses its threshold on validation images: give --val-data or a "
                               "--val-split above 0")
        geo = choose_geometry([im.grey.shape for im in tr.images], target=DETECTOR_PATCH, multiple=16,
                              patch=tr.cfg.patch)
        tr.patch = geo.patch
        tr.choices["crop"] = geo.to_dict()
        tr.source = PatchSource(tr.images, tr.patch)
        tr.n_out = len(names)
        tr.metric_name = "val_mean_iou"
        tr.opts = o
        from_boxes = fb_train or fb_val
        tr.record = {"class_names": list(names), "masks_from_boxes": from_boxes,
                     "annotation": "boxes filled as masks" if from_boxes else "pixel masks"}

    def n_train(self, tr: LiteTrainer) -> int:
        return len(tr.images)

    def budget_items(self, tr: LiteTrainer) -> int:
        P = tr.patch
        return int(sum(-(-im.grey.shape[0] // P) * -(-im.grey.shape[1] // P) for im in tr.images))

    def budget_unit(self, tr: LiteTrainer) -> str:
        return f"{tr.patch} px patches tiling the {len(tr.images)} training images"

    def train_defective(self, tr: LiteTrainer) -> Sequence[bool]:
        return [bool(im.boxes) for im in tr.images]

    def val_defective(self, tr: LiteTrainer) -> int:
        return sum(bool(im.mask.any()) for im in tr.val_images)

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return build_detector(DetectorTrainConfig().arch)

    def build_for(self, tr: LiteTrainer) -> torch.nn.Module:
        o = tr.opts
        model = build_detector(o["arch"], **o["arch_config"])
        if o["init"]:
            ck = load_checkpoint(o["init"], expected_kind="detector")
            if ck.info.arch != o["arch"] or ck.info.arch_config != dict(o["arch_config"]):
                raise ValueError(f"--init {o['init']} is a {ck.info.arch} {ck.info.arch_config}, not {o['arch']} "
                                 f"{o['arch_config']}")
            model.load_state_dict(ck.state_dict)
        return model

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        o = tr.opts
        x, t = tr.source.batch(tr.rng, idx, o["p_defect"], int(model.stride), o["label_lambda"], o["label_floor"])
        x, t = x.to(tr.device), t.to(tr.device)
        pred = model(x).raw.float()
        w = 1.0 + o["defect_weight"] * (t > 0).float()
        return (w * (pred - t) ** 2).sum() / w.sum()

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        thr, miou = validate_detector(model, tr.val_images)
        return float(miou), {"val_threshold_pixel": float(thr)}

    def input_spec(self, tr: LiteTrainer, model: torch.nn.Module) -> dict:
        o = tr.opts
        return {"channels": int(getattr(model, "in_channels", 1)), "dtype": "uint8", "range": [0, 255],
                "stride": int(model.stride), "pad_multiple": int(model.pad_multiple), "train_patch": tr.patch,
                "severity_range": [0, 12], "label_lambda": o["label_lambda"], "label_floor": o["label_floor"],
                "colour": GREY}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        o = tr.opts
        spec = self.input_spec(tr, model)
        thr = float(metrics.get("val_threshold_pixel", 6.0))
        info = CheckpointInfo(path="", kind="detector", model_version="in training", content_hash="", arch=o["arch"],
                              arch_config=dict(o["arch_config"]), input_spec=spec, class_names=list(tr.class_names),
                              threshold=thr)
        tuned = tune_postprocess_on_images(detector_only_inspector(model, info, tr.class_names), tr.val_images,
                                           o["grid"], progress=not tr.quiet)
        metrics.update({"val_regions_mean_iou": tuned.mean_iou,
                        "threshold_tuned_on": f"{len(tr.val_images)} validation images (detector only, every "
                                              "region accepted)"})
        if tr.log is not None:
            tr.log(f"train detector: post-processing T={tuned.threshold:.2f}, relative {tuned.relative:.2f}, low "
                   f"{tuned.low:.2f}, holes {tuned.hole_area}, flip TTA {'on' if tuned.flip_tta else 'off'} "
                   f"(regions mean IoU {tuned.mean_iou:.3f})")
        return CheckpointPlan(f"detector_{o['arch']}.pt", "detector", o["arch"], dict(o["arch_config"]), spec,
                              threshold=tuned.threshold, postprocess=tuned.postprocess())


class RegionClassifierTask(LiteTask):
    """The region classifier's hooks. `cfg.options`: width, detector, crops_per_instance, background_per_image."""

    name = "region_classifier"
    channels_last = False

    def pretrained(self, cfg: LiteTrainConfig) -> str:
        return "none (He & Liu's region classifier cnn4, trained from scratch)"

    def param_groups(self, tr: LiteTrainer, model: torch.nn.Module) -> list[dict]:
        return _all_params(model, tr.cfg.lr)

    def prepare(self, tr: LiteTrainer, train: list[InspectionSample], val: list[InspectionSample]) -> None:
        d = ClassifierTrainConfig()
        o = {"width": d.width, "detector": None, "crops_per_instance": d.crops_per_instance,
             "background_per_image": d.background_per_image, **tr.cfg.options}
        tr.opts = o
        images, names, fb_train = prepare_images(train)
        val_images, _, fb_val = prepare_images(val) if val else ([], names, False)
        if not any(im.boxes for im in images):
            raise DatasetError(f"no annotated defect in the {len(images)} training images; the classifier needs "
                               "defect regions to learn from")
        if not val_images:
            raise DatasetError("the classifier keeps its best validation weights: give --val-data or a --val-split "
                               "above 0")
        detector = None
        if o["detector"]:
            detector, det_info = load_detector(o["detector"])
            if list(det_info.class_names) != list(names) and tr.log is not None:
                tr.log(f"warning: detector {o['detector']} knows classes {det_info.class_names}, the data "
                       f"{list(names)}; the Inspector needs both checkpoints to agree")
        cut = SimpleNamespace(crops_per_instance=o["crops_per_instance"],
                              background_per_image=o["background_per_image"])
        crop_rng = np.random.default_rng(tr.cfg.seed)  # the crops are cut identically on a resume
        tr.X, tr.Y = region_samples(crop_rng, images, cut, detector, True, "cut training crops", tr.quiet)
        tr.Xv, tr.Yv = region_samples(np.random.default_rng(tr.cfg.seed + 1), val_images, cut, detector, False,
                                      "cut validation crops", tr.quiet)
        n_cls = len(names)
        counts = np.bincount(tr.Y, minlength=n_cls + 1).astype(np.float64)
        seen = counts.copy()
        if tr.cfg.balanced and counts[0] and counts[1:].sum():  # what balanced batches show: half background
            seen[0], seen[1:] = counts.sum() / 2, counts[1:] / counts[1:].sum() * counts.sum() / 2
        tr.weights = class_weights(seen).to(tr.device)
        tr.n_out = n_cls
        tr.metric_name = "val_balanced_accuracy"
        val_counts = np.bincount(tr.Yv, minlength=n_cls + 1).astype(int).tolist()
        tr.choices["crops_per_class"] = {"train": counts.astype(int).tolist(), "validation": val_counts,
                                         "rule": f"train {counts.astype(int).tolist()}, validation {val_counts} "
                                                 "(background first)"}
        tr.choices["class_weights"] = [round(float(w), 4) for w in tr.weights.cpu()]
        from_boxes = fb_train or fb_val
        tr.record = {"class_names": list(names), "masks_from_boxes": from_boxes, "hard_negatives_from": o["detector"],
                     "crops_per_class": counts.astype(int).tolist(), "val_crops_per_class": val_counts,
                     "annotation": "boxes filled as masks" if from_boxes else "pixel masks"}

    def n_train(self, tr: LiteTrainer) -> int:
        return len(tr.X)

    def budget_unit(self, tr: LiteTrainer) -> str:
        return "region crops"

    def train_defective(self, tr: LiteTrainer) -> Sequence[bool]:
        return tr.Y > 0

    def val_defective(self, tr: LiteTrainer) -> int:
        return int((tr.Yv > 0).sum())

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return build_classifier(n_out, width=ClassifierTrainConfig().width)

    def build_for(self, tr: LiteTrainer) -> torch.nn.Module:
        return build_classifier(tr.n_out, width=int(tr.opts["width"]))

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        x = augment_crops(tr.rng, tr.X[np.asarray(idx)]).to(tr.device)
        y = torch.from_numpy(tr.Y[np.asarray(idx)]).to(tr.device)
        return F.cross_entropy(model(x).logits.float(), y, weight=tr.weights)

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        acc, bal = accuracies(model, tr.Xv, tr.Yv)
        return bal, {"val_accuracy": acc}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        metrics["train_accuracy"], _ = accuracies(model, tr.X, tr.Y)
        return CheckpointPlan("classifier.pt", "classifier", "cnn4", {"n_classes": tr.n_out, "width": int(tr.opts["width"])},
                              {"channels": 2, "crop": CROP, "channel_0": "grey minus crop median, /40",
                               "channel_1": "region mask", "background_index": 0, "colour": GREY})


DETECTOR_TASK = register_task(DetectorTask())
CLASSIFIER_TASK = register_task(RegionClassifierTask())


def _synthetic(seed: int, n: int, shape: tuple[int, int]) -> str:
    return f"synthetic:seed={seed},n={n},size={shape[0]}x{shape[1]}"


def _run(lite: LiteTrainConfig, cfg: Any, data: DataSpec | None, out_dir: str | os.PathLike[str],
         resume: bool, quiet: bool, log: Callable[[str], None]) -> TrainResult:
    if data is None:  # the synthetic generator: training and validation frames from disjoint seed ranges
        data = DataSpec("synthetic", _synthetic(cfg.seed_base, cfg.n_frames, cfg.frame_shape),
                        _synthetic(VAL_SEED_BASE, cfg.n_val, cfg.frame_shape))
        if cfg.n_frames < 1 or cfg.n_val < 1:
            raise DatasetError("--frames and --val-frames must be at least 1")
        split = data.load_any()
    else:
        split = data.load()
    torch.set_num_threads(max(1, cfg.threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tr = LiteTrainer(lite, out, split.train, split.val, {**split.meta, **spec_record(data)}, quiet, log=log,
                     data_spec=data.to_dict())
    res = tr.run(resume)
    return TrainResult(str(res.checkpoint), list(res.losses), res.seconds, res.info)


def train_detector(cfg: DetectorTrainConfig, out_dir: str | os.PathLike[str], data: DataSpec | None = None,
                   resume: bool = False, quiet: bool = False, log: Callable[[str], None] = print,
                   grid: dict | None = None) -> TrainResult:
    """Train the severity detector on `data` (None: synthetic frames); writes `<out>/detector_<arch>.pt`.

    Returns the checkpoint of the kept validation step with T and post-processing chosen on the validation images
    (`grid`: override of the post-processing search), the per-step losses and the wall seconds.
    Raises:
        DatasetError: unreadable or empty data, no annotated defect, no validation images, or a training state in
            `out_dir` made on other data.
    Guarantees: `<out>/train_state_detector.pt` after every validation (`resume=True` continues from it).
    """
    lite = LiteTrainConfig(task="detector", steps=cfg.steps, time_budget=cfg.time_budget, batch=cfg.batch,
                           lr=cfg.lr, patch=cfg.patch, patience=cfg.patience, balanced=cfg.balanced, seed=cfg.seed,
                           threads=cfg.threads, eval_every=cfg.val_every, backbone="none",
                           val_split=data.val_split if data else 0.0, split_seed=data.split_seed if data else 0,
                           options={"arch": cfg.arch, "arch_config": dict(cfg.arch_config),
                                    "label_lambda": cfg.label_lambda, "label_floor": cfg.label_floor,
                                    "defect_weight": cfg.defect_weight, "p_defect": cfg.p_defect, "init": cfg.init,
                                    "grid": grid})
    return _run(lite, cfg, data, out_dir, resume, quiet, log)


def train_classifier(cfg: ClassifierTrainConfig, out_dir: str | os.PathLike[str], data: DataSpec | None = None,
                     resume: bool = False, quiet: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train the region classifier cnn4 on `data` (None: synthetic frames); writes `<out>/classifier.pt`, the
    weights of the kept validation (balanced accuracy).

    Raises:
        DatasetError: as `train_detector`; CheckpointError: an unreadable `cfg.detector`.
    """
    lite = LiteTrainConfig(task="region_classifier", epochs=cfg.epochs, steps=cfg.steps, time_budget=cfg.time_budget,
                           batch=cfg.batch, lr=cfg.lr, balanced=cfg.balanced, seed=cfg.seed, threads=cfg.threads,
                           backbone="none", val_split=data.val_split if data else 0.0,
                           split_seed=data.split_seed if data else 0,
                           options={"width": cfg.width, "detector": cfg.detector,
                                    "crops_per_instance": cfg.crops_per_instance,
                                    "background_per_image": cfg.background_per_image})
    return _run(lite, cfg, data, out_dir, resume, quiet, log)
