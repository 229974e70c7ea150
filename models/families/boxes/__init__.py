"""The box detector family: torchvision's RetinaNet on EfficientNet-Lite0 (`boxes.pt`), boxes without masks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.families import FamilySpec, register_family
from models.families.boxes import command as _command
from models.families.boxes import train as _train  # noqa: F401  (registers the Lite0 task "boxes")
from models.families.boxes.model import FILE, BoxesInspector, prepare_batch


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"boxes": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"boxes": (insp._run, prepare_batch(frames, insp.scale)[0])}


SPEC = register_family(FamilySpec(
    name=BoxesInspector.family, roles=("boxes",), claim=_claim,
    load=lambda files, device: BoxesInspector.load(files["boxes"], device=device),
    owns=lambda p: p.name == FILE, selectors=lambda d: [d / FILE] if (d / FILE).is_file() else [],
    bench_networks=_bench_networks, example="models.families.boxes.example", priority=50, masks=False, train=(_command.COMMAND,)))
