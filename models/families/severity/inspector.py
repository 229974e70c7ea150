"""The Inspector: detector -> threshold T -> 4-px joining -> classifier vote -> `Detection`s.

This is the serving side the streaming layer calls (from one executor thread): load once,
then `inspect(frames)` per micro-batch. Pure PyTorch + OpenCV, no I/O besides loading the
checkpoints.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np
import torch

from models.core.checkpoints import DEFAULT_CHECKPOINT_DIR, CheckpointError, CheckpointInfo, load_checkpoint
from models.core.regions import Region, image_iou, regions_from_severity, upsample_severity
from models.core.types import BBox, Detection
from models.families.severity.detector import build_detector, infer_severity
from models.families.severity.region_classifier import build_classifier, region_crops
from models.runtime.runtimes import Network, Runner, Select, TorchRunner, golden_frame
from models.runtime.swap import RuntimeSwap

__all__ = ["SeverityInspector", "TunedPostprocess", "DEFAULT_CHECKPOINT_DIR", "resolve_checkpoints"]



def resolve_checkpoints(path: str | Path | None, detector_arch: str | None = None) -> tuple[Path, Path]:
    """(detector .pt, classifier .pt) from a directory, a detector file, or None (packaged).

    In a directory the detector is `detector_<arch>.pt` (fast preferred when not specified).
    """
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT_DIR
    if p.is_file():
        det, cls = p, p.parent / "classifier.pt"
    else:
        archs = [detector_arch] if detector_arch else ["fast", "paper"]
        cands = [p / f"detector_{a}.pt" for a in archs]
        found = [c for c in cands if c.is_file()]
        if not found:
            raise CheckpointError(f"no detector checkpoint ({', '.join(c.name for c in cands)}) in {p}")
        det, cls = found[0], p / "classifier.pt"
    if not cls.is_file():
        raise CheckpointError(f"no classifier checkpoint {cls}")
    return det, cls


class TunedPostprocess(NamedTuple):
    """Post-processing chosen on validation frames (stored in the detector checkpoint)."""

    threshold: float  # T on the severity map (seeds)
    relative: float  # per-region cut at this fraction of the region's peak (0 = none)
    low: float  # hysteresis: regions grow over pixels above low x T (1 = none)
    hole_area: int  # enclosed holes up to this many px are filled (0 = none)
    flip_tta: bool  # mean of the maps of the frame and its mirrors
    mean_iou: float  # validation mean IoU of the whole pipeline with these settings

    def postprocess(self) -> dict:
        """The checkpoint's `postprocess` entry (T is stored apart, as `threshold`)."""
        return {"relative": self.relative, "low": self.low, "hole_area": self.hole_area, "flip_tta": self.flip_tta}


def _mean_iou(dets: Sequence[Sequence[Detection]], gt_masks: Sequence[np.ndarray]) -> float:
    """Mean defect IoU over the frames where detections or ground truth hold a defect (1 if none)."""
    ious = []
    for ds, gt in zip(dets, gt_masks):
        pm = np.zeros(gt.shape, bool)
        for d in ds:
            pm[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] |= d.mask
        v = image_iou(pm, gt > 0)
        if v is not None:
            ious.append(v)
    return float(np.mean(ious)) if ious else 1.0


def _severity_of(out: Any) -> torch.Tensor:
    return out.severity


def _probs_of(out: Any) -> torch.Tensor:
    return out.probs


def _to_grey(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        g = frame
    elif frame.ndim == 3 and frame.shape[2] == 3:
        g = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    elif frame.ndim == 3 and frame.shape[2] == 1:
        g = frame[:, :, 0]
    else:
        raise ValueError(f"frame must be (H, W) or (H, W, 3) uint8, got shape {frame.shape}")
    if g.dtype != np.uint8:
        raise ValueError(f"frame must be uint8, got {g.dtype}")
    return np.ascontiguousarray(g)


class SeverityInspector(RuntimeSwap):
    """He & Liu's pipeline as an `Inspector` (models.core.types): batch defect inspection of decoded frames.

    Attributes:
        model_version: "<detector version>+<classifier version>" (content-hash based).
        class_names: defect classes the classifier can report (never "background").
        device: "cuda" or "cpu".
        threshold: T on the severity map.
    """

    family = "severity"
    _runners = {"detector": "_run_detector", "classifier": "_run_classifier"}  # RuntimeSwap.use_runtime

    def __init__(self, detector: torch.nn.Module, det_info: CheckpointInfo, classifier: torch.nn.Module,
                 cls_info: CheckpointInfo, device: str, min_area: int = 12, max_crops: int = 512) -> None:
        self.detector = detector.to(device).eval()
        self.classifier = classifier.to(device).eval()
        self.det_info, self.cls_info = det_info, cls_info
        self.device = device
        self.amp = device.startswith("cuda")
        self.threshold = float(det_info.threshold if det_info.threshold is not None else 1.0)
        self.class_names = list(cls_info.class_names)
        self.model_version = f"{det_info.model_version}+{cls_info.model_version}"
        self.min_area = min_area
        self.max_crops = max_crops
        self.relative = float(det_info.postprocess.get("relative", 0.0))
        self.low = float(det_info.postprocess.get("low", 1.0))
        self.hole_area = int(det_info.postprocess.get("hole_area", 0))
        self.flip_tta = bool(det_info.postprocess.get("flip_tta", False))
        self.in_channels = int(det_info.input_spec.get("channels", 1))
        self.runtime = "torch"
        self._run_detector: Runner = TorchRunner(Select(self.detector, _severity_of))
        self._run_classifier: Runner = TorchRunner(Select(self.classifier, _probs_of))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | None = None, device: str = "auto", detector_arch: str | None = None) -> "SeverityInspector":
        """Load and validate detector + classifier checkpoints.

        Args:
            path: checkpoint directory (detector_<arch>.pt + classifier.pt), a detector .pt next
                to a classifier.pt, or None for the packaged defaults in models/checkpoints/.
            device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
            detector_arch: "fast" or "paper" when a directory holds both.
        Raises:
            CheckpointError: missing files, hash mismatch, wrong kind or class names disagreeing.
        """
        det_p, cls_p = resolve_checkpoints(path, detector_arch)
        det = load_checkpoint(det_p, expected_kind="detector")
        clf = load_checkpoint(cls_p, expected_kind="classifier")
        if det.info.class_names != clf.info.class_names:
            raise CheckpointError(f"detector {det_p} and classifier {cls_p} disagree on class names")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dm = build_detector(det.info.arch, **det.info.arch_config)
        dm.load_state_dict(det.state_dict)
        cm = build_classifier(**clf.info.arch_config)
        cm.load_state_dict(clf.state_dict)
        return cls(dm, det.info, cm, clf.info, device)

    def networks(self) -> dict[str, Network]:
        """The detector and the region classifier as exportable single-output networks with golden inputs."""
        g = golden_frame((64, 96)).astype(np.float32)
        det_in = np.stack([g, g[:, ::-1]])[:, None]
        det_in = np.repeat(det_in, self.in_channels, 1) if self.in_channels != 1 else det_in
        crops = np.concatenate([region_crops(g.astype(np.uint8), np.abs(g - np.median(g)) > 20, BBox(x, 0, x + 64, 64))
                                for x in (0, 32)])
        return {
            "detector": Network(Path(self.det_info.path), self.det_info.content_hash,
                                Select(self.detector, _severity_of), np.ascontiguousarray(det_in, np.float32),
                                (1, self.in_channels, 32, 64)),
            "classifier": Network(Path(self.cls_info.path), self.cls_info.content_hash,
                                  Select(self.classifier, _probs_of), crops, (3, crops.shape[1], 64, 64)),
        }

    @property
    def report_label(self) -> str:
        """How an evaluation report names this model: the family and the detector's arch."""
        return f"{self.family}, {self.det_info.arch}"

    def severity_maps(self, greys: Sequence[np.ndarray], flip_tta: bool | None = None) -> list[np.ndarray]:
        """Pixel severity maps (H, W) in [0, 12] for grey uint8 frames.

        With flip test-time augmentation (`flip_tta`, default: the checkpoint's setting) the map
        is the mean of the detector's maps of the frame, its left-right and its up-down mirror
        (3 detector passes): texture noise that does not survive mirroring averages out.
        """
        flip = self.flip_tta if flip_tta is None else flip_tta
        maps = self._severity_once(greys)
        if not flip:
            return maps
        # mirrored views, not copies: the batch assembly (np.stack) copies them once anyway
        lr = self._severity_once([g[:, ::-1] for g in greys])
        ud = self._severity_once([g[::-1, :] for g in greys])
        return [(a + b[:, ::-1] + c[::-1, :]) * np.float32(1.0 / 3.0) for a, b, c in zip(maps, lr, ud)]

    def _severity_once(self, greys: Sequence[np.ndarray]) -> list[np.ndarray]:
        stride = int(self.detector.stride)
        imgs = list(greys) if self.in_channels == 1 else [np.repeat(g[:, :, None], 3, 2) for g in greys]
        cells = infer_severity(self.detector, imgs, self.device, self.amp, run=self._run_detector)
        return [upsample_severity(c, stride, g.shape) for c, g in zip(cells, greys)]

    @torch.inference_mode()
    def _classify(self, crops: list[np.ndarray]) -> np.ndarray:
        x = torch.from_numpy(np.concatenate(crops)).to(self.device)
        out = []
        for i in range(0, len(x), self.max_crops):
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.amp):
                out.append(self._run_classifier(x[i:i + self.max_crops]).float().cpu())
        return torch.cat(out).numpy()

    def tune_threshold(self, frames: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray],
                       candidates: Sequence[float] | None = None,
                       relatives: Sequence[float] = (0.0,), lows: Sequence[float] = (1.0,),
                       hole_areas: Sequence[int] = (0,), flip_ttas: Sequence[bool] = (False,),
                       progress: bool = False) -> TunedPostprocess:
        """Set and return the post-processing maximising mean IoU of the whole pipeline
        (classifier included) on validation frames.

        Args:
            frames: validation frames; gt_masks: their annotations (> 0 = defect).
            candidates: thresholds T to try; relatives: per-region fractions of peak to try;
            lows: hysteresis low thresholds (fractions of T; 1 = none) to try;
            hole_areas: largest enclosed holes filled in region masks (px; 0 = none) to try,
            each at the best (T, relative, low) found with the first of them;
            flip_ttas: with/without flip test-time augmentation (each gets the full search).
            progress: show a progress bar over the settings tried (minutes on a large validation set).
        Returns:
            the chosen settings and their mean IoU (over images where prediction or GT holds a
            defect); the Inspector uses them from then on.
        """
        cands = list(candidates) if candidates is not None else [0.5 * i for i in range(1, 21)]
        greys = [_to_grey(np.asarray(f)) for f in frames]
        best = TunedPostprocess(self.threshold, self.relative, self.low, self.hole_area, self.flip_tta, -1.0)
        from tqdm import tqdm

        total = len(flip_ttas) * (len(cands) * len(relatives) * len(lows) + max(0, len(hole_areas) - 1))
        bar = tqdm(total=total, desc=f"post-processing on {len(greys)} images", unit="setting", disable=not progress,
                   mininterval=1.0, dynamic_ncols=True)
        with bar, self._lock, torch.inference_mode():
            for flip in flip_ttas:
                sev = self.severity_maps(greys, flip_tta=bool(flip))
                cache: dict = {}  # many settings give identical regions: classify each distinct one once

                def mean_iou(t: float, rel: float, lo: float, holes: int) -> float:
                    return _mean_iou(self._detections(greys, sev, t, rel, lo, cache, holes), gt_masks)

                holes0 = int(hole_areas[0])
                here = TunedPostprocess(self.threshold, self.relative, self.low, holes0, bool(flip), -1.0)
                for t, rel, lo in [(t, r, lo) for t in cands for r in relatives for lo in lows]:
                    m = mean_iou(t, rel, lo, holes0)
                    bar.update(1)
                    if m > here.mean_iou:
                        here = here._replace(threshold=float(t), relative=float(rel), low=float(lo), mean_iou=m)
                for holes in hole_areas[1:]:
                    m = mean_iou(here.threshold, here.relative, here.low, int(holes))
                    bar.update(1)
                    if m > here.mean_iou:
                        here = here._replace(hole_area=int(holes), mean_iou=m)
                if here.mean_iou > best.mean_iou:
                    best = here
        self.threshold, self.relative, self.low = best.threshold, best.relative, best.low
        self.hole_area, self.flip_tta = best.hole_area, best.flip_tta
        return best

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        """`inspect` plus a per-frame score: the highest confidence of its detections (0 when none)."""
        dets = self.inspect(frames)
        return dets, [max((d.confidence for d in ds), default=0.0) for ds in dets]

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per frame, in input order.

        Args:
            frames: decoded uint8 frames, (H, W) grey or (H, W, 3) RGB; sizes may differ.
        Returns:
            one list of `Detection` per frame (empty when nothing is found); regions the
            classifier calls background are dropped as false positives.
        Raises:
            ValueError: a frame that is not a 2-D/3-D uint8 array.
        """
        greys = [_to_grey(np.asarray(f)) for f in frames]
        if not greys:
            return []
        with self._lock, torch.inference_mode():
            sev = self.severity_maps(greys)
            return self._detections(greys, sev, self.threshold, self.relative, self.low, hole_area=self.hole_area)

    def _detections(self, greys: Sequence[np.ndarray], sev: Sequence[np.ndarray], threshold: float,
                    relative: float = 0.0, low: float = 1.0, cache: dict | None = None,
                    hole_area: int = 0) -> list[list[Detection]]:
        """Regions seeded above `threshold`, grown above `low` x threshold, masks cut at `relative`
        x peak, holes up to `hole_area` px filled; classified; background dropped. `cache` (frame index, box, mask) -> vote lets
        repeated calls over the same frames classify each distinct region once."""
        per_frame: list[list[Region]] = [regions_from_severity(s, threshold, self.min_area, relative=relative, low=low,
                                                               hole_area=hole_area)
                                         for s in sev]
        crops, owners, keys = [], [], []
        for fi, (g, regs) in enumerate(zip(greys, per_frame)):
            for ri, r in enumerate(regs):
                # a 16-byte digest of the mask, not the mask: a search over hundreds of settings on a large
                # validation set keeps one key per distinct region
                key = ((fi, tuple(r.bbox), hashlib.blake2b(np.packbits(r.mask).tobytes(), digest_size=16).digest())
                       if cache is not None else None)
                keys.append(key)
                if key is not None and key in cache:
                    owners.append((fi, ri, 0))
                    continue
                c = region_crops(g, None, r.bbox, r.mask)
                crops.append(c)
                owners.append((fi, ri, len(c)))
        probs = self._classify(crops) if crops else np.zeros((0, len(self.class_names) + 1), np.float32)
        out: list[list[Detection]] = [[] for _ in greys]
        k = 0
        for (fi, ri, n), key in zip(owners, keys):
            if n == 0:
                p = cache[key]
            else:
                p = probs[k:k + n].mean(axis=0)
                k += n
                if key is not None:
                    cache[key] = p
            c = int(np.argmax(p))
            if c == 0:
                continue  # background: a false positive removed by the classifier
            r = per_frame[fi][ri]
            defect_p = p[1:] / max(float(p[1:].sum()), 1e-9)
            out[fi].append(Detection(
                bbox=r.bbox, mask=r.mask, defect_class=self.class_names[c - 1], confidence=float(p[c]),
                severity_mean=r.severity_mean, severity_max=r.severity_max, area_px=r.area_px,
                class_scores=tuple(float(v) for v in defect_p),
            ))
        return out
