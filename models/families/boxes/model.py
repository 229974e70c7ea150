"""The box detector: torchvision's RetinaNet (FPN P3-P7, focal loss) on the EfficientNet-Lite0 encoder; `BoxesInspector`.

Block et al. (IEEE TIE 2021) detect imprints with a RetinaNet and let tracking over the part's frames remove its
false alarms. Here `Lite0RetinaNet` is torchvision's `RetinaNet` with a backbone that returns an FPN over Lite0's
stride 8/16/32 stages (plus P6, P7), and anchors sized from the training boxes (`choose_anchors`, recorded in the
checkpoint's `arch_config`). Its own resize/normalise transform is bypassed: frames are prepared like every Lite0
family's (`to_input`; scaled by `input_spec["scale"]`, zero-padded to a multiple of 32), so that

- the exported network is the part that is a plain CNN: image -> (N, anchors, classes + 4) class logits and box
  deltas (`heads`), which ONNX Runtime serves with dynamic height and width;
- anchor generation, box decoding and NMS (`decode`: torchvision's `postprocess_detections`) run in Python after
  either runtime, the same code on the same numbers.

A box detector has no masks and no severity: its `Detection`s carry `mask=None`, `area_px=0` and severity 0
(never a filled box passed off as a mask); the tracker and the sink carry those through as they are.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from models.core.backbone import LITE0_CHANNELS, build_lite0_encoder, to_input
from models.core.checkpoints import CheckpointError, CheckpointInfo, load_checkpoint
from models.core.types import BBox, Detection
from models.runtime.runtimes import Network, Runner, TorchRunner, golden_frame
from models.runtime.swap import RuntimeSwap

__all__ = ["FILE", "KIND", "ARCH", "N_LEVELS", "PAD_MULTIPLE", "AnchorPlan", "choose_anchors", "Lite0FPN",
           "Lite0RetinaNet", "HeadsNet", "build_boxnet", "prepare_batch", "predict_boxes",
           "BoxesInspector"]

FILE = "boxes.pt"
KIND = "boxes"
ARCH = "lite0-retinanet"
N_LEVELS = 5  # P3..P7 (strides 8..128)
PAD_MULTIPLE = 32
SCORE_FLOOR = 0.05  # torchvision's score_thresh: what decoding keeps (mAP is computed over these)
FPN_CHANNELS = 64  # torchvision's RetinaNet uses 256 over ResNet-50; 64 keeps the heads CPU-sized over Lite0


class AnchorPlan(dict):
    """{"sizes": [[s, s r^(1/3), s r^(2/3)] per level], "aspect_ratios": [h/w, ...], "rule": ..., statistics}."""


def choose_anchors(wh: np.ndarray, levels: int = N_LEVELS) -> AnchorPlan:
    """Anchor sizes and aspect ratios from the training boxes' (width, height) in network-input pixels.

    Sizes: the 5th to 95th percentile of the boxes' scale sqrt(w h) spread geometrically over the `levels` pyramid
    levels (smallest on P3), each level with three sub-octave scales s, s r^(1/3), s r^(2/3) (r = the ratio between
    levels, at least 2^(1/3)); aspect ratios (h / w, torchvision's convention): the 10th, 50th and 90th percentile
    of the boxes' h / w, duplicates dropped. Without boxes, RetinaNet's defaults for a small image (32..512 is
    too large for defects: 16..256, ratios 0.5, 1, 2).

    Raises ValueError for a (w, h) array of another shape or with non-positive sides.
    """
    wh = np.asarray(wh, np.float64).reshape(-1, 2) if np.size(wh) else np.zeros((0, 2))
    if len(wh) and (wh <= 0).any():
        raise ValueError("box widths and heights must be positive")
    if len(wh) == 0:
        lo, hi, ratios, rule = 16.0, 256.0, [0.5, 1.0, 2.0], "no training boxes: 16..256 px, ratios 0.5, 1, 2"
        stats: dict[str, Any] = {"boxes": 0}
    else:
        s = np.sqrt(wh[:, 0] * wh[:, 1])
        ar = wh[:, 1] / wh[:, 0]
        lo, hi = float(np.quantile(s, 0.05)), float(np.quantile(s, 0.95))
        ratios = sorted({round(float(np.quantile(ar, q)), 2) for q in (0.1, 0.5, 0.9)})
        rule = ("scale sqrt(wh) 5th..95th percentile spread geometrically over P3..P7, 3 sub-octave scales each; "
                "aspect ratios h/w at the 10th/50th/90th percentile")
        stats = {"boxes": int(len(wh)), "scale_quantiles": {f"p{round(q * 100)}": round(float(np.quantile(s, q)), 1)
                                                            for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                 "aspect_quantiles": {f"p{round(q * 100)}": round(float(np.quantile(ar, q)), 3)
                                      for q in (0.1, 0.5, 0.9)}}
    hi = max(hi, lo * 1.01)
    r = max((hi / lo) ** (1.0 / max(1, levels - 1)), 2 ** (1.0 / 3.0))
    sizes = [[round(lo * r ** k * r ** (j / 3.0), 1) for j in range(3)] for k in range(levels)]
    rule += f" -> sizes {sizes[0][0]}..{sizes[-1][-1]} px (P3 {sizes[0]}, P7 {sizes[-1]}), aspect ratios {ratios}"
    return AnchorPlan(sizes=sizes, aspect_ratios=[float(a) for a in ratios], rule=rule, **stats)


class Lite0FPN(nn.Module):
    """Lite0's stride 8/16/32 stages (40, 112, 320 channels) -> an FPN of `channels` channels, P3..P7."""

    def __init__(self, pretrained: bool = False, channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.encoder = build_lite0_encoder(pretrained=pretrained)
        self.fpn = FeaturePyramidNetwork(list(LITE0_CHANNELS[2:]), channels, extra_blocks=LastLevelP6P7(channels, channels))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.encoder(x)[2:]
        return self.fpn(OrderedDict((f"c{i + 3}", f) for i, f in enumerate(feats)))


class Lite0RetinaNet(RetinaNet):
    """torchvision's RetinaNet on `Lite0FPN`, with the frame preparation of the Lite0 families instead of its
    transform: `heads` (the exported CNN), `anchors` / `decode` (Python) and `train_loss` (focal + L1 box loss)."""

    def __init__(self, n_classes: int, anchor_sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float],
                 pretrained: bool = False, channels: int = FPN_CHANNELS, max_detections: int = 100) -> None:
        gen = AnchorGenerator(tuple(tuple(float(s) for s in lv) for lv in anchor_sizes),
                              tuple(tuple(float(a) for a in aspect_ratios) for _ in anchor_sizes))
        super().__init__(Lite0FPN(pretrained, channels), num_classes=n_classes, anchor_generator=gen,
                         score_thresh=SCORE_FLOOR, detections_per_img=max_detections)
        self.n_classes = n_classes
        self._anchor_cache: dict[tuple[int, int], torch.Tensor] = {}

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, 3, H, W), H and W multiples of 32 -> (N, anchors, classes + 4): logits, then box deltas."""
        out = self.head(list(self.backbone(x).values()))
        return torch.cat([out["cls_logits"], out["bbox_regression"]], 2)

    @staticmethod
    def level_shapes(h: int, w: int) -> list[tuple[int, int]]:
        """Feature sizes of P3..P7 for an (h, w) input (multiples of 32; P6, P7 are 3x3 stride-2 convolutions)."""
        shapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
        for _ in range(2):
            ph, pw = shapes[-1]
            shapes.append(((ph + 1) // 2, (pw + 1) // 2))
        return shapes

    def anchors(self, h: int, w: int) -> torch.Tensor:
        """(anchors, 4) boxes for an (h, w) input, in the order of `heads` (cached per size)."""
        key = (int(h), int(w))
        if key not in self._anchor_cache:
            fake = [torch.empty(1, 0, a, b) for a, b in self.level_shapes(h, w)]
            self._anchor_cache[key] = self.anchor_generator(ImageList(torch.empty(1, 0, h, w), [key]), fake)[0]
        return self._anchor_cache[key]

    def decode(self, out: torch.Tensor, padded: tuple[int, int], sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """torchvision's RetinaNet post-processing (score floor, top-k per level, box decoding, class-wise NMS,
        `detections_per_img`) of `heads` output; boxes clipped to each image's (h, w) in `sizes`."""
        out = out.float().cpu()
        anchors = self.anchors(*padded)
        per_level = [a * b * self.anchor_generator.num_anchors_per_location()[0]
                     for a, b in self.level_shapes(*padded)]
        if sum(per_level) != out.shape[1]:
            raise CheckpointError(f"the network gave {out.shape[1]} anchors for a {padded} input, expected {sum(per_level)}")
        k = self.n_classes
        split = {"cls_logits": list(out[:, :, :k].split(per_level, 1)),
                 "bbox_regression": list(out[:, :, k:].split(per_level, 1))}
        return self.postprocess_detections(split, [list(anchors.split(per_level))] * len(sizes),
                                           [tuple(s) for s in sizes])

    def train_loss(self, x: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Focal loss + L1 box loss (torchvision's RetinaNet head) of a batch; targets: boxes (k, 4), labels (k,)
        0-based."""
        feats = list(self.backbone(x).values())
        head_outputs = self.head(feats)
        anchors = [self.anchors(x.shape[2], x.shape[3]).to(x.device)] * x.shape[0]
        losses = self.compute_loss(targets, head_outputs, anchors)
        return losses["classification"] + losses["bbox_regression"]


class HeadsNet(nn.Module):
    """The exported network: `Lite0RetinaNet.heads` as a single-output module."""

    def __init__(self, net: Lite0RetinaNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.heads(x)


def build_boxnet(arch_config: dict, pretrained: bool = False) -> Lite0RetinaNet:
    """The network of a checkpoint's `arch_config` (n_classes, anchor_sizes, aspect_ratios, fpn_channels,
    max_detections)."""
    return Lite0RetinaNet(int(arch_config["n_classes"]), arch_config["anchor_sizes"], arch_config["aspect_ratios"],
                          pretrained=pretrained, channels=int(arch_config.get("fpn_channels", FPN_CHANNELS)),
                          max_detections=int(arch_config.get("max_detections", 100)))


def _grey_or_rgb(frame: np.ndarray) -> np.ndarray:
    im = np.asarray(frame)
    if im.dtype != np.uint8 or im.ndim not in (2, 3) or (im.ndim == 3 and im.shape[2] not in (1, 3)):
        raise ValueError(f"frame must be uint8 (H, W) or (H, W, 3), got {im.dtype} {im.shape}")
    return im[:, :, 0] if im.ndim == 3 and im.shape[2] == 1 else im


def prepare_batch(frames: Sequence[np.ndarray], scale: float, device: str = "cpu"
                  ) -> tuple[torch.Tensor, tuple[int, int], list[tuple[int, int]]]:
    """Frames -> (normalised (N, 3, H, W) zero-padded at the bottom/right to one size, a multiple of 32;
    (H, W); each frame's (h, w) after `scale`). Zero is the ImageNet mean after normalisation: padding adds no
    edges to detect (reflection would mirror defects into it)."""
    ims = []
    for f in frames:
        im = _grey_or_rgb(f)
        if scale != 1.0:
            h, w = im.shape[:2]
            im = cv2.resize(im, (max(1, round(w * scale)), max(1, round(h * scale))),
                            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        ims.append(np.ascontiguousarray(im))
    sizes = [im.shape[:2] for im in ims]
    H = max(PAD_MULTIPLE, -(-max(s[0] for s in sizes) // PAD_MULTIPLE) * PAD_MULTIPLE)
    W = max(PAD_MULTIPLE, -(-max(s[1] for s in sizes) // PAD_MULTIPLE) * PAD_MULTIPLE)
    x = torch.zeros(len(ims), 3, H, W, device=device)
    for i, im in enumerate(ims):
        x[i, :, :im.shape[0], :im.shape[1]] = to_input([im], device)[0]
    return x, (H, W), [(int(h), int(w)) for h, w in sizes]


@torch.inference_mode()
def predict_boxes(net: Lite0RetinaNet, run: Runner | nn.Module, frames: Sequence[np.ndarray], scale: float,
                  device: str = "cpu", batch: int = 8) -> list[dict[str, np.ndarray]]:
    """Per frame {"boxes": (k, 4) float x0 y0 x1 y1 in frame pixels, "scores": (k,), "labels": (k,) 0-based}: every
    detection above the score floor (`SCORE_FLOOR`) after NMS. Frames of one call are padded to one size in
    chunks of `batch`."""
    res: list[dict[str, np.ndarray]] = []
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch]
        x, padded, sizes = prepare_batch(chunk, scale, device)
        for d, f in zip(net.decode(run(x), padded, sizes), chunk):
            h, w = np.asarray(f).shape[:2]
            b = d["boxes"].numpy().astype(np.float64) / scale
            b[:, 0::2] = b[:, 0::2].clip(0, w)
            b[:, 1::2] = b[:, 1::2].clip(0, h)
            res.append({"boxes": b, "scores": d["scores"].numpy().astype(np.float64),
                        "labels": d["labels"].numpy().astype(np.int64)})
    return res


def _box(b: np.ndarray, w: int, h: int) -> BBox | None:
    x0, y0 = int(math.floor(b[0])), int(math.floor(b[1]))
    x1, y1 = int(math.ceil(b[2])), int(math.ceil(b[3]))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return BBox(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


class BoxesInspector(RuntimeSwap):
    """RetinaNet boxes as an `Inspector`: detections whose score reaches `threshold` (chosen on validation), box only
    (mask None, area_px 0, severity 0); a frame's score is its best detection's score (0 without one)."""

    family = "boxes"
    _runners = {"boxes": "_run"}

    def __init__(self, model: Lite0RetinaNet, info: CheckpointInfo, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.heads_net = HeadsNet(self.model).eval()
        self.info = info
        self.device = device
        self.model_version = info.model_version
        self.class_names = list(info.class_names)
        self.scale = float(info.input_spec.get("scale", 1.0))
        self.threshold = float(info.threshold if info.threshold is not None else 0.5)
        self.runtime = "torch"
        self._run: Runner = TorchRunner(self.heads_net)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "BoxesInspector":
        ck = load_checkpoint(path, expected_kind=KIND)
        try:
            model = build_boxnet(ck.info.arch_config)
            model.load_state_dict(ck.state_dict)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: weights do not fit the RetinaNet box detector: {exc}") from exc
        return cls(model, ck.info, device)

    def networks(self) -> dict[str, Network]:
        """Encoder + FPN + heads (-> logits and box deltas per anchor) with a golden input; decoding is Python."""
        g = golden_frame((64, 96))
        x, _, _ = prepare_batch([g, np.ascontiguousarray(g[::-1])], self.scale)
        return {"boxes": Network(Path(self.info.path), self.info.content_hash, self.heads_net, x.numpy(),
                                 (1, 3, 96, 64))}

    def inspect_ranked(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        """Every detection above the score floor (what mAP ranks), and the frame scores."""
        if not len(frames):
            return [], []
        with self._lock:
            preds = predict_boxes(self.model, self._run, frames, self.scale, self.device)
        dets, scores = [], []
        for f, p in zip(frames, preds):
            h, w = np.asarray(f).shape[:2]
            found = []
            for b, s, c in zip(p["boxes"], p["scores"], p["labels"]):
                bb = _box(b, w, h)
                if bb is None:
                    continue
                found.append(Detection(bbox=bb, mask=None, defect_class=self.class_names[int(c)],  # type: ignore[arg-type]
                                       confidence=float(s), severity_mean=0.0, severity_max=0.0, area_px=0))
            dets.append(found)
            scores.append(float(p["scores"].max()) if len(p["scores"]) else 0.0)
        return dets, scores

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        dets, scores = self.inspect_ranked(frames)
        return [[d for d in ds if d.confidence >= self.threshold] for ds in dets], scores

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Boxes per frame (score >= threshold), without masks."""
        return self.inspect_scored(frames)[0]
