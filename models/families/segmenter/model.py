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
           "prepare_frame", "class_regions", "class_mask", "segment_probabilities", "coarse_probabilities", "CoarseProbs", "PAD_MULTIPLE",
           "frame_probabilities", "DEFAULT_DECODER", "LEGACY_DECODER", "decoder_config"]

PAD_MULTIPLE = 32


class SegOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1 + n_classes, H, W); channel 0 = background
    image_logit: torch.Tensor  # (B,) defect / no-defect


class _ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (the Res-U-Net's decoder stage)."""

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


class _SepBlock(_ResBlock):
    """Depthwise-separable residual stage: 1x1 to `cout`, 3x3 depthwise, 1x1; about 1/7 of `_ResBlock`'s
    multiply-adds at the same widths (the MobileNet-style decoder stage)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))


DECODER_BLOCKS = {"res": _ResBlock, "sep": _SepBlock}
# The decoder a checkpoint without these keys was trained with (four residual stages up to stride 2).
LEGACY_DECODER = {"decoder": [128, 64, 48, 32], "out_stride": 2, "block": "res"}
# The default since the speed work (models/README.md, "Segmenter cost"): three depthwise-separable stages up
# to stride 4, logits upsampled from there; 7.3 instead of 19.4 GFLOP per 1600x256 frame.
DEFAULT_DECODER = {"decoder": [128, 64, 48], "out_stride": 4, "block": "sep"}
_STRIDE_STAGES = {16: 1, 8: 2, 4: 3, 2: 4}


class LiteUNet(nn.Module):
    """U-Net on Lite0: decoder stages from stride 32 up to `out_stride` (16, 8, 4 or 2), one per width in
    `decoder`, each a `block` ("res": two 3x3 convolutions, "sep": depthwise-separable); per-pixel logits at
    `out_stride` (`coarse_logits`), bilinearly upsampled to the input in `forward` (training)."""

    def __init__(self, n_classes: int, pretrained: bool = False, decoder: Sequence[int] = (128, 64, 48, 32),
                 out_stride: int = 2, block: str = "res") -> None:
        super().__init__()
        if out_stride not in _STRIDE_STAGES:
            raise ValueError(f"segmenter out_stride must be one of {sorted(_STRIDE_STAGES)}, got {out_stride}")
        if block not in DECODER_BLOCKS:
            raise ValueError(f"segmenter decoder block must be one of {sorted(DECODER_BLOCKS)}, got {block!r}")
        n = _STRIDE_STAGES[out_stride]
        d = [int(v) for v in decoder]
        if len(d) != n:
            raise ValueError(f"a decoder up to stride {out_stride} has {n} stages, got widths {d}")
        self.n_classes = int(n_classes)
        self.encoder = build_lite0_encoder(pretrained=pretrained)
        c = LITE0_CHANNELS
        skips = (c[3], c[2], c[1], c[0])[:n]
        make = DECODER_BLOCKS[block]
        cin = [c[4]] + d[:-1]
        self.up = nn.ModuleList([make(cin[i] + skips[i], d[i]) for i in range(n)])
        self.head = nn.Conv2d(d[-1], 1 + self.n_classes, 1)
        self.image_head = nn.Linear(c[4], 1)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(x)
        y = f[4]
        for block, skip in zip(self.up, (f[3], f[2], f[1], f[0])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        return self.head(y), f[4]

    def coarse_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + C, H / out_stride, W / out_stride) logits: what the Inspector runs (and exports)."""
        return self._decode(x)[0]

    def forward(self, x: torch.Tensor) -> SegOutput:
        logits, deep = self._decode(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return SegOutput(logits, self.image_head(deep.mean((2, 3))).squeeze(1))


def decoder_config(arch_config: dict) -> dict:
    """decoder / out_stride / block of a checkpoint's arch_config (older checkpoints: `LEGACY_DECODER`)."""
    return {"decoder": [int(v) for v in arch_config.get("decoder", LEGACY_DECODER["decoder"])],
            "out_stride": int(arch_config.get("out_stride", LEGACY_DECODER["out_stride"])),
            "block": str(arch_config.get("block", LEGACY_DECODER["block"]))}


class _Coarse(nn.Module):
    """The exported network: input -> coarse logits (the probabilities are upsampled after the softmax)."""

    def __init__(self, model: LiteUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.coarse_logits(x)


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


def class_mask(probs: np.ndarray, c: int, threshold: float) -> np.ndarray:
    """Pixels whose argmax class is `c` (ties go to the lower index, as `argmax`) and p_c >= threshold."""
    pc = probs[c]
    m = pc >= threshold
    for j in range(probs.shape[0]):
        if j != c:
            m &= (pc > probs[j]) if j < c else (pc >= probs[j])
    return m


def class_regions(probs: np.ndarray, post: SegPostprocess,
                  classes: Sequence[int] | None = None) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class id >= 1, component label image, stats) per class from (1 + C, H, W) probabilities; `classes`
    (default all) limits the classes looked at (those that can pass their threshold at all)."""
    out = []
    for c in (range(1, probs.shape[0]) if classes is None else classes):
        m = class_mask(probs, c, post.thresholds[c - 1])
        if not m.any():
            continue
        n, lab, stats, _ = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=8)
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


class CoarseProbs(NamedTuple):
    """Softmax probabilities at the logits' resolution for one frame, and what maps them onto it."""

    probs: np.ndarray  # (h', w', 1 + C) float32, h' = padded height / stride
    padded_hw: tuple[int, int]  # the network input's size (scaled frame, padded to 32)
    frame_hw: tuple[int, int]
    scale: float

    def full(self, channels: slice = slice(None)) -> np.ndarray:
        """(K, H, W) probabilities at the frame's own pixels (bilinear), of `channels` (default all)."""
        return _to_frame(np.ascontiguousarray(self.probs[:, :, channels]), self.padded_hw, self.frame_hw, self.scale)


@torch.inference_mode()
def coarse_probabilities(run: Callable[[torch.Tensor], torch.Tensor], frames: Sequence[np.ndarray],
                         scale: float = 1.0, device: str = "cpu", batch: int = 8) -> list[CoarseProbs]:
    """Per frame, class probabilities at the network's output resolution: frames are scaled, padded to a
    multiple of 32, batched by padded size, run through `run` (input -> per-pixel logits at the input's
    size or a stride of it: the network or an ONNX session), and the softmax taken there."""
    amp = device.startswith("cuda")
    prepared = [prepare_frame(f, scale) for f in frames]
    out: list[CoarseProbs | None] = [None] * len(frames)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prepared):
        by_shape.setdefault(p.shape[:2], []).append(i)
    for shape, idx in by_shape.items():
        for k in range(0, len(idx), batch):
            chunk = idx[k:k + batch]
            x = to_input([prepared[i] for i in chunk], device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = run(x)
            probs = logits.float().softmax(1).permute(0, 2, 3, 1).cpu().numpy()  # (B, h', w', 1 + C)
            for i, pr in zip(chunk, probs):
                out[i] = CoarseProbs(pr, tuple(shape), tuple(np.asarray(frames[i]).shape[:2]), scale)
    return out  # type: ignore[return-value]


def segment_probabilities(run: Callable[[torch.Tensor], torch.Tensor], frames: Sequence[np.ndarray],
                          scale: float = 1.0, device: str = "cpu", batch: int = 8) -> list[np.ndarray]:
    """(1 + C, H, W) float32 class probabilities per frame at the frame's own size (`coarse_probabilities`,
    upsampled bilinearly, cropped and scaled back)."""
    return [c.full() for c in coarse_probabilities(run, frames, scale, device, batch)]


def _resize(p: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel centres, as torch's align_corners=False) resize of (h, w, K) float32."""
    if p.shape[:2] == tuple(size_hw):
        return p
    k = p.shape[2]
    if k <= 4:
        return cv2.resize(p, (size_hw[1], size_hw[0]), interpolation=cv2.INTER_LINEAR).reshape(*size_hw, k)
    return np.concatenate([_resize(p[:, :, j:j + 4], size_hw) for j in range(0, k, 4)], 2)


def _to_frame(probs: np.ndarray, padded_hw: tuple[int, int], shape: tuple[int, int], scale: float) -> np.ndarray:
    """(h', w', K) probabilities of a padded input (h' = padded height / stride) -> (K, H, W) at the frame."""
    h, w = shape
    sh, sw = (h, w) if scale == 1.0 else (max(1, round(h * scale)), max(1, round(w * scale)))
    p = _resize(probs, padded_hw)[:sh, :sw]
    if (sh, sw) != (h, w):
        p = _resize(np.ascontiguousarray(p), (h, w))
    return np.ascontiguousarray(p.transpose(2, 0, 1))


def frame_probabilities(model: "LiteUNet", samples: Sequence[InspectionSample], scale: float, device: str):
    """Yield ((1 + C, H, W) probabilities at the frame's own size, class ids) as the Inspector sees them."""
    model.eval()
    for s in samples:
        img = s.image if s.image.ndim == 2 or s.image.shape[2] == 3 else s.image[:, :, 0]
        yield segment_probabilities(model.coarse_logits, [img], scale, device)[0], sample_class_mask(s)


class SegmenterInspector(RuntimeSwap):
    """A trained segmenter as an `Inspector` (models.core.types): frames -> per-class regions."""

    # onnxruntime-int8 quantises the whole graph: int8 in the encoder alone ("/encoder/") fails the parity gate on
    # NEU-Seg as the whole graph does (models/README.md), and is slower
    int8_scope: str | None = None

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
        self._coarse = _Coarse(self.model)  # one module: runners and networks() share its identity
        self._run: Runner = TorchRunner(Select(self._coarse))
        self._lock = threading.Lock()

    def networks(self) -> dict[str, Network]:
        """The U-Net (-> per-pixel logits) as an exportable network with its golden input."""
        g = golden_frame((64, 96))
        x = to_input([g, np.ascontiguousarray(g[:, ::-1])], "cpu").numpy()
        return {"segmenter": Network(Path(self.info.path), self.info.content_hash, Select(self._coarse),
                                     x, (1, 3, 64, 64), int8_scope=self.int8_scope)}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "SegmenterInspector":
        """Load a `segmenter.pt` (hash verified). Raises CheckpointError."""
        ck = load_checkpoint(path, expected_kind="segmenter")
        cfg = dict(ck.info.arch_config)
        try:
            model = LiteUNet(int(cfg["n_classes"]), pretrained=False, **decoder_config(cfg))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the segmenter architecture: {exc}") from exc
        return cls(model, ck.info, device)

    def probabilities(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """(1 + C, H, W) float32 class probabilities per frame, at the frame's own size."""
        with self._lock:
            return segment_probabilities(self._run, frames, self.scale, self.device, self.batch)

    def detections(self, probs: np.ndarray, classes: Sequence[int] | None = None) -> list[Detection]:
        """Regions of one frame's probabilities as Detections (confidence = mean class probability); `classes`
        (default all) as in `class_regions`."""
        dets: list[Detection] = []
        for c, lab, stats in class_regions(probs, self.post, classes):
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
        return SegmenterInspector._score_from_background(probs[0])

    @staticmethod
    def _score_from_background(p0: np.ndarray) -> float:
        d = p0.reshape(-1)
        k = min(16, d.size)
        return float(1.0 - np.partition(d, k - 1)[:k].mean())

    def possible_classes(self, coarse: CoarseProbs) -> list[int]:
        """Classes that can pass their threshold anywhere in the frame. Bilinear upsampling only averages
        neighbouring values, so a class whose coarse maximum is below its threshold has no pixel above it at
        the frame's resolution either: such frames (most frames on a line) skip the full-resolution work."""
        peak = coarse.probs.reshape(-1, coarse.probs.shape[-1]).max(0)
        return [c for c in range(1, len(peak)) if peak[c] >= self.post.thresholds[c - 1]]

    def _inspect_one(self, coarse: CoarseProbs) -> tuple[list[Detection], float]:
        classes = self.possible_classes(coarse)
        if not classes:
            return [], self._score_from_background(coarse.full(slice(0, 1))[0])
        probs = coarse.full()
        return self.detections(probs, classes), self.image_score(probs)

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        if not len(frames):
            return [], []
        with self._lock:
            coarse = coarse_probabilities(self._run, frames, self.scale, self.device, self.batch)
        out = [self._inspect_one(c) for c in coarse]
        return [d for d, _ in out], [sc for _, sc in out]

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per frame, in input order (frames of any size, grey or RGB uint8)."""
        return self.inspect_scored(frames)[0]
