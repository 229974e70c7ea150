"""The anomaly family: PatchCore on the pretrained Lite0 encoder, fitted on defect-free images (`anomaly.pt`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.families import FamilySpec, register_family
from models.families.anomaly import command as _command
from models.families.anomaly.model import FILE, AnomalyInspector
from models.families.anomaly.tiling import cut_tiles


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"anomaly": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"anomaly": (insp._run, to_input([t for f in frames for t in cut_tiles(f, insp.tile)[0]]))}


SPEC = register_family(FamilySpec(
    train=(_command.COMMAND,),
    name=AnomalyInspector.family, roles=("anomaly",), claim=_claim,
    load=lambda files, device: AnomalyInspector.load(files["anomaly"], device=device),
    owns=lambda p: p.name == FILE, selectors=lambda d: [d / FILE] if (d / FILE).is_file() else [],
    bench_networks=_bench_networks, example="models.families.anomaly.example", priority=40))
