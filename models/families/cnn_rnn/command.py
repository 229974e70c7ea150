"""`defectstream train cnn-rnn`: the CNN+RNN image classifier's own options on the Lite0 engine."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.training.options import lite_options, run_lite0

_OWN = (
    TrainOption("--size", "images are resized to SIZE x SIZE", type=int,
                default_text="chosen from the data: the median image's longer side rounded up to 32, within 64..384"),
    TrainOption("--tile", "cut images into TILE x TILE tiles first", type=int, default_text="none (whole images)"),
)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    return run_lite0("cnn-rnn", values, log, fields=("size", "tile"))


COMMAND = TrainCommand(
    name="cnn-rnn", help="train the CNN+RNN image classifier (one class per image; a GRU over the feature rows)",
    description=("Train the CNN+RNN classifier: EfficientNet-Lite0 features, a bidirectional GRU over the rows of "
                 "the stride-32 map, one class per image (NEU-CLS-like data). Budget, input size and early stopping "
                 "are chosen from the data and recorded in the checkpoint.\n\nexample:\n"
                 "  defectstream train cnn-rnn --data /data/NEU-CLS --format neu-cls --out runs/cnn-rnn"),
    options=lite_options(*_OWN), run=_run,
    data_help="training images of the plant, one class per image (a path; see --format); required")
