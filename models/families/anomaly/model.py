"""PatchCore on the Lite0 encoder: locally aware patch features, a memory bank, nearest-neighbour scores, `AnomalyInspector`.

The network (`PatchCoreNet`, one ONNX graph) maps a normalised tile to the squared distance of each
stride-8 patch feature to its nearest memory-bank entry: the bank is a buffer of the checkpoint (in its
content hash), and the search is a matmul and a min over it, inside the graph. So ONNX Runtime serves the
whole score (features, search) and the parity check on the golden tile covers the search too; what follows
(square root, upsampling, Gaussian smoothing, threshold, regions) is the same numpy code for every runtime.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.core.backbone import LITE0_CHANNELS, _timm, imagenet_state_dict, to_input
from models.core.checkpoints import CheckpointError, CheckpointInfo, load_checkpoint
from models.core.regions import regions_from_severity
from models.core.types import Detection
from models.families.anomaly.tiling import cut_tiles, stitch_max
from models.runtime.runtimes import Network, Runner, Select, TorchRunner, golden_frame
from models.runtime.swap import RuntimeSwap

__all__ = ["FILE", "KIND", "ARCH", "CLASS", "STAGES", "STRIDE", "PatchFeatures", "PatchCoreNet", "AnomalyInspector",
           "normalise_score", "scale_tile"]

FILE = "anomaly.pt"
KIND = "anomaly"
ARCH = "lite0-patchcore"
CLASS = "anomaly"
STAGES = (2, 3)  # Lite0 features at strides 8 and 16 (40 + 112 channels): PatchCore's "mid-level" pair
STRIDE = 8  # the patch grid: the finer of the two stages


class PatchFeatures(nn.Module):
    """Lite0 up to stride 16; each stage averaged over its 3x3 neighbourhood (PatchCore's local awareness),
    the stride-16 stage upsampled onto the stride-8 grid, both concatenated: (N, 152, ceil(H/8), ceil(W/8))."""

    def __init__(self, pretrained: bool = True, pool: int = 3) -> None:
        super().__init__()
        self.encoder = _timm().create_model("efficientnet_lite0", pretrained=False, features_only=True,
                                            out_indices=STAGES)
        if pretrained:
            sd = imagenet_state_dict()
            want = self.encoder.state_dict()
            self.encoder.load_state_dict({k: sd[k] for k in want}, strict=True)
        self.pool = pool
        self.channels = sum(LITE0_CHANNELS[i] for i in STAGES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f2, f3 = self.encoder(x)
        p = self.pool // 2
        f2 = F.avg_pool2d(f2, self.pool, stride=1, padding=p, count_include_pad=False)
        f3 = F.avg_pool2d(f3, self.pool, stride=1, padding=p, count_include_pad=False)
        f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f2, f3], 1)


class PatchCoreNet(nn.Module):
    """Tile -> (N, 1, h, w) squared distance of every patch to its nearest bank entry.

    The features are centred on the bank's mean before the search (the same shift on both sides, so the
    distances are unchanged) to keep |f|^2 - 2 f.b + |b|^2 away from float32 cancellation."""

    def __init__(self, bank_size: int, pretrained: bool = False, pool: int = 3) -> None:
        super().__init__()
        self.features = PatchFeatures(pretrained=pretrained, pool=pool)
        c = self.features.channels
        self.register_buffer("bank", torch.zeros(bank_size, c))
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("bank_sq", torch.zeros(bank_size))

    def set_bank(self, bank: torch.Tensor) -> None:
        """Store `bank` (M, C) raw features; keeps it centred with its squared norms."""
        mean = bank.mean(0)
        centred = (bank - mean).contiguous()
        self.bank = centred.clone()
        self.mean = mean.clone()
        self.bank_sq = (centred * centred).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        n, c, h, w = f.shape
        q = f.flatten(2).transpose(1, 2) - self.mean  # (N, hw, C)
        d2 = (q * q).sum(2, keepdim=True) - 2.0 * torch.matmul(q, self.bank.t()) + self.bank_sq
        return d2.min(2).values.clamp_min(0.0).reshape(n, 1, h, w)


def scale_tile(tile: np.ndarray, scale: float) -> np.ndarray:
    """A tile resized by `scale` (both directions alike: a zoom, never a squash) before the encoder; small tiles
    (e.g. 64 px) enlarged 2x meet the encoder at the object scale of its ImageNet training."""
    if scale == 1.0:
        return tile
    n = max(8, int(round(tile.shape[0] * scale)))
    return cv2.resize(tile, (n, n), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)


def normalise_score(d: np.ndarray | float, threshold: float) -> np.ndarray | float:
    """Anomaly distance -> [0, 1): d / (d + T), monotone (AUROC unchanged) and 0.5 at the threshold T."""
    return d / (d + threshold)


def _gaussian(m: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return m
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(m, (k, k), sigma, borderType=cv2.BORDER_REFLECT)


class AnomalyInspector(RuntimeSwap):
    """PatchCore as an `Inspector`: frames tiled at the fitted tile size, anomaly map per pixel, regions of class
    `anomaly` above the threshold with the (normalised) score as confidence.

    Guarantees: a frame's score is the max of its smoothed map (normalised), so a frame has a detection
    exactly when its score is above 0.5 (the threshold) and a region of at least `min_area` pixels is there."""

    family = "anomaly"
    _runners = {"anomaly": "_run"}

    def __init__(self, model: PatchCoreNet, info: CheckpointInfo, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.info = info
        self.device = device
        self.model_version = info.model_version
        self.class_names = [CLASS]
        spec = info.input_spec
        self.tile = int(spec["tile"])
        self.scale = float(spec.get("scale", 1.0))
        self.sigma = float(spec.get("smooth_sigma", 4.0))
        self.threshold = float(info.threshold if info.threshold is not None else 1.0)
        self.min_area = int(info.postprocess.get("min_area", 16))
        self.batch = 16
        self.runtime = "torch"
        self._run: Runner = TorchRunner(Select(self.model))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "AnomalyInspector":
        ck = load_checkpoint(path, expected_kind=KIND)
        cfg = ck.info.arch_config
        model = PatchCoreNet(int(cfg["bank_size"]), pretrained=False, pool=int(cfg.get("pool", 3)))
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the PatchCore network: {exc}") from exc
        return cls(model, ck.info, device)

    def networks(self) -> dict[str, Network]:
        """The whole scorer (encoder, pooling, nearest-neighbour search) with a golden tile."""
        g = golden_frame((64, 96))
        x = to_input([np.ascontiguousarray(g[:, :64]), np.ascontiguousarray(g[:, 32:])], "cpu").numpy()
        return {"anomaly": Network(Path(self.info.path), self.info.content_hash, Select(self.model), x, (1, 3, 48, 80))}

    @torch.inference_mode()
    def distance_tiles(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per tile (size x size) the pixel map of nearest-neighbour distances (unsmoothed)."""
        out: list[np.ndarray] = []
        for i in range(0, len(tiles), self.batch):
            x = to_input([scale_tile(t, self.scale) for t in tiles[i:i + self.batch]], self.device)
            d2 = self._run(x).float().cpu().numpy()[:, 0]
            for m in d2:
                d = np.sqrt(np.maximum(m, 0.0)).astype(np.float32)
                out.append(cv2.resize(d, (self.tile, self.tile), interpolation=cv2.INTER_LINEAR))
        return out

    def anomaly_maps(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per frame the smoothed anomaly distance map (H, W) float32 (> threshold = anomalous)."""
        cuts = [cut_tiles(f, self.tile) for f in frames]
        flat = [t for tiles, _ in cuts for t in tiles]
        with self._lock:
            maps = self.distance_tiles(flat)
        out, k = [], 0
        for tiles, tiling in cuts:
            full = stitch_max(maps[k:k + len(tiles)], tiling)
            k += len(tiles)
            out.append(_gaussian(full, self.sigma))
        return out

    def explain(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per frame the normalised anomaly map in [0, 1) (0.5 at the threshold), for pictures."""
        return [normalise_score(m, self.threshold) for m in self.anomaly_maps(frames)]

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        if not len(frames):
            return [], []
        dets, scores = [], []
        t = self.threshold
        for m in self.anomaly_maps(frames):
            scores.append(float(normalise_score(float(m.max()), t)))
            norm = 12.0 * normalise_score(m, t)  # severity units [0, 12): 6 at the threshold
            found = []
            for r in regions_from_severity(norm, 6.0, min_area=self.min_area):
                conf = r.severity_max / 12.0
                found.append(Detection(bbox=r.bbox, mask=r.mask, defect_class=CLASS, confidence=float(conf),
                                       severity_mean=r.severity_mean, severity_max=r.severity_max,
                                       area_px=r.area_px, class_scores=(1.0,)))
            dets.append(found)
        return dets, scores

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Regions of class `anomaly` per frame (none on a frame under the threshold)."""
        return self.inspect_scored(frames)[0]
