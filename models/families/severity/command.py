"""`defectstream train detector` and the region classifier (`train classifier --arch cnn4`) of the severity family:
their own options with the real defaults (`DetectorTrainConfig`, `RealDetectorConfig`, `ClassifierTrainConfig`).
Without --data both train on the deterministic synthetic generator."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.data.datasets import DatasetError
from models.families.severity.train import ClassifierTrainConfig, DetectorTrainConfig, train_classifier, train_detector
from models.families.severity.train_data import DataSpec
from models.training.defaults import MAX_STEPS, MIN_DEFECTIVE_VAL, MIN_STEPS, PASSES, parse_duration
from models.training.options import QUIET, RESUME, apply_overrides

__all__ = ["CNN4_DEFAULTS", "COMMAND", "REGION_OPTIONS", "json_object", "run_region_classifier"]

_d, _c = DetectorTrainConfig(), ClassifierTrainConfig()  # the trainers' own defaults, shown in --help
_DET = {"arch": _d.arch, "batch": _d.batch, "lr": 2e-3, "frames": _d.n_frames, "val_frames": _d.n_val,
        "seed_base": _d.seed_base, "defect_weight": _d.defect_weight, "label_floor": _d.label_floor,
        "label_lambda": _d.label_lambda, "p_defect": _d.p_defect}
_CLS = {"epochs": _c.epochs, "batch": _c.batch, "lr": 2e-3, "frames": _c.n_frames, "seed_base": _c.seed_base,
        "width": _c.width}


def json_object(text: str) -> dict:
    """A JSON object from the command line (--arch-config). Raises ValueError otherwise."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object, e.g. '{\"width\": 48}'")
    return value


_SYNTHETIC_ONLY = (("frames", "--frames"), ("val_frames", "--val-frames"), ("seed_base", "--seed-base"))

_DETECTOR_OPTIONS = (
    TrainOption("--arch", "the paper's network (4x4 cells) or the fast CPU variant (2x2 cells)",
                choices=("paper", "fast"), default=_DET["arch"]),
    TrainOption("--steps", "optimisation steps", type=int,
                default_text=f"chosen from the data: {PASSES:g} passes over the patches that tile the training "
                             f"images, clamped to {MIN_STEPS}..{MAX_STEPS}, printed when training starts"),
    TrainOption("--time-budget", "wall-time budget, e.g. 20m, 1h30m, 900s; training ends at the first of this and "
                "the step budget", type=parse_duration, metavar="DURATION", default_text="no time limit"),
    TrainOption("--batch", "batch size", type=int, default=_DET["batch"]),
    TrainOption("--patch", "training patch size (a multiple of 16)", type=int,
                default_text="chosen from the data: the median image's short side rounded down to 16, at most 128"),
    TrainOption("--lr", "peak learning rate (warm-up + cosine)", type=float, default=_DET["lr"]),
    TrainOption("--patience", "stop once this many validations bring no better smoothed (EMA) validation mean IoU, "
                f"after half the budget and only with at least {MIN_DEFECTIVE_VAL} defective validation images",
                type=int, default=3),
    TrainOption("--no-balance", "draw training images uniformly instead of half defective, half good per batch",
                switch=True, default=True, dest="balanced"),
    TrainOption("--p-defect", "share of a defective image's patches centred on one of its defects", type=float,
                default=_DET["p_defect"]),
    TrainOption("--frames", "synthetic training frames (without --data only)", type=int, default=_DET["frames"]),
    TrainOption("--val-frames", "synthetic validation frames for choosing T (without --data only)", type=int,
                default=_DET["val_frames"]),
    TrainOption("--seed-base", "first synthetic frame seed (keep disjoint from evaluation seeds; without --data "
                "only)", type=int, default=_DET["seed_base"]),
    TrainOption("--val-every", "measure the validation mean IoU every N steps (the kept weights are those of the "
                "best smoothed value)", type=int, default_text="chosen from the budget: 6..15 times per run"),
    TrainOption("--init", "warm start from this detector checkpoint (continue training with a new schedule)",
                default_text="none (random initialisation)"),
    TrainOption("--defect-weight", "extra L2 weight of defect cells against class imbalance", type=float,
                default=_DET["defect_weight"]),
    TrainOption("--arch-config", "architecture options as JSON, e.g. '{\"width\": 48, \"stem\": 24, "
                "\"stem_blocks\": 1}' for the fast detector", type=json_object, metavar="JSON",
                default_text="the architecture's own defaults"),
    TrainOption("--label-floor", "minimum severity label of annotated cells (the paper's rule is 0)", type=float,
                default=_DET["label_floor"]),
    TrainOption("--label-lambda", "truncation lambda of the severity labels in grey levels", type=float,
                default=_DET["label_lambda"]),
    RESUME, QUIET,
)

REGION_OPTIONS = (
    TrainOption("--detector", "cnn4: detector checkpoint whose false positives become background crops",
                default_text="none (no hard negatives)"),
    TrainOption("--frames", "cnn4 without --data: synthetic training frames", type=int, default=_CLS["frames"]),
    TrainOption("--seed-base", "cnn4 without --data: first synthetic frame seed (keep disjoint from evaluation "
                "seeds)", type=int, default=_CLS["seed_base"]),
    TrainOption("--arch-config", "cnn4: architecture options as JSON, only '{\"width\": N}'", type=json_object,
                metavar="JSON", default_text=f"width {_CLS['width']}"),
)
"""The options the region classifier adds to `train classifier` (its --epochs/--batch/--lr are the image
classifier's, with the cnn4 defaults in their help: `CNN4_DEFAULTS`)."""
CNN4_DEFAULTS = {"epochs": _CLS["epochs"], "batch": _CLS["batch"], "lr": _CLS["lr"]}


def _spec(values: Mapping[str, Any]) -> DataSpec | None:
    """The data of a run: --data with its split, or None (the synthetic generator)."""
    if not values.get("data"):
        return None
    given = [flag for key, flag in _SYNTHETIC_ONLY if values.get(key) is not None]
    if given:
        raise DatasetError(f"{', '.join(given)} only apply to synthetic training, not with --data")
    return DataSpec(values.get("format", "plain"), values["data"], values.get("val_data"),
                    values.get("val_split", 0.2), values.get("split_seed", 0))


def _run_detector(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    cfg = DetectorTrainConfig(arch=values.get("arch") or _DET["arch"], seed=values.get("seed", 0),
                              threads=values.get("threads", 2), init=values.get("init"))
    apply_overrides(cfg, values, "steps", "time_budget", "batch", "patch", "lr", "patience", "balanced", "p_defect",
                    "defect_weight", "label_floor", "label_lambda", "arch_config", "val_every", "seed_base",
                    n_frames="frames", n_val="val_frames")
    res = train_detector(cfg, values["out"], _spec(values), resume=bool(values.get("resume")),
                         quiet=bool(values.get("quiet")), log=log)
    ch = res.info.train_data.get("choices", {})
    return (f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s after {ch.get('steps_run')} "
            f"steps (ended by {ch.get('ended_by')}); validation mean IoU {res.info.metrics['val_mean_iou']:.3f}, "
            f"T {res.info.threshold:.2f}")


def run_region_classifier(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    """He & Liu's region classifier ('cnn4'), on --data or on synthetic frames; the line to print."""
    unknown = set(values.get("arch_config") or {}) - {"width"}
    if unknown:
        raise ValueError(f"--arch-config for the classifier takes only 'width', not {sorted(unknown)}")
    cfg = ClassifierTrainConfig(seed=values.get("seed", 0), threads=values.get("threads", 2),
                                detector=values.get("detector"),
                                width=int((values.get("arch_config") or {}).get("width", _CLS["width"])))
    apply_overrides(cfg, values, "epochs", "steps", "time_budget", "lr", "batch", "balanced", "seed_base",
                    n_frames="frames")
    res = train_classifier(cfg, values["out"], _spec(values), resume=bool(values.get("resume")),
                           quiet=bool(values.get("quiet")), log=log)
    m = res.info.metrics
    return (f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s; validation balanced accuracy "
            f"{m['val_balanced_accuracy']:.3f} (accuracy {m['val_accuracy']:.3f})")


COMMAND = TrainCommand(
    name="detector", help="train the severity detector (He & Liu), on synthetic frames or the plant's images",
    description=("Train the severity detector. Without --data on deterministic synthetic inspection frames (CPU is "
                 "fine); with --data on the plant's annotated images. It trains on the engine every family uses: the budget "
                 "(steps and/or --time-budget), balanced batches and early stopping are chosen from the data, printed "
                 "and recorded; a progress bar shows loss and ETA; a resumable training state is written after every "
                 "validation and a registry checkpoint (weights + content hash + metadata) at the end, its threshold "
                 "and post-processing chosen on the validation images.\n\nexamples:\n"
                 "  defectstream train detector --arch fast --out runs/det\n"
                 "  defectstream train detector --data /data/DAGM --format dagm --out runs/dagm"),
    options=_DETECTOR_OPTIONS, run=_run_detector,
    data_help="training images of the plant (a path; see --format); without it: the synthetic generator")
