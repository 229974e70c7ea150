"""The OK/DEFECT family: a patch classifier on Lite0 localising with Grad-CAM / Grad-CAM++ (`okdefect.pt`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.families import FamilySpec, register_family
from models.families.okdefect import command as _command
from models.families.anomaly.tiling import cut_tiles
from models.families.okdefect import train as _train  # noqa: F401  (registers the Lite0 task "okdefect")
from models.families.okdefect.model import FILE, OkDefectInspector


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"okdefect": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"okdefect": (insp._run, to_input([t for f in frames for t in cut_tiles(f, insp.patch)[0]]))}


SPEC = register_family(FamilySpec(
    train=(_command.COMMAND,),
    name=OkDefectInspector.family, roles=("okdefect",), claim=_claim,
    load=lambda files, device: OkDefectInspector.load(files["okdefect"], device=device),
    owns=lambda p: p.name == FILE, selectors=lambda d: [d / FILE] if (d / FILE).is_file() else [],
    bench_networks=_bench_networks, example="models.families.okdefect.example", priority=45))
