"""The severity family: He & Liu's severity detector + region classifier (`detector_<arch>.pt` +
`classifier.pt`, arch cnn4)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from models.core.checkpoints import CheckpointError, LoadedCheckpoint
from models.core.families import FamilySpec, register_family
from models.families.severity import command as _command
from models.families.severity.detector import pad_to_multiple
from models.families.severity.inspector import SeverityInspector
from models.families.severity.tune import retune

ARCHS = ("fast", "paper")  # detector variants a directory may hold; fast is preferred


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    if selected is not None:
        det: Path | None = selected
    else:
        archs = [arch] if arch else list(ARCHS)
        det = next((d / f"detector_{a}.pt" for a in archs if (d / f"detector_{a}.pt").is_file()), None)
    if det is None:
        return None
    cls = d / "classifier.pt"
    if not cls.is_file():
        raise CheckpointError(f"no classifier checkpoint {cls} beside the detector {det}")
    return {"detector": det, "classifier": cls}


def _check(loaded: Mapping[str, LoadedCheckpoint]) -> None:
    if loaded["detector"].info.class_names != loaded["classifier"].info.class_names:
        raise CheckpointError(f"{loaded['detector'].info.path} and {loaded['classifier'].info.path} disagree on "
                              f"class names")


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    x = torch.from_numpy(np.stack(frames)).unsqueeze(1).float()
    if insp.in_channels != 1:
        x = x.repeat(1, insp.in_channels, 1, 1)
    return {f"detector_{insp.det_info.arch}": (insp._run_detector, pad_to_multiple(x, int(insp.detector.pad_multiple)))}


SPEC = register_family(FamilySpec(
    train=(_command.COMMAND,),
    name=SeverityInspector.family, roles=("detector", "classifier"), claim=_claim,
    load=lambda files, device: SeverityInspector.load(files["detector"], device=device),
    owns=lambda p: p.name.startswith("detector_"), selectors=lambda d: sorted(d.glob("detector_*.pt")),
    check=_check, retune=retune, bench_networks=_bench_networks, example="models.families.severity.example",
    priority=10, options=("flip_tta",)))
