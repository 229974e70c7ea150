"""`defectstream train segmenter`: the segmenter's own options on the Lite0 engine, with their real defaults."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.training.options import lite_options, run_lite0

_OWN = (
    TrainOption("--patch", "square training crop side (a multiple of 32)", type=int,
                default_text="chosen from the data: the median image's short side (after --scale) rounded down to "
                             "32, at most 256; smaller images padded"),
    TrainOption("--scale", "resize every image by this factor first (e.g. 0.5 for 1600x256 strips); recorded in "
                "the checkpoint and applied at inference", type=float, default=1.0),
    TrainOption("--seg-loss", "cross-entropy + BCE(pos_weight 5) + Dice on defect vs background, or the earlier "
                "cross-entropy + Focal-Tversky", choices=("ce+bce_dice", "ce+focal_tversky"), default="ce+bce_dice"),
    TrainOption("--decoder", "decoder: 'sep4' = three depthwise-separable stages up to stride 4 (7.3 GFLOP per "
                "1600x256 frame), 'res4' = the same stages with residual 3x3 blocks (13.3 GFLOP), 'res2' = the earlier four "
                "residual stages up to stride 2 (19.4 GFLOP); models/README.md compares them",
                choices=("sep4", "res4", "res2"), default="sep4"),
)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    return run_lite0("segmenter", values, log, fields=("patch", "scale", "seg_loss", "decoder"))


COMMAND = TrainCommand(
    name="segmenter", help="train the segmenter (defect classes per pixel) on the plant's images",
    description=("Train the U-Net segmenter on EfficientNet-Lite0 on annotated images (masks with class "
                 "ids). The crop, step budget and early stopping are chosen from the data, printed when training "
                 "starts and recorded in the checkpoint; per-class thresholds and minimum areas are then chosen on "
                 "the validation images.\n\nexample:\n"
                 "  defectstream train segmenter --data /data/NEU-Seg --format plain --val-split 0.2 --out runs/seg"),
    options=lite_options(*_OWN), run=_run,
    data_help="training images of the plant (a path; see --format); required")
