"""OK/DEFECT patch classifier on Lite0 with Grad-CAM and Grad-CAM++ maps in one exportable graph; `OkDefectInspector`.

Grad-CAM needs the gradient of the DEFECT logit with respect to the last feature map A (Lite0's `bn2`
output, stride 32). Here the head is global average pooling then one linear unit, so that gradient is
W_k / (h w) at every position, known without a backward pass: Grad-CAM's channel weights are W_k / (h w)
and Grad-CAM++'s (as the `grad-cam` package computes them: a_ij = g^2 / (2 g^2 + sum_ij A g^3 + eps),
weights = sum_ij relu(g) a_ij) follow in closed form. `CamNet` computes both in the forward pass, so ONNX
Runtime serves the maps too (autograd does not export); `tests/unit/models/test_okdefect.py` checks them
against `pytorch_grad_cam.GradCAM` / `GradCAMPlusPlus` on the same network.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from models.core.backbone import build_lite0, to_input
from models.core.checkpoints import CheckpointError, CheckpointInfo, load_checkpoint
from models.core.regions import regions_from_severity
from models.core.types import Detection
from models.families.anomaly.tiling import cut_tiles, stitch_max
from models.families.image_classifier.model import resize_square
from models.runtime.runtimes import Network, Runner, TorchRunner, golden_frame
from models.runtime.swap import RuntimeSwap

__all__ = ["FILE", "KIND", "CLASS", "CAMS", "CamNet", "build_okdefect", "scale_cam", "patch_outputs",
           "FrameMaps", "OkDefectInspector"]

FILE = "okdefect.pt"
KIND = "okdefect"
CLASS = "defect"
CAMS = ("gradcam", "gradcam++")  # output channels 1 and 2 of CamNet
_EPS = 1e-6  # the grad-cam package's Grad-CAM++ epsilon


def build_okdefect(pretrained: bool = False) -> nn.Module:
    """Lite0 with one DEFECT logit (ImageNet-initialised encoder when `pretrained`)."""
    return build_lite0(pretrained=pretrained, num_classes=1)


class CamNet(nn.Module):
    """Patch -> (N, 3, h, w): channel 0 the DEFECT logit (the same at every position), 1 Grad-CAM,
    2 Grad-CAM++ (both before the per-patch min-max scaling, `scale_cam`)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.net.forward_features(x)  # (N, 1280, h, w)
        logit = self.net.forward_head(a)  # (N, 1)
        hw = torch.ones_like(a[:, :1]).sum((2, 3), keepdim=True)  # (N, 1, 1, 1), traced as a tensor (dynamic sizes)
        g = self.net.classifier.weight[0].view(1, -1, 1, 1) / hw  # d logit / d A, the same at every position
        cam = torch.relu((g * a).sum(1, keepdim=True))
        g2 = g * g
        aij = g2 / (2.0 * g2 + a.sum((2, 3), keepdim=True) * g2 * g + _EPS)
        aij = torch.where(g != 0, aij, torch.zeros_like(aij))
        w_pp = torch.relu(g) * aij * hw  # summed over the h x w positions where it is the same
        campp = torch.relu((w_pp * a).sum(1, keepdim=True))
        return torch.cat([logit.view(-1, 1, 1, 1).expand_as(cam), cam, campp], 1)


def _minmax(c: np.ndarray) -> np.ndarray:
    c = c - np.min(c)
    return c / (1e-7 + np.max(c))


def scale_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A raw CAM (h, w) min-max scaled to [0, 1] and resized to `size` (H, W) exactly as the `grad-cam` package
    returns it for one target layer: scaled, resized (bilinear), scaled again (its per-layer then its
    aggregate `scale_cam_image`; the second pass matters where the raw CAM is tiny next to its 1e-7)."""
    return _minmax(cv2.resize(_minmax(cam).astype(np.float32), (size[1], size[0]))).astype(np.float32)


@torch.inference_mode()
def patch_outputs(run: Runner | nn.Module, tiles: Sequence[np.ndarray], device: str = "cpu",
                  batch: int = 32) -> np.ndarray:
    """(N, 3, h, w) CamNet outputs of `tiles` (equal sizes) through a runner or module."""
    out = []
    for i in range(0, len(tiles), batch):
        out.append(run(to_input(list(tiles[i:i + batch]), device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3, 1, 1), np.float32)


class FrameMaps(NamedTuple):
    """What the OK/DEFECT model sees on one frame."""

    conf: np.ndarray  # (H, W): the patch probability where the patch is DEFECT and its CAM reaches the CAM threshold
    cam: np.ndarray  # (H, W): every patch's scaled CAM
    probs: np.ndarray  # DEFECT probability of each patch


class OkDefectInspector(RuntimeSwap):
    """Frames cut into `patch` x `patch` patches; a patch whose DEFECT probability reaches the threshold gives
    the pixels where its scaled CAM reaches `cam_threshold` as a region of class `defect`, with the patch's
    probability as confidence. A frame's score is its largest patch probability."""

    family = "okdefect"
    _runners = {"okdefect": "_run"}

    def __init__(self, model: nn.Module, info: CheckpointInfo, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.net = CamNet(self.model).eval()
        self.info = info
        self.device = device
        self.model_version = info.model_version
        self.class_names = [CLASS]
        self.patch = int(info.input_spec["patch"])
        self.size = int(info.input_spec.get("size", self.patch))  # network input side: patches resized to it
        self.threshold = float(info.threshold if info.threshold is not None else 0.5)
        pp = info.postprocess
        self.cam = str(pp.get("cam", "gradcam++"))
        if self.cam not in CAMS:
            raise CheckpointError(f"{info.path}: unknown CAM {self.cam!r}; known: {', '.join(CAMS)}")
        self.cam_threshold = float(pp.get("cam_threshold", 0.5))
        self.min_area = int(pp.get("min_area", 16))
        self.runtime = "torch"
        self._run: Runner = TorchRunner(self.net)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "OkDefectInspector":
        ck = load_checkpoint(path, expected_kind=KIND)
        model = build_okdefect()
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the OK/DEFECT classifier: {exc}") from exc
        return cls(model, ck.info, device)

    def networks(self) -> dict[str, Network]:
        """The classifier with both CAMs (one graph) and a golden patch pair."""
        g = golden_frame((64, 96))
        x = to_input([np.ascontiguousarray(g[:, :64]), np.ascontiguousarray(g[:, 32:])], "cpu").numpy()
        return {"okdefect": Network(Path(self.info.path), self.info.content_hash, self.net, x, (1, 3, 96, 64))}

    def maps(self, frames: Sequence[np.ndarray]) -> list[FrameMaps]:
        """Per frame its confidence map, CAM map and patch probabilities (`FrameMaps`), in one pass."""
        cuts = [cut_tiles(f, self.patch) for f in frames]
        flat = [t for tiles, _ in cuts for t in tiles]
        if self.size != self.patch:  # zoomed: finer features and CAMs for small defects
            flat = [resize_square(t, self.size) for t in flat]
        with self._lock:
            outs = patch_outputs(self._run, flat, self.device)
        ch = 1 + CAMS.index(self.cam)
        res, k = [], 0
        for tiles, tiling in cuts:
            conf, cams, probs = [], [], []
            for o in outs[k:k + len(tiles)]:
                p = float(1.0 / (1.0 + np.exp(-float(o[0, 0, 0]))))
                c = scale_cam(o[ch], (self.patch, self.patch))
                cams.append(c)
                probs.append(p)
                sel = (c >= self.cam_threshold) if p >= self.threshold else np.zeros_like(c, bool)
                conf.append(np.where(sel, np.float32(p), np.float32(0.0)))
            k += len(tiles)
            res.append(FrameMaps(stitch_max(conf, tiling), stitch_max(cams, tiling), np.asarray(probs)))
        return res

    def explain(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per frame every patch's scaled CAM times the patch's DEFECT probability, in [0, 1], for pictures."""
        out = []
        for f, fm in zip(frames, self.maps(frames)):
            tiles, tiling = cut_tiles(f, self.patch)
            weights = [np.full((self.patch, self.patch), p, np.float32) for p in fm.probs]
            out.append(fm.cam * stitch_max(weights, tiling))
        return out

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        if not len(frames):
            return [], []
        dets, scores = [], []
        for fm in self.maps(frames):
            scores.append(float(fm.probs.max()))
            found = []
            for r in regions_from_severity(12.0 * fm.conf, 1e-6, min_area=self.min_area):
                found.append(Detection(bbox=r.bbox, mask=r.mask, defect_class=CLASS, confidence=r.severity_max / 12.0,
                                       severity_mean=r.severity_mean, severity_max=r.severity_max,
                                       area_px=r.area_px, class_scores=(1.0,)))
            dets.append(found)
        return dets, scores

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Regions of class `defect` per frame (CAM pixels of its DEFECT patches)."""
        return self.inspect_scored(frames)[0]
