"""`defectstream train boxes`: the RetinaNet box detector's own options on the Lite0 engine, with their defaults."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.families.boxes.train import BoxesTask
from models.training.options import lite_options, run_lite0

_OWN = (
    TrainOption("--patch", "square training crop side (a multiple of 32)", type=int,
                default_text="chosen from the data: the median image's short side (after --scale) rounded down to "
                             "32, at most 512; smaller images padded"),
    TrainOption("--scale", "resize every image (and its boxes) by this factor first; recorded in the checkpoint and "
                "applied at inference", type=float, default=1.0),
)


def _options() -> tuple[TrainOption, ...]:
    return tuple(dataclasses.replace(o, default_text=f"{BoxesTask.default_lr:g}, the box family's (the engine's "
                                                      "2e-3 blows fresh RetinaNet heads up)") if o.key == "lr" else o
                 for o in lite_options(*_OWN))


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    return run_lite0("boxes", values, log, fields=("patch", "scale"))


COMMAND = TrainCommand(
    name="boxes", help="train the RetinaNet box detector (boxes, no masks) on the plant's images",
    description=("Train torchvision's RetinaNet (FPN, focal loss) on the EfficientNet-Lite0 encoder from box data "
                 "(NEU-DET VOC XML with --format neu, or the connected components of any mask format). The anchors "
                 "are sized from the training boxes' scale and aspect quantiles, the crop and step budget from the "
                 "data, the score threshold on the validation images; all printed and recorded in the checkpoint."
                 "\n\nexample:\n"
                 "  defectstream train boxes --data /data/NEU-DET --format neu --out runs/boxes"),
    options=_options(), run=_run,
    data_help="training images of the plant with boxes or masks (a path; see --format); required")
