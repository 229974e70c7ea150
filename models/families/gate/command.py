"""`defectstream train gate`: the gate's own options on the Lite0 engine, with their real defaults."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.training.options import lite_options, run_lite0

SIZE = TrainOption("--size", "images are resized to SIZE x SIZE", type=int,
                   default_text="chosen from the data: the median image's longer side rounded up to 32, within 64..384")
_OWN = (
    SIZE,
    TrainOption("--tile", "cut images into TILE x TILE tiles first (good tiles from around the defects when a data "
                "set has no defect-free images)", type=int, default_text="none (whole images)"),
)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    return run_lite0("gate", values, log, fields=("size", "tile"))


COMMAND = TrainCommand(
    name="gate", help="train the gate (defect / no defect per image) that runs in front of any model",
    description=("Train the image-level defect / no-defect gate on EfficientNet-Lite0. Its threshold is chosen "
                 "recall-first on the validation images; the budget and early stopping are chosen from the data "
                 "and recorded in the checkpoint.\n\nexample:\n"
                 "  defectstream train gate --data /data/DAGM --format dagm --out runs/dagm-gate"),
    options=lite_options(*_OWN), run=_run,
    data_help="training images of the plant with defective and defect-free ones (a path; see --format); required")
