"""Image-level models on the Lite0 encoder: one class per image (family "classifier") and the gate.

- `ImageClassifierInspector`: the NEU-CLS style classifier (one defect class per image, plus
  "good" when the training data had defect-free images). A defective frame gives one Detection
  that covers the frame, with the class and its probability.
- The gate (`models.families.gate.model`) is the same network with one output: defect / no defect.

Images of any size are resized to the checkpoint's `size` x `size` (recorded in `input_spec`).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from models.core.backbone import build_lite0, to_input
from models.core.checkpoints import CheckpointError, CheckpointInfo, load_checkpoint
from models.core.types import BBox, Detection
from models.runtime.runtimes import Network, Runner, Select, TorchRunner, golden_frame
from models.runtime.swap import RuntimeSwap

__all__ = ["build_image_classifier", "resize_square", "ImageClassifierInspector", "image_probabilities",
           "image_network"]


def build_image_classifier(n_outputs: int, pretrained: bool = False) -> torch.nn.Module:
    """Lite0 with a fresh `n_outputs` head (ImageNet-initialised encoder when `pretrained`)."""
    return build_lite0(pretrained=pretrained, num_classes=n_outputs)


def resize_square(frame: np.ndarray, size: int) -> np.ndarray:
    """uint8 grey/RGB frame -> size x size (area interpolation when shrinking)."""
    im = np.asarray(frame)
    if im.dtype != np.uint8 or im.ndim not in (2, 3):
        raise ValueError(f"frame must be uint8 (H, W) or (H, W, 3), got {im.dtype} {im.shape}")
    if im.ndim == 3 and im.shape[2] == 1:
        im = im[:, :, 0]
    if im.shape[:2] == (size, size):
        return np.ascontiguousarray(im)
    inter = cv2.INTER_AREA if max(im.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(im, (size, size), interpolation=inter)


def image_network(model: torch.nn.Module, info: CheckpointInfo) -> Network:
    """An image-level Lite0 network (classifier or gate; -> logits) with its golden input."""
    g = golden_frame((64, 96))
    x = to_input([g, np.ascontiguousarray(g[:, ::-1])], "cpu").numpy()
    return Network(Path(info.path), info.content_hash, Select(model), x, (1, 3, 64, 64))


@torch.inference_mode()
def image_probabilities(model: torch.nn.Module | Runner, frames: Sequence[np.ndarray], size: int, device: str,
                        batch: int = 32, sigmoid: bool = False) -> np.ndarray:
    """(N, outputs) softmax (or sigmoid) outputs of an image-level model (a module or a
    `models.runtime.runtimes` runner) for frames of any size."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    amp = device.startswith("cuda")
    out = []
    for i in range(0, len(frames), batch):
        x = to_input([resize_square(f, size) for f in frames[i:i + batch]], device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        out.append((logits.sigmoid() if sigmoid else logits.softmax(1)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


class ImageClassifierInspector(RuntimeSwap):
    """A one-class-per-image classifier as an `Inspector` (models.core.types)."""

    family = "classifier"
    _runners = {"classifier": "_run"}  # network -> runner attribute (RuntimeSwap.use_runtime)

    def __init__(self, model: torch.nn.Module, info: CheckpointInfo, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.info = info
        self.device = device
        self.model_version = info.model_version
        self.class_names = list(info.class_names)
        self.size = int(info.input_spec["size"])
        self.has_good = bool(info.arch_config.get("has_good", False))
        self.runtime = "torch"
        self._run: Runner = TorchRunner(Select(self.model))
        self._lock = threading.Lock()

    def networks(self) -> dict[str, Network]:
        """The classifier (-> logits) as an exportable network with its golden input."""
        return {"classifier": image_network(self.model, self.info)}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "ImageClassifierInspector":
        ck = load_checkpoint(path, expected_kind="classifier")
        if ck.info.arch != "lite0":
            raise CheckpointError(f"{path} is a {ck.info.arch} region classifier, not an image classifier")
        model = build_image_classifier(int(ck.info.arch_config["n_outputs"]))
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the image classifier: {exc}") from exc
        return cls(model, ck.info, device)

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        if not len(frames):
            return [], []
        with self._lock:
            probs = image_probabilities(self._run, frames, self.size, self.device)
        dets, scores = [], []
        for f, p in zip(frames, probs):
            defect = p[1:] if self.has_good else p
            c = int(np.argmax(p))
            scores.append(float(1.0 - p[0]) if self.has_good else float(defect.max()))
            if self.has_good and c == 0:
                dets.append([])
                continue
            k = c - 1 if self.has_good else c
            h, w = np.asarray(f).shape[:2]
            conf = float(p[c])
            share = defect / max(float(defect.sum()), 1e-9)
            dets.append([Detection(bbox=BBox(0, 0, w, h), mask=np.ones((h, w), bool), defect_class=self.class_names[k],
                                   confidence=conf, severity_mean=12.0 * conf, severity_max=12.0 * conf,
                                   area_px=h * w, class_scores=tuple(float(v) for v in share))])
        return dets, scores

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """One frame-wide Detection per defective frame (none for a frame classified good)."""
        return self.inspect_scored(frames)[0]
