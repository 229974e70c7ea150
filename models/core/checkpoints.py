"""Checkpoints: save, validate, load and list model checkpoint files (the family registry is `models.core.families`).

A checkpoint is one `.pt` file holding {"meta": {...}, "state_dict": {...}} plus a readable
`.json` sidecar with the same metadata. The metadata carries the model version, the content
hash (SHA-256 over the weights and the architecture config), the kind (detector|classifier),
architecture + config, input spec, threshold T, class names, training data spec and
evaluation metrics. `load_checkpoint` recomputes the hash and refuses a file whose weights do
not match it (`CheckpointError`), as well as files that are not checkpoints at all.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "CheckpointInfo", "LoadedCheckpoint", "content_hash", "save_checkpoint",
           "load_checkpoint", "read_info", "list_checkpoints", "update_metrics", "FORMAT_VERSION",
           "DEFAULT_CHECKPOINT_DIR"]

FORMAT_VERSION = 1
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"  # the packaged synthetic default
_REQUIRED = ("format_version", "kind", "model_version", "content_hash", "arch", "arch_config", "input_spec",
             "class_names")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, incomplete, or its weights do not match its hash."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Metadata of one checkpoint (what `defectstream models list|show` prints)."""

    path: str
    kind: str  # "detector" | "classifier"
    model_version: str
    content_hash: str
    arch: str
    arch_config: dict[str, Any]
    input_spec: dict[str, Any]
    class_names: list[str]
    threshold: float | None = None
    train_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    postprocess: dict[str, Any] = field(default_factory=dict)  # e.g. {"relative": 0.5}
    created: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoadedCheckpoint:
    """A validated checkpoint: its info and weights."""

    def __init__(self, info: CheckpointInfo, state_dict: dict[str, torch.Tensor]) -> None:
        self.info = info
        self.state_dict = state_dict


def content_hash(state_dict: dict[str, torch.Tensor], arch: str, arch_config: dict[str, Any]) -> str:
    """SHA-256 over the architecture, its config and every tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps({"arch": arch, "config": arch_config}, sort_keys=True).encode())
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], *, kind: str, arch: str,
                    arch_config: dict[str, Any], input_spec: dict[str, Any], class_names: list[str],
                    threshold: float | None = None, train_data: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> CheckpointInfo:
    """Write `path` (.pt) and its `.json` sidecar atomically (temp file + rename).

    The model version is `<kind>-<arch>-<first 12 hex of the content hash>`, so equal weights
    always get the same version.
    """
    sd = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    digest = content_hash(sd, arch, arch_config)
    info = CheckpointInfo(
        path=str(path), kind=kind, model_version=f"{kind}-{arch}-{digest[:12]}", content_hash=digest, arch=arch,
        arch_config=dict(arch_config), input_spec=dict(input_spec), class_names=list(class_names),
        threshold=None if threshold is None else float(threshold), train_data=dict(train_data or {}),
        metrics=dict(metrics or {}), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    _write(Path(path), info, sd)
    return info


def _write(path: Path, info: CheckpointInfo, sd: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = info.to_dict()
    meta.pop("path")
    buf = io.BytesIO()
    torch.save({"meta": meta, "state_dict": sd}, buf)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    side = path.with_suffix(".json")
    side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise CheckpointError(f"checkpoint {path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or "meta" not in blob or "state_dict" not in blob:
        raise CheckpointError(f"checkpoint {path} lacks 'meta'/'state_dict'")
    meta = blob["meta"]
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} metadata lacks {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {meta['format_version']}, expected {FORMAT_VERSION}")
    return meta, blob["state_dict"]


def _info(path: Path, meta: dict[str, Any]) -> CheckpointInfo:
    known = {f for f in CheckpointInfo.__dataclass_fields__ if f != "path"}
    return CheckpointInfo(path=str(path), **{k: v for k, v in meta.items() if k in known})


def load_checkpoint(path: str | os.PathLike[str], expected_kind: str | None = None) -> LoadedCheckpoint:
    """Load and validate a checkpoint.

    Raises:
        CheckpointError: missing/unreadable file, incomplete metadata, wrong kind, or a content
            hash that does not match the weights (a tampered or corrupted file).
    """
    p = Path(path)
    meta, sd = _read(p)
    if expected_kind is not None and meta["kind"] != expected_kind:
        raise CheckpointError(f"checkpoint {p} is a {meta['kind']}, expected a {expected_kind}")
    digest = content_hash(sd, meta["arch"], meta["arch_config"])
    if digest != meta["content_hash"]:
        raise CheckpointError(
            f"checkpoint {p} failed validation: content hash {digest[:12]}… does not match the recorded "
            f"{meta['content_hash'][:12]}… (file modified or corrupted; retrain or restore it)"
        )
    return LoadedCheckpoint(_info(p, meta), sd)


def read_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Metadata of a checkpoint without hash validation (fast; for listings)."""
    p = Path(path)
    meta, _ = _read(p)
    return _info(p, meta)


def update_metrics(path: str | os.PathLike[str], metrics: dict[str, Any], threshold: float | None = None,
                   postprocess: dict[str, Any] | None = None) -> CheckpointInfo:
    """Record evaluation metrics (and optionally T / post-processing settings) in an existing
    checkpoint; weights and content hash unchanged."""
    loaded = load_checkpoint(path)
    info = loaded.info
    new = CheckpointInfo(**{**info.to_dict(), "metrics": {**info.metrics, **metrics},
                            "threshold": info.threshold if threshold is None else float(threshold),
                            "postprocess": {**info.postprocess, **(postprocess or {})}})
    _write(Path(path), new, loaded.state_dict)
    return new


def list_checkpoints(root: str | os.PathLike[str]) -> list[CheckpointInfo]:
    """All readable checkpoints (`*.pt`) under `root`, sorted by path; unreadable files are skipped."""
    out = []
    for p in sorted(Path(root).rglob("*.pt")):
        if p.name.startswith("train_state"):
            continue
        try:
            out.append(read_info(p))
        except CheckpointError:
            continue
    return out
