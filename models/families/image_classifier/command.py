"""`defectstream train classifier`: one class per image on the Lite0 engine ('lite0', the default with --data), or
the severity family's region classifier ('cnn4', the default without --data: synthetic frames)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.families.severity.command import CNN4_DEFAULTS, REGION_OPTIONS, run_region_classifier
from models.training.lite0 import LiteTask, LiteTrainConfig
from models.training.options import lite_options, run_lite0

_L = LiteTrainConfig()


def _arch(values: Mapping[str, Any]) -> str:
    return values.get("arch") or ("lite0" if values.get("data") else "cnn4")


def _per_arch(option: TrainOption, lite0: str, cnn4: Any) -> TrainOption:
    return dataclasses.replace(option, default=None, default_text=f"lite0: {lite0}; cnn4: {cnn4}")


def _options() -> tuple[TrainOption, ...]:
    own = (
        TrainOption("--arch", "'lite0' = one class per image on the pretrained encoder, 'cnn4' = He & Liu's region "
                    "classifier (the severity family's)", choices=("lite0", "cnn4"),
                    default_text="lite0 with --data, cnn4 without (synthetic frames)"),
        TrainOption("--size", "lite0: images are resized to SIZE x SIZE", type=int,
                    default_text="chosen from the data: the median image's longer side rounded up to 32, "
                                 "within 64..384"),
        TrainOption("--tile", "lite0: cut images into TILE x TILE tiles first", type=int,
                    default_text="none (whole images)"),
        *REGION_OPTIONS,
    )
    per_arch = {"epochs": ("none (the step budget)", CNN4_DEFAULTS["epochs"]),
                "batch": (_L.batch, CNN4_DEFAULTS["batch"]), "lr": (LiteTask.default_lr, CNN4_DEFAULTS["lr"])}
    out = []
    for o in lite_options(*own):
        if o.key in per_arch:
            o = _per_arch(o, *per_arch[o.key])
        out.append(o)
    return tuple(out)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    if _arch(values) == "cnn4":
        return run_region_classifier(values, log)
    return run_lite0("classifier", values, log, fields=("size", "tile"))


COMMAND = TrainCommand(
    name="classifier", help="train the image classifier (one class per image), or the region classifier (cnn4)",
    description=("Train a classifier: with --data by default one class per image on EfficientNet-Lite0 (budget, "
                 "input size and early stopping chosen from the data, recorded in the checkpoint); with --arch "
                 "cnn4, or without --data, He & Liu's region classifier of the severity family (synthetic frames "
                 "without --data).\n\nexamples:\n"
                 "  defectstream train classifier --data /data/NEU --format neu-cls --out runs/neu\n"
                 "  defectstream train classifier --out runs/det --epochs 6 --detector runs/det/detector_fast.pt"),
    options=_options(), run=_run,
    data_help="training images of the plant (a path; see --format); without it: cnn4 on the synthetic generator")
