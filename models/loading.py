"""Load any model family from a checkpoint directory as an `Inspector` (models.types).

A model directory holds the checkpoints of one family, each a registry file (`models.registry`):

| family      | files                                              |
|-------------|----------------------------------------------------|
| severity    | `detector_<arch>.pt` + `classifier.pt` (arch cnn4)  |
| segmenter   | `segmenter.pt`                                     |
| classifier  | `classifier.pt` (arch lite0: one class per image)  |

and optionally `gate.pt` (an image-level defect/no-defect gate run in front of the family, so
that good frames skip the expensive stage). The Inspector version is the checkpoints' versions
joined by "+", so the same files always give the same version. The streaming worker, replay,
`evaluate` and `models promote` all go through `load_inspector` / `model_identity` and never
depend on the family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from models.registry import CheckpointError, load_checkpoint, read_info
from models.types import Inspector

__all__ = ["ModelFiles", "model_files", "load_inspector", "model_identity", "resolve_device", "FAMILIES"]

FAMILIES = ("severity", "segmenter", "classifier")
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


class ModelFiles(NamedTuple):
    """The checkpoint files of one model: `files` maps a role (detector, classifier, segmenter,
    gate) to its path; `family` is the family that does the inspection."""

    family: str
    files: dict[str, Path]

    @property
    def directory(self) -> Path:
        return next(iter(self.files.values())).parent


def _kind_arch(p: Path) -> tuple[str, str]:
    info = read_info(p)
    return info.kind, info.arch


def model_files(path: str | Path | None, detector_arch: str | None = None) -> ModelFiles:
    """The checkpoint files of the model at `path` (a directory, or one of its `.pt` files;
    None = the packaged synthetic default).

    Raises:
        CheckpointError: the path does not exist or holds no complete model.
    """
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT_DIR
    if not p.exists():
        raise CheckpointError(f"model path {p} does not exist")
    d = p.parent if p.is_file() else p
    files: dict[str, Path] = {}
    if (d / "gate.pt").is_file():
        files["gate"] = d / "gate.pt"
    if p.is_file() and p.name.startswith("detector_"):
        det: Path | None = p
    else:
        archs = [detector_arch] if detector_arch else ["fast", "paper"]
        det = next((d / f"detector_{a}.pt" for a in archs if (d / f"detector_{a}.pt").is_file()), None)
    seg = d / "segmenter.pt"
    cls = d / "classifier.pt"
    prefer_seg = p.is_file() and p.name == "segmenter.pt"
    if seg.is_file() and (prefer_seg or det is None):
        return ModelFiles("segmenter", {"segmenter": seg, **files})
    if det is not None:
        if not cls.is_file():
            raise CheckpointError(f"no classifier checkpoint {cls} beside the detector {det}")
        return ModelFiles("severity", {"detector": det, "classifier": cls, **files})
    if cls.is_file():
        kind, arch = _kind_arch(cls)
        if kind == "classifier" and arch != "cnn4":
            return ModelFiles("classifier", {"classifier": cls, **files})
        raise CheckpointError(f"{cls} is a region classifier of the severity family; its detector_<arch>.pt is missing")
    raise CheckpointError(f"no model in {d}: expected segmenter.pt, detector_<arch>.pt + classifier.pt, "
                          f"or an image classifier.pt")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"; anything else unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_inspector(path: str | Path | None = None, device: str = "auto", detector_arch: str | None = None,
                   runtime: str = "torch", export_cache: str | Path | None = None) -> Inspector:
    """Load the model at `path` (see `model_files`) as an Inspector, hashes verified.

    Args:
        runtime: "torch" (eager PyTorch), "onnxruntime" or "openvino" (CPU, fp32): every network
            of the model is exported to ONNX beside its checkpoint (or in `export_cache` when that
            directory is read-only; see `models.runtimes`) and must reproduce PyTorch on its golden input.
    Raises:
        CheckpointError: missing/corrupt files, a hash mismatch, or checkpoints that disagree;
            `models.runtimes.RuntimeParityError` (a CheckpointError) when an export fails parity.
        ValueError: an unknown runtime, or a CPU runtime on a CUDA device.
    """
    from models.runtimes import check_runtime_device

    mf = model_files(path, detector_arch)
    dev = resolve_device(check_runtime_device(runtime, device))
    if mf.family == "severity":
        from models.inspector import SeverityInspector

        insp: Any = SeverityInspector.load(mf.files["detector"], device=dev)
    elif mf.family == "segmenter":
        from models.segmenter import SegmenterInspector

        insp = SegmenterInspector.load(mf.files["segmenter"], device=dev)
    else:
        from models.image_classifier import ImageClassifierInspector

        insp = ImageClassifierInspector.load(mf.files["classifier"], device=dev)
    if "gate" in mf.files:
        from models.gate import GatedInspector

        insp = GatedInspector.load(mf.files["gate"], insp, device=dev)
    if runtime != "torch":
        insp.use_runtime(runtime, export_cache)
    return insp


def model_identity(path: str | Path | None, detector_arch: str | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(Inspector version, content hash per role, metrics per role) of the model at `path`, every
    hash verified; the version equals what `load_inspector(path).model_version` reports."""
    mf = model_files(path, detector_arch)
    loaded = {role: load_checkpoint(p) for role, p in mf.files.items()}
    order = [r for r in ("detector", "classifier", "segmenter") if r in loaded] + (["gate"] if "gate" in loaded else [])
    if mf.family == "severity" and loaded["detector"].info.class_names != loaded["classifier"].info.class_names:
        raise CheckpointError(f"{mf.files['detector']} and {mf.files['classifier']} disagree on class names")
    version = "+".join(loaded[r].info.model_version for r in order)
    hashes = {r: loaded[r].info.content_hash for r in order}
    metrics = {r: loaded[r].info.metrics for r in order}
    return version, hashes, metrics
