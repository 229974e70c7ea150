"""Typed results that cross the border between the models and the streaming layer."""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np


class BBox(NamedTuple):
    """Axis-aligned box in frame pixels; x1/y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return max(0, self.width) * max(0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when they do not overlap or are empty."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Detection(NamedTuple):
    """One defect candidate found on one frame by the Inspector."""

    bbox: BBox
    mask: np.ndarray | None  # bool (bbox.height, bbox.width): the component's pixels inside bbox; None from a box
    # detector (family spec `masks=False`), whose area_px is then 0 and severities 0: unknown, never invented
    defect_class: str  # one of the classifier's class names (never "background")
    confidence: float  # classifier probability of defect_class, in [0, 1]
    severity_mean: float  # mean predicted severity over the component, in [0, 12]
    severity_max: float
    area_px: int
    class_scores: tuple[float, ...] = ()  # per-class probabilities (classifier order), optional


class InspectionSample(NamedTuple):
    """One annotated image as every dataset reader (and the synthetic generator) returns it.

    `class_mask` holds 0 for background and i+1 for `class_names[i]`; readers of box-only
    datasets leave it None and fill `boxes`. `instance_mask` (0 = none, k = k-th entry of
    `boxes`) is given where instances are known; `severity` is a per-pixel [0, 12] map where the
    source knows one (the synthetic generator).
    """

    image: np.ndarray  # uint8 (H, W) grey or (H, W, 3)
    class_mask: np.ndarray | None  # uint8/int (H, W) class ids, or None (box-only data)
    boxes: tuple[tuple[BBox, int], ...]  # (box, class id >= 1) per defect instance
    class_names: tuple[str, ...]  # defect classes, id i+1 -> class_names[i]
    instance_mask: np.ndarray | None = None
    severity: np.ndarray | None = None
    source: str = ""


@runtime_checkable
class Inspector(Protocol):
    """What every model family offers the streaming layer, replay, evaluation and promotion.

    Each family folder (`models/families/<name>/`) implements it and registers a `FamilySpec`
    (`models.core.families`): `SeverityInspector` (He & Liu severity regression + region classifier,
    family "severity"), `SegmenterInspector` ("segmenter"), `ImageClassifierInspector` ("classifier")
    and `GatedInspector` (any of them behind an image-level defect/no-defect gate, "gate+<family>").
    `models.loading.load_inspector` loads any of them from a checkpoint directory.
    """

    model_version: str  # content-hash based; equal weights and settings give the same version
    class_names: list[str]  # defect classes it can report (never "background")
    device: str  # "cpu" or "cuda[:N]"
    family: str  # a registered family's name (`models.core.families.list_families`), "gate+" prefixed when gated
    runtime: str  # what serves its networks: "torch", "onnxruntime", "openvino" or "onnxruntime-int8"

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Detections per frame (uint8 (H, W) grey or (H, W, 3) RGB, any size), in input order."""
        ...

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        """`inspect` plus a per-frame defect score in [0, 1] (image-level AUROC/AP use it), in one pass."""
        ...

    def networks(self) -> dict[str, Any]:
        """Its networks by checkpoint role (`models.runtime.runtimes.Network`: path, content hash, module, golden
        input); the keys and hashes are what `models.loading.model_identity` reports."""
        ...

    def vote_track(self, frames: Sequence[np.ndarray] | Mapping[int, np.ndarray],
                   boxes: Mapping[int, Sequence[float]]) -> dict[str, float] | None:
        """Part context: class probabilities of one tracked defect from the part's frames (frame index -> uint8
        frame) and its box on each frame it was seen on (`TrackSummary.boxes`), or None when the model has no
        sequence vote (`models.families.track_vote`), in which case the tracker votes confidence x severity."""
        ...

    def use_runtime(self, runtime: str, cache_dir: Any = None) -> Any:
        """Serve every network in `runtime` (export + parity check; `models.runtime.swap.RuntimeSwap`)."""
        ...


def has_sequence_vote(inspector: Any) -> bool:
    """Whether `inspector.vote_track` votes (a model with a sequence vote beside it) rather than return None."""
    fn = getattr(inspector, "vote_track", None)
    return fn is not None and fn({0: np.zeros((16, 16), np.uint8)}, {0: (2, 2, 12, 12)}) is not None
