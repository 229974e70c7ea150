"""Segmenter family: a residual U-Net decoder on the EfficientNet-Lite0 encoder, per-pixel N classes.

The seed is the ResNet gate + Res-U-Net of the Severstal write-ups: an ImageNet-pretrained encoder,
a U-Net decoder whose stages are residual blocks, one logit per class + background at every pixel
and an image-level defect logit from the deepest features. Regions are the 8-connected
components of each class's pixels (argmax class and probability >= that class's threshold) of at
least the class's minimum area; thresholds and areas are chosen on validation images
(`choose_postprocess`) and stored in the checkpoint.

Frames of any size: the Inspector scales them by the checkpoint's `scale`, pads to a multiple of
32 (reflection), and maps the probabilities back to the frame's own pixels.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.backbone import LITE0_CHANNELS, build_lite0_encoder, to_input
from models.core.checkpoints import CheckpointError, CheckpointInfo, load_checkpoint
from models.core.types import BBox, Detection, InspectionSample
from models.data.datasets import sample_class_mask
from models.runtime.runtimes import Network, Runner, Select, TorchRunner, golden_frame
from models.runtime.swap import RuntimeSwap

__all__ = ["LiteUNet", "SegOutput", "SegmenterInspector", "SegPostprocess", "choose_postprocess",
           "prepare_frame", "class_regions", "segment_probabilities", "PAD_MULTIPLE",
           "frame_probabilities"]

PAD_MULTIPLE = 32


class SegOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1 + n_classes, H, W); channel 0 = background
    image_logit: torch.Tensor  # (B,) defect / no-defect


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                                    nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class LiteUNet(nn.Module):
    """U-Net with residual decoder blocks on Lite0; logits at stride 2, upsampled to the input."""

    def __init__(self, n_classes: int, pretrained: bool = False, decoder: Sequence[int] = (128, 64, 48, 32)) -> None:
        super().__init__()
        self.n_classes = int(n_classes)
        self.encoder = build_lite0_encoder(pretrained=pretrained)
        c = LITE0_CHANNELS
        d = list(decoder)
        self.up = nn.ModuleList([
            _ResBlock(c[4] + c[3], d[0]),  # /16
            _ResBlock(d[0] + c[2], d[1]),  # /8
            _ResBlock(d[1] + c[1], d[2]),  # /4
            _ResBlock(d[2] + c[0], d[3]),  # /2
        ])
        self.head = nn.Conv2d(d[3], 1 + self.n_classes, 1)
        self.image_head = nn.Linear(c[4], 1)

    def forward(self, x: torch.Tensor) -> SegOutput:
        f = self.encoder(x)
        y = f[4]
        for block, skip in zip(self.up, (f[3], f[2], f[1], f[0])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        logits = F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return SegOutput(logits, self.image_head(f[4].mean((2, 3))).squeeze(1))


def _logits_of(out: SegOutput) -> torch.Tensor:
    return out.logits


def prepare_frame(frame: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """uint8 grey/RGB frame -> scaled and reflection-padded to a multiple of 32 (H, W[, 3])."""
    im = np.asarray(frame)
    if im.dtype != np.uint8 or im.ndim not in (2, 3) or (im.ndim == 3 and im.shape[2] not in (1, 3)):
        raise ValueError(f"frame must be uint8 (H, W) or (H, W, 3), got {im.dtype} {im.shape}")
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[:, :, 0]
    if scale != 1.0:
        h, w = im.shape[:2]
        im = cv2.resize(im, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    h, w = im.shape[:2]
    ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    if ph or pw:
        mode = cv2.BORDER_REFLECT_101 if h > 1 and w > 1 else cv2.BORDER_REPLICATE
        im = cv2.copyMakeBorder(im, 0, ph, 0, pw, mode)
    return np.ascontiguousarray(im)


class SegPostprocess(NamedTuple):
    """Per-class probability thresholds and minimum region areas (frame pixels)."""

    thresholds: tuple[float, ...]
    min_areas: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"class_thresholds": list(self.thresholds), "min_areas": list(self.min_areas)}

    @classmethod
    def from_dict(cls, d: dict, n_classes: int) -> "SegPostprocess":
        t = d.get("class_thresholds") or [0.5] * n_classes
        a = d.get("min_areas") or [0] * n_classes
        return cls(tuple(float(v) for v in t), tuple(int(v) for v in a))


def class_regions(probs: np.ndarray, post: SegPostprocess) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class id >= 1, component label image, stats) per class from (1 + C, H, W) probabilities."""
    arg = probs.argmax(0)
    out = []
    for c in range(1, probs.shape[0]):
        m = (arg == c) & (probs[c] >= post.thresholds[c - 1])
        if not m.any():
            continue
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= max(1, post.min_areas[c - 1])
        keep[0] = False
        if keep.any():
            out.append((c, lab if keep.all() else np.where(keep[lab], lab, 0), np.where(keep[:, None], stats, 0)))
    return out


def choose_postprocess(probs_iter, n_classes: int,
                       thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95),
                       areas: Sequence[int] = (0, 8, 16, 32, 64, 128)) -> tuple[SegPostprocess, list[float]]:
    """Per class, the (threshold, minimum area) maximising that class's pixel IoU over validation images.

    Args:
        probs_iter: iterable of ((1 + C, H, W) float probabilities, (H, W) int ground-truth class ids).
    Returns:
        the chosen settings and each class's validation IoU with them. Classes absent from the
        validation ground truth keep (0.5, 0).
    """
    T, A = len(thresholds), len(areas)
    inter = np.zeros((n_classes, T, A))
    union = np.zeros((n_classes, T, A))
    gt_total = np.zeros(n_classes)
    for probs, gt in probs_iter:
        arg = probs.argmax(0)
        for c in range(1, n_classes + 1):
            g = gt == c
            gsum = int(g.sum())
            gt_total[c - 1] += gsum
            base = arg == c
            for ti, t in enumerate(thresholds):
                m = base & (probs[c] >= t)
                if not m.any():
                    union[c - 1, ti, :] += gsum
                    continue
                n, lab, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
                area = stats[:, cv2.CC_STAT_AREA]
                hit = np.bincount(lab[g], minlength=n)  # GT pixels per component
                for ai, a in enumerate(areas):
                    keep = area >= max(1, a)
                    keep[0] = False
                    i = int(hit[keep].sum())
                    p = int(area[keep].sum())
                    inter[c - 1, ti, ai] += i
                    union[c - 1, ti, ai] += p + gsum - i
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    ts, as_, best = [], [], []
    for c in range(n_classes):
        if gt_total[c] == 0:
            ts.append(0.5), as_.append(0), best.append(0.0)
            continue
        ti, ai = np.unravel_index(int(np.argmax(iou[c])), iou[c].shape)
        ts.append(float(thresholds[ti])), as_.append(int(areas[ai])), best.append(float(iou[c, ti, ai]))
    return SegPostprocess(tuple(ts), tuple(as_)), best


@torch.inference_mode()
def segment_probabilities(run: Callable[[torch.Tensor], torch.Tensor], frames: Sequence[np.ndarray],
                          scale: float = 1.0, device: str = "cpu", batch: int = 8) -> list[np.ndarray]:
    """(1 + C, H, W) float32 class probabilities per frame at the frame's own size: frames are
    scaled, padded to a multiple of 32, batched by padded size, run through `run` (input -> per-pixel
    logits: the module or an ONNX session), and the maps cropped and scaled back."""
    amp = device.startswith("cuda")
    prepared = [prepare_frame(f, scale) for f in frames]
    out: list[np.ndarray | None] = [None] * len(frames)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prepared):
        by_shape.setdefault(p.shape[:2], []).append(i)
    for idx in by_shape.values():
        for k in range(0, len(idx), batch):
            chunk = idx[k:k + batch]
            x = to_input([prepared[i] for i in chunk], device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = run(x)
            probs = logits.float().softmax(1).cpu().numpy()
            for i, pr in zip(chunk, probs):
                out[i] = _to_frame(pr, np.asarray(frames[i]).shape[:2], scale)
    return out  # type: ignore[return-value]


def _to_frame(probs: np.ndarray, shape: tuple[int, int], scale: float) -> np.ndarray:
    h, w = shape
    if scale == 1.0:
        return np.ascontiguousarray(probs[:, :h, :w])
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    p = probs[:, :sh, :sw].transpose(1, 2, 0)
    p = cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(p.reshape(h, w, -1).transpose(2, 0, 1))


def frame_probabilities(model: torch.nn.Module, samples: Sequence[InspectionSample], scale: float, device: str):
    """Yield ((1 + C, H, W) probabilities at the frame's own size, class ids) as the Inspector sees them."""
    model.eval()
    for s in samples:
        img = s.image if s.image.ndim == 2 or s.image.shape[2] == 3 else s.image[:, :, 0]
        yield segment_probabilities(lambda x: model(x).logits, [img], scale, device)[0], sample_class_mask(s)


class SegmenterInspector(RuntimeSwap):
    """A trained segmenter as an `Inspector` (models.core.types): frames -> per-class regions."""

    family = "segmenter"
    _runners = {"segmenter": "_run"}  # network -> runner attribute (RuntimeSwap.use_runtime)

    def __init__(self, model: LiteUNet, info: CheckpointInfo, device: str = "cpu", batch: int = 8) -> None:
        self.model = model.to(device).eval()
        self.info = info
        self.device = device
        self.model_version = info.model_version
        self.class_names = list(info.class_names)
        self.scale = float(info.input_spec.get("scale", 1.0))
        self.post = SegPostprocess.from_dict(info.postprocess, len(self.class_names))
        self.batch = batch
        self.amp = device.startswith("cuda")
        self.runtime = "torch"
        self._run: Runner = TorchRunner(Select(self.model, _logits_of))
        self._lock = threading.Lock()

    def networks(self) -> dict[str, Network]:
        """The U-Net (-> per-pixel logits) as an exportable network with its golden input."""
        g = golden_frame((64, 96))
        x = to_input([g, np.ascontiguousarray(g[:, ::-1])], "cpu").numpy()
        return {"segmenter": Network(Path(self.info.path), self.info.content_hash, Select(self.model, _logits_of),
                                     x, (1, 3, 64, 64))}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "SegmenterInspector":
        """Load a `segmenter.pt` (hash verified). Raises CheckpointError."""
        ck = load_checkpoint(path, expected_kind="segmenter")
        cfg = dict(ck.info.arch_config)
        model = LiteUNet(int(cfg["n_classes"]), pretrained=False, decoder=tuple(cfg.get("decoder", (128, 64, 48, 32))))
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the segmenter architecture: {exc}") from exc
        return cls(model, ck.info, device)

    def probabilities(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(1 + C, H, W) float32 class probabilities per frame, at the frame's own size."""
        with self._lock:
            return segment_probabilities(self._run, frames, self.scale, self.device, self.batch)

    def detections(self, probs: np.ndarray) -> list[Detection]:
        """Regions of one frame's probabilities as Detections (confidence = mean class probability)."""
        dets: list[Detection] = []
        for c, lab, stats in class_regions(probs, self.post):
            for k in np.nonzero(stats[:, cv2.CC_STAT_AREA])[0]:
                x, y, w, h, area = (int(v) for v in stats[k])
                m = lab[y:y + h, x:x + w] == k
                pc = probs[:, y:y + h, x:x + w][:, m]  # (1 + C, n)
                mean = pc.mean(1)
                defect = mean[1:] / max(float(mean[1:].sum()), 1e-9)
                conf = float(mean[c])
                dets.append(Detection(bbox=BBox(x, y, x + w, y + h), mask=m, defect_class=self.class_names[c - 1],
                                      confidence=conf, severity_mean=12.0 * conf,
                                      severity_max=12.0 * float(pc[c].max()), area_px=area,
                                      class_scores=tuple(float(v) for v in defect)))
        return dets

    @staticmethod
    def image_score(probs: np.ndarray) -> float:
        """Defect score of a frame: mean defect probability of its 16 most defective pixels."""
        d = 1.0 - probs[0].reshape(-1)
        k = min(16, d.size)
        return float(np.partition(d, d.size - k)[-k:].mean())

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        probs = self.probabilities(frames) if len(frames) else []
        return [self.detections(p) for p in probs], [self.image_score(p) for p in probs]

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per frame, in input order (frames of any size, grey or RGB uint8)."""
        return self.inspect_scored(frames)[0]
