"""`defectstream train okdefect`: the OK/DEFECT patch classifier's own options on the Lite0 engine."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.families.okdefect.train import DEFAULT_PATCH
from models.training.options import lite_options, run_lite0

_OWN = (
    TrainOption("--tile", "patch side: every image is cut into TILE x TILE patches, DEFECT when any pixel (or box) "
                "is a defect", type=int, default=DEFAULT_PATCH),
    TrainOption("--size", "network input side: patches are resized to SIZE x SIZE (above --tile: finer features "
                "and Grad-CAM maps for small defects, at (SIZE/TILE)^2 the compute)", type=int,
                default_text="the tile (no resizing)"),
)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    return run_lite0("okdefect", values, log, fields=("tile", "size"))


COMMAND = TrainCommand(
    name="okdefect", help="train the OK/DEFECT patch classifier with Grad-CAM regions",
    description=("Train the OK/DEFECT patch classifier on EfficientNet-Lite0; the patch threshold and the CAM "
                 "and its threshold are chosen on the validation images.\n\nexample:\n"
                 "  defectstream train okdefect --data /data/NEU-Seg --format plain --out runs/okd"),
    options=lite_options(*_OWN), run=_run,
    data_help="training images of the plant with masks or boxes (a path; see --format); required")
