"""The image classifier family: one class per image on EfficientNet-Lite0 (`classifier.pt`, arch lite0)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.checkpoints import CheckpointError, read_info
from models.core.families import FamilySpec, register_family
from models.families.image_classifier import command as _command
from models.families.image_classifier import train as _train  # noqa: F401  (registers the Lite0 task "classifier")
from models.families.image_classifier.model import ImageClassifierInspector, resize_square

FILE = "classifier.pt"
REGION_ARCH = "cnn4"  # a classifier.pt of this arch is the severity family's region classifier


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    cls = d / FILE
    if not cls.is_file():
        return None
    info = read_info(cls)
    if info.kind == "classifier" and info.arch != REGION_ARCH:
        return {"classifier": cls}
    raise CheckpointError(f"{cls} is a region classifier of the severity family; its detector_<arch>.pt is missing")


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"classifier_lite0": (insp._run, to_input([resize_square(f, insp.size) for f in frames]))}


SPEC = register_family(FamilySpec(
    train=(_command.COMMAND,),
    name=ImageClassifierInspector.family, roles=("classifier",), claim=_claim,
    load=lambda files, device: ImageClassifierInspector.load(files["classifier"], device=device),
    bench_networks=_bench_networks, example="models.families.image_classifier.example", priority=30))
