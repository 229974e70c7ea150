"""The CNN+RNN family: one class per image, a bidirectional GRU over the rows of the Lite0 map (`cnn_rnn.pt`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.core.backbone import to_input
from models.core.families import FamilySpec, register_family
from models.families.cnn_rnn import command as _command
from models.families.cnn_rnn import train as _train  # noqa: F401  (registers the Lite0 task "cnn-rnn")
from models.families.cnn_rnn.model import FILE, CnnRnnInspector
from models.families.image_classifier.model import resize_square


def _claim(d: Path, selected: Path | None, arch: str | None) -> dict[str, Path] | None:
    return {"cnn-rnn": d / FILE} if (d / FILE).is_file() else None


def _bench_networks(insp: Any, frames: list) -> dict[str, tuple[Any, Any]]:
    return {"cnn-rnn": (insp._run, to_input([resize_square(f, insp.size) for f in frames]))}


SPEC = register_family(FamilySpec(
    name=CnnRnnInspector.family, roles=("cnn-rnn",), claim=_claim,
    load=lambda files, device: CnnRnnInspector.load(files["cnn-rnn"], device=device),
    owns=lambda p: p.name == FILE, selectors=lambda d: [d / FILE] if (d / FILE).is_file() else [],
    bench_networks=_bench_networks, example="models.families.cnn_rnn.example", priority=35, train=(_command.COMMAND,)))
