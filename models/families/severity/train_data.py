"""The severity family's training data: a plant's annotated images prepared for He & Liu's detector and region
classifier, patches, region crops, validation and post-processing search (the training itself runs on the one
engine: `models.families.severity.train`).

The data come from `models.data.datasets.load_split` (a training set and a validation set: `val_data`
or a seeded fraction of `data`). Images are converted to grey exactly as the Inspector does.
Mask datasets give the annotation directly; box-only datasets (NEU-DET) get their boxes filled
as masks, which the checkpoint records (`train_data.masks_from_boxes`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np
import torch

from models.core.augment import geometric, photometric
from models.core.checkpoints import CheckpointInfo, load_checkpoint
from models.core.regions import choose_threshold, regions_from_severity, upsample_severity
from models.core.types import BBox, InspectionSample
from models.data.datasets import DatasetError, SplitData, instances_from_class_mask, load_split
from models.families.severity.detector import build_detector, infer_severity
from models.families.severity.inspector import SeverityInspector, _to_grey
from models.families.severity.labels import severity_labels
from models.families.severity.region_classifier import CROP, ClassifierOutput, region_crops
from models.training.state import progress

__all__ = ["DataSpec", "PreparedImage", "prepare_images", "PatchSource", "validate_detector", "region_samples",
           "accuracies", "load_detector", "detector_only_inspector", "tune_postprocess_on_images", "spec_record",
           "VAL_THRESHOLDS", "POSTPROCESS_GRID"]

# Thresholds tried by the periodic validation (severity map > T; the best one counts).
VAL_THRESHOLDS = tuple(0.5 * i for i in range(2, 24))
# Post-processing searched at the end of detector training and by `train threshold --data`.
POSTPROCESS_GRID = {"candidates": [0.5 * i for i in range(2, 24)], "relatives": [0.0, 0.5],
                    "lows": [1.0, 0.8, 0.7, 0.6, 0.5], "hole_areas": [0, 64, 256], "flip_ttas": [False, True]}


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
        return self.load_any()

    def load_any(self) -> SplitData:
        """`load` without the refusal of synthetic specs (the trainers' own synthetic runs)."""
        return load_split(self.format, self.data, self.val_data, self.val_split, self.split_seed, self.limit)

    def to_dict(self) -> dict:
        return asdict(self)


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


def spec_record(spec: DataSpec) -> dict:
    """The `source` field of a checkpoint's train_data ('format:path', or the synthetic spec)."""
    return {"source": spec.data if spec.format == "synthetic" else f"{spec.format}:{spec.data}",
            **({"val": spec.val_data} if spec.format == "synthetic" else {})}


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


class PatchSource:
    """Training patches of real images: a fraction centred on defect instances, the rest uniform."""

    def __init__(self, images: Sequence[PreparedImage], patch: int, max_points: int = 256) -> None:
        self.patch = patch
        self.greys = [_pad_min(im.grey, patch) for im in images]
        # the padding is background: a reflected defect there would have no annotation
        self.masks = [np.pad(im.mask, ((0, g.shape[0] - im.mask.shape[0]), (0, g.shape[1] - im.mask.shape[1])))
                      for im, g in zip(images, self.greys)]
        pts_rng = np.random.default_rng(0)
        self.by_image: dict[int, list[np.ndarray]] = {}  # image index -> per defect instance (k, 2) pixel coordinates
        for i, im in enumerate(images):
            for k in range(1, len(im.boxes) + 1):
                b = im.boxes[k - 1][0]
                ys, xs = np.nonzero(im.instances[b.y0:b.y1, b.x0:b.x1] == k)
                if len(ys) == 0:
                    continue
                if len(ys) > max_points:
                    sel = pts_rng.choice(len(ys), max_points, replace=False)
                    ys, xs = ys[sel], xs[sel]
                self.by_image.setdefault(i, []).append(np.stack([ys + b.y0, xs + b.x0], 1))

    def window(self, rng: np.random.Generator, i: int, p_defect: float) -> tuple[int, int]:
        """(top, left) of one patch of image `i`: centred (with jitter) on a pixel of one of its defects with
        probability `p_defect` when it has any, else uniform."""
        P = self.patch
        H, W = self.greys[i].shape
        pts_of = self.by_image.get(i)
        if pts_of and rng.random() < p_defect:
            pts = pts_of[int(rng.integers(len(pts_of)))]
            cy, cx = pts[int(rng.integers(len(pts)))]
            j = P // 4
            y = int(cy) - P // 2 + int(rng.integers(-j, j + 1))
            x = int(cx) - P // 2 + int(rng.integers(-j, j + 1))
        else:
            y, x = int(rng.integers(0, H - P + 1)), int(rng.integers(0, W - P + 1))
        return int(np.clip(y, 0, H - P)), int(np.clip(x, 0, W - P))

    def batch(self, rng: np.random.Generator, idx: Sequence[int], p_defect: float, stride: int, lam: float,
              floor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of the images `idx` (one each: geometric + photometric augmentation) and their per-cell severity
        labels (`severity_labels` with truncation `lam` and defect floor `floor`)."""
        imgs, labels = [], []
        P = self.patch
        for i in idx:
            i = int(i)
            y, x = self.window(rng, i, p_defect)
            im, m = geometric(rng, self.greys[i][y:y + P, x:x + P], self.masks[i][y:y + P, x:x + P])
            im = photometric(rng, im)
            imgs.append(im)
            labels.append(severity_labels(im, m, cell=stride, lam=lam, min_defect_severity=floor))
        return (torch.from_numpy(np.stack(imgs)).float().unsqueeze(1),
                torch.from_numpy(np.stack(labels)).unsqueeze(1))


def _severity_px(model: torch.nn.Module, greys: Sequence[np.ndarray], chunk: int = 4) -> list[np.ndarray]:
    """Pixel severity maps, a few images at a time (validation sets may hold large images)."""
    stride = int(model.stride)
    device = str(next(model.parameters()).device)
    out: list[np.ndarray] = []
    for i in range(0, len(greys), chunk):
        part = list(greys[i:i + chunk])
        out.extend(upsample_severity(c, stride, g.shape) for c, g in zip(infer_severity(model, part, device=device),
                                                                         part))
    return out


def validate_detector(model: torch.nn.Module, val: Sequence[PreparedImage]) -> tuple[float, float]:
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


def tune_postprocess_on_images(inspector: Any, images: Sequence[PreparedImage], grid: dict | None = None,
                               progress: bool = False) -> Any:
    """Choose T and the other post-processing settings of a `SeverityInspector` on annotated
    images by mean IoU (`SeverityInspector.tune_threshold` over `POSTPROCESS_GRID`; `progress`: a bar)."""
    g = dict(POSTPROCESS_GRID if grid is None else grid)
    return inspector.tune_threshold([im.grey for im in images], [im.mask for im in images], progress=progress, **g)


def detector_only_inspector(model: torch.nn.Module, det_info: CheckpointInfo, names: Sequence[str]) -> Any:
    stand_in = CheckpointInfo(path="", kind="classifier", model_version="accept-all", content_hash="",
                              arch="accept-all", arch_config={}, input_spec={}, class_names=list(names))
    return SeverityInspector(model, det_info, _AcceptAll(len(names)), stand_in, device="cpu")


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


def region_samples(rng: np.random.Generator, images: Sequence[PreparedImage], cfg: Any,
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


def accuracies(model: torch.nn.Module, X: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy = mean recall over the classes present) of `model` on crops."""
    if len(X) == 0:
        return 0.0, 0.0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        dev = next(model.parameters()).device
        pred = torch.cat([model(torch.from_numpy(X[i:i + 256]).to(dev)).logits.argmax(1).cpu()
                          for i in range(0, len(X), 256)]).numpy()
    model.train(was_training)
    recalls = [float((pred[Y == c] == c).mean()) for c in np.unique(Y)]
    return float((pred == Y).mean()), float(np.mean(recalls))


def load_detector(path: str) -> tuple[tuple[torch.nn.Module, float, dict], CheckpointInfo]:
    ck = load_checkpoint(path, expected_kind="detector")
    dm = build_detector(ck.info.arch, **ck.info.arch_config)
    dm.load_state_dict(ck.state_dict)
    dm.eval()
    thr = float(ck.info.threshold if ck.info.threshold is not None else 6.0)
    return (dm, thr, dict(ck.info.postprocess)), ck.info


