"""The gate: an image-level defect / no-defect classifier (`gate.pt`) run in front of any family's model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.families import FamilySpec, register_family
from models.families.gate import command as _command
from models.families.gate import train as _train  # noqa: F401  (registers the Lite0 task "gate")
from models.families.gate.model import GatedInspector
from models.families.image_classifier.model import resize_square

FILE = "gate.pt"


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"gate": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"gate": (insp._run, to_input([resize_square(f, insp.size) for f in frames]))}


SPEC = register_family(FamilySpec(
    train=(_command.COMMAND,),
    name="gate", roles=("gate",), claim=_claim,
    load=lambda files, device, inner: GatedInspector.load(files["gate"], inner, device=device),
    bench_networks=_bench_networks, example="models.families.gate.example", wraps=True, priority=90))
