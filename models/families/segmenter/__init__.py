"""The segmenter family: a residual U-Net decoder on EfficientNet-Lite0 (`segmenter.pt`), regions per class."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.families import FamilySpec, register_family
from models.families.segmenter import command as _command
from models.families.segmenter import train as _train  # noqa: F401  (registers the Lite0 task "segmenter")
from models.families.segmenter.model import SegmenterInspector, prepare_frame
from models.families.segmenter.tune import retune

FILE = "segmenter.pt"


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"segmenter": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"segmenter": (insp._run, to_input([prepare_frame(f, insp.scale) for f in frames]))}


SPEC = register_family(FamilySpec(
    train=(_command.COMMAND,),
    name=SegmenterInspector.family, roles=("segmenter",), claim=_claim,
    load=lambda files, device: SegmenterInspector.load(files["segmenter"], device=device),
    owns=lambda p: p.name == FILE, selectors=lambda d: [d / FILE] if (d / FILE).is_file() else [],
    retune=retune, bench_networks=_bench_networks, example="models.families.segmenter.example", priority=20))
