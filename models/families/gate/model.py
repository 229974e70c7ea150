"""The gate: an image-level defect / no-defect classifier in front of any family.

Frames whose gate probability is below the checkpoint's threshold skip the inner model (no
detections); the threshold is chosen recall-first on validation images (`choose_gate_threshold`),
so the gate saves work on good frames without losing defective ones. `GatedInspector.stats`
counts what it skipped.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from models.core.checkpoints import CheckpointError, load_checkpoint
from models.core.types import Detection
from models.families.image_classifier.model import build_image_classifier, image_network, image_probabilities
from models.runtime.runtimes import Network, Runner, Select, TorchRunner
from models.runtime.swap import WrapperSwap

__all__ = ["GatedInspector", "choose_gate_threshold", "load_gate"]


def choose_gate_threshold(scores: Sequence[float], labels: Sequence[bool], min_recall: float = 0.99,
                          floor: float = 1e-3, cap: float = 0.5) -> float:
    """The highest threshold that keeps at least `min_recall` of the defective validation images
    (score >= threshold passes), clipped to [floor, cap]; `floor` when there are no defective ones."""
    pos = np.sort(np.asarray([s for s, y in zip(scores, labels) if y], np.float64))
    if pos.size == 0:
        return floor
    k = int(np.floor((1.0 - min_recall) * pos.size))  # this many positives may fall below
    t = float(pos[k]) * 0.999  # just below the k-th lowest positive score: it still passes
    return float(min(cap, max(floor, t)))


def load_gate(path: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, CheckpointInfo) of a `gate.pt`, hash verified. Raises CheckpointError."""
    ck = load_checkpoint(path, expected_kind="gate")
    model = build_image_classifier(1)
    try:
        model.load_state_dict(ck.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the gate: {exc}") from exc
    return model.to(device).eval(), ck.info


class GatedInspector(WrapperSwap):
    """`inner` behind the gate; itself an `Inspector` (version = inner version + gate version).

    Scores: a frame that passes gets 0.5 + 0.5 x the inner score, a skipped one 0.5 x its gate
    probability / threshold, so the ranking of the two stages is kept for AUROC/AP.
    """

    def __init__(self, model: Any, info: Any, inner: Any, device: str = "cpu") -> None:
        self.gate_model, self.gate_info, self.inner = model, info, inner
        self._runners = {"gate": "_run"}  # network -> runner attribute (WrapperSwap.use_runtime)
        self.device = device
        self.threshold = float(info.threshold if info.threshold is not None else 0.01)
        self.size = int(info.input_spec["size"])
        self.model_version = f"{inner.model_version}+{info.model_version}"
        self.class_names = list(inner.class_names)
        self.family = f"gate+{inner.family}"
        self.stats = {"frames": 0, "skipped": 0}
        self.runtime = "torch"
        self._run: Runner = TorchRunner(Select(self.gate_model))
        self._lock = threading.Lock()

    def networks(self) -> dict[str, Network]:
        """The inner model's networks and the gate (-> its one logit), exportable with golden inputs."""
        return {**self.inner.networks(), "gate": image_network(self.gate_model, self.gate_info)}

    @classmethod
    def load(cls, path: str | Path, inner: Any, device: str = "cpu") -> "GatedInspector":
        model, info = load_gate(path, device)
        return cls(model, info, inner, device)

    def gate_scores(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        with self._lock:
            return image_probabilities(self._run, frames, self.size, self.device, sigmoid=True)[:, 0]

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        if not len(frames):
            return [], []
        g = self.gate_scores(frames)
        passing = [i for i, s in enumerate(g) if s >= self.threshold]
        dets: list[list[Detection]] = [[] for _ in frames]
        scores = [0.5 * min(1.0, float(s) / max(self.threshold, 1e-9)) * (1 - 1e-6) for s in g]
        if passing:
            inner_d, inner_s = self.inner.inspect_scored([frames[i] for i in passing])
            for i, d, s in zip(passing, inner_d, inner_s):
                dets[i], scores[i] = d, 0.5 + 0.5 * float(s)
        self.stats["frames"] += len(frames)
        self.stats["skipped"] += len(frames) - len(passing)
        return dets, scores

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        return self.inspect_scored(frames)[0]
