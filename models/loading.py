"""Load any model directory as an `Inspector` (models.core.types), through the family registry.

A model directory holds the checkpoints of one family, each a checkpoint file
(`models.core.checkpoints`); which files belong to which family is each family's spec
(`models.core.families`, registered by `models.families`): e.g. severity `detector_<arch>.pt` +
`classifier.pt` (arch cnn4), segmenter `segmenter.pt`, image classifier `classifier.pt` (arch lite0),
and optionally a wrapper in front of it (the gate, `gate.pt`). The Inspector version is the
checkpoints' versions joined by "+" in the spec's role order, so the same files always give the
same version. The streaming worker, replay, `evaluate` and `models promote` all go through
`load_inspector` / `model_identity` and never depend on the family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from models.core.checkpoints import DEFAULT_CHECKPOINT_DIR, CheckpointError, load_checkpoint
from models.core.families import FamilySpec, family_specs, get_family, list_families, wrapper_specs
from models.core.types import Inspector
from models.families import FAMILY_NAMES
from models.runtime.choice import INT8_CONF_TOL, INT8_MIN_IOU, compare_detections, use_auto, use_int8
from models.runtime.runtimes import AUTO, INT8, check_runtime_device

__all__ = ["ModelFiles", "model_files", "load_inspector", "model_identity", "resolve_device", "FAMILIES",
           "compare_detections", "INT8_MIN_IOU", "INT8_CONF_TOL", "DEFAULT_CHECKPOINT_DIR", "list_families"]

FAMILIES = FAMILY_NAMES  # the registered families that inspect (wrappers such as the gate not included)


class ModelFiles(NamedTuple):
    """The checkpoint files of one model: `files` maps a role (its spec's roles, then the wrappers')
    to its path; `family` is the family that does the inspection."""

    family: str
    files: dict[str, Path]

    @property
    def directory(self) -> Path:
        return next(iter(self.files.values())).parent

    @property
    def spec(self) -> FamilySpec:
        return get_family(self.family)

    @property
    def primary(self) -> Path:
        """The family's first checkpoint (what its training split and input spec are read from)."""
        return self.files[self.spec.roles[0]]

    def roles(self) -> list[str]:
        """The roles in version order: the family's, then each wrapper's present in `files`."""
        return [r for r in self.spec.roles if r in self.files] + [
            r for w in wrapper_specs() for r in w.roles if r in self.files]


def model_files(path: str | Path | None, detector_arch: str | None = None) -> ModelFiles:
    """The checkpoint files of the model at `path` (a directory, or one of its `.pt` files;
    None = the packaged synthetic default). A `.pt` file that a family owns selects that family;
    otherwise the families claim the directory in their registry order. `detector_arch` picks a
    variant inside the directory (the severity detector's arch).

    Raises:
        CheckpointError: the path does not exist or holds no complete model.
    """
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT_DIR
    if not p.exists():
        raise CheckpointError(f"model path {p} does not exist")
    d = p.parent if p.is_file() else p
    wrapped: dict[str, Path] = {}
    for w in wrapper_specs():
        wrapped.update(w.claim(d, None, detector_arch) or {})
    specs = family_specs()
    selected = p if p.is_file() else None
    owner = next((s for s in specs if selected is not None and s.owns(selected)), None)
    for spec in [owner] if owner is not None else specs:
        files = spec.claim(d, selected if owner is not None else None, detector_arch)
        if files:
            return ModelFiles(spec.name, {**files, **wrapped})
    raise CheckpointError(f"no model in {d}: expected the files of one of the families {', '.join(FAMILIES)} "
                          f"(e.g. segmenter.pt, detector_<arch>.pt + classifier.pt, or an image classifier.pt)")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_inspector(path: str | Path | None = None, device: str = "auto", detector_arch: str | None = None,
                   runtime: str = "torch", export_cache: str | Path | None = None,
                   calibration: str | Path | Sequence[np.ndarray] | None = None,
                   int8_min_iou: float | None = None, int8_conf_tol: float | None = None) -> Inspector:
    """Load the model at `path` (see `model_files`) as an Inspector, hashes verified.

    Args:
        runtime: "torch" (eager PyTorch), "onnxruntime" or "openvino" (CPU, fp32): every network
            of the model is exported to ONNX beside its checkpoint (or in `export_cache` when that
            directory is read-only; see `models.runtime.runtimes`) and must reproduce PyTorch on its golden input.
            "auto": torch when the device resolves to CUDA; on CPU ONNX Runtime (OpenVINO, when installed,
            only if ONNX Runtime cannot be used), torch when neither can be used.
            The choice is in the Inspector's `runtime` and `runtime_choice`.
            "onnxruntime-int8" (CPU): static int8 quantisation calibrated on `calibration` (a folder of
            images, frames, or None = synthetic frames like the packaged training data), accepted only
            when golden frames give the same detections as fp32 (INT8_MIN_IOU, INT8_CONF_TOL, or the
            int8_* arguments); the comparison is in `int8_parity` (`models.runtime.choice`).
    Raises:
        CheckpointError: missing/corrupt files, a hash mismatch, or checkpoints that disagree;
            `models.runtime.runtimes.RuntimeParityError` (a CheckpointError) when an export fails parity.
        ValueError: an unknown runtime, or a CPU runtime on a CUDA device.
    """
    mf = model_files(path, detector_arch)
    dev = resolve_device(check_runtime_device(runtime, device))
    spec = mf.spec
    insp: Any = spec.load({r: mf.files[r] for r in spec.roles}, dev)
    for w in wrapper_specs():
        if all(r in mf.files for r in w.roles):
            insp = w.load({r: mf.files[r] for r in w.roles}, dev, insp)
    if runtime == AUTO:
        insp.runtime_choice = use_auto(insp, export_cache)
    elif runtime == INT8:
        insp.int8_parity = use_int8(insp, export_cache, calibration,
                                    INT8_MIN_IOU if int8_min_iou is None else int8_min_iou,
                                    INT8_CONF_TOL if int8_conf_tol is None else int8_conf_tol)
    elif runtime != "torch":
        insp.use_runtime(runtime, export_cache)
    return insp


def model_identity(path: str | Path | None, detector_arch: str | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(Inspector version, content hash per role, metrics per role) of the model at `path`, every
    hash verified; the version equals what `load_inspector(path).model_version` reports."""
    mf = model_files(path, detector_arch)
    loaded = {role: load_checkpoint(p) for role, p in mf.files.items()}
    order = mf.roles()
    if mf.spec.check is not None:
        mf.spec.check(loaded)
    version = "+".join(loaded[r].info.model_version for r in order)
    hashes = {r: loaded[r].info.content_hash for r in order}
    metrics = {r: loaded[r].info.metrics for r in order}
    return version, hashes, metrics
