"""`defectstream train detector` and the region classifier (`train classifier --arch cnn4`) of the severity family:
their own options with the real defaults (`DetectorTrainConfig`, `RealDetectorConfig`, `ClassifierTrainConfig`).
Without --data both train on the deterministic synthetic generator."""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.data.datasets import DatasetError
from models.families.severity.train_data import (DataSpec, RealClassifierConfig, RealDetectorConfig,
                                                 train_classifier_on_data, train_detector_on_data)
from models.families.severity.train_synthetic import (ClassifierTrainConfig, DetectorTrainConfig, train_classifier,
                                                      train_detector)
from models.training.options import QUIET, RESUME, apply_overrides

__all__ = ["CNN4_DEFAULTS", "COMMAND", "REGION_OPTIONS", "json_object", "run_region_classifier"]

_d, _c = RealDetectorConfig(), ClassifierTrainConfig()  # the trainers' own defaults, shown in --help
_DET = {"arch": _d.arch, "steps": _d.steps, "batch": _d.batch, "patch": _d.patch, "lr": _d.lr, "frames": _d.n_frames,
        "val_frames": _d.n_val, "seed_base": _d.seed_base, "val_every": _d.val_every,
        "defect_weight": _d.defect_weight, "label_floor": _d.label_floor, "label_lambda": _d.label_lambda}
_CLS = {"epochs": _c.epochs, "batch": _c.batch, "lr": _c.lr, "frames": _c.n_frames, "seed_base": _c.seed_base,
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
    TrainOption("--steps", "optimisation steps", type=int, default=_DET["steps"]),
    TrainOption("--batch", "batch size", type=int, default=_DET["batch"]),
    TrainOption("--patch", "training patch size", type=int, default=_DET["patch"]),
    TrainOption("--lr", "peak learning rate (one-cycle schedule)", type=float, default=_DET["lr"]),
    TrainOption("--frames", "synthetic training frames (without --data only)", type=int, default=_DET["frames"]),
    TrainOption("--val-frames", "synthetic validation frames for choosing T (without --data only)", type=int,
                default=_DET["val_frames"]),
    TrainOption("--seed-base", "first synthetic frame seed (keep disjoint from evaluation seeds; without --data "
                "only)", type=int, default=_DET["seed_base"]),
    TrainOption("--val-every", "with --data: measure the validation mean IoU every N steps and keep the best "
                "weights", type=int, default=_DET["val_every"]),
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


def _spec(values: Mapping[str, Any]) -> Any:
    given = [flag for key, flag in _SYNTHETIC_ONLY if values.get(key) is not None]
    if given:
        raise DatasetError(f"{', '.join(given)} only apply to synthetic training, not with --data")
    return DataSpec(values.get("format", "plain"), values["data"], values.get("val_data"),
                    values.get("val_split", 0.2), values.get("split_seed", 0))


def _run_detector(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    arch = values.get("arch") or _DET["arch"]
    if values.get("data"):
        cfg = RealDetectorConfig(arch=arch, seed=values.get("seed", 0), threads=values.get("threads", 2),
                                 init=values.get("init"))
        apply_overrides(cfg, values, "steps", "batch", "patch", "lr", "defect_weight", "label_floor",
                        "label_lambda", "arch_config", "val_every")
        res = train_detector_on_data(cfg, _spec(values), values["out"], resume=bool(values.get("resume")),
                                     quiet=bool(values.get("quiet")))
        return (f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s; validation mean IoU "
                f"{res.info.metrics['val_mean_iou']:.3f}, T {res.info.threshold:.2f}")
    cfg = DetectorTrainConfig(arch=arch, seed=values.get("seed", 0), threads=values.get("threads", 2))
    apply_overrides(cfg, values, "steps", "batch", "seed_base", "patch", "lr", "defect_weight", "label_floor",
                    "label_lambda", "arch_config", n_frames="frames", n_val="val_frames")
    cfg.init = values.get("init")
    res = train_detector(cfg, values["out"], resume=bool(values.get("resume")), quiet=bool(values.get("quiet")))
    return f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s"


def run_region_classifier(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    """He & Liu's region classifier ('cnn4'), on --data or on synthetic frames; the line to print."""
    unknown = set(values.get("arch_config") or {}) - {"width"}
    if unknown:
        raise ValueError(f"--arch-config for the classifier takes only 'width', not {sorted(unknown)}")
    width = int((values.get("arch_config") or {}).get("width", _CLS["width"]))
    if values.get("data"):
        cfg = RealClassifierConfig(seed=values.get("seed", 0), threads=values.get("threads", 2),
                                   detector=values.get("detector"))
        cfg.width = width
        apply_overrides(cfg, values, "epochs", "lr", "batch")
        res = train_classifier_on_data(cfg, _spec(values), values["out"], resume=bool(values.get("resume")),
                                       quiet=bool(values.get("quiet")))
        return (f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s; validation accuracy "
                f"{res.info.metrics['val_accuracy']:.3f} (balanced {res.info.metrics['val_balanced_accuracy']:.3f})")
    cfg = ClassifierTrainConfig(seed=values.get("seed", 0), threads=values.get("threads", 2),
                                detector=values.get("detector"))
    cfg.width = width
    apply_overrides(cfg, values, "epochs", "lr", "batch", "seed_base", n_frames="frames")
    res = train_classifier(cfg, values["out"], resume=bool(values.get("resume")), quiet=bool(values.get("quiet")))
    return f"wrote {res.checkpoint} ({res.info.model_version}) in {res.seconds:.0f} s"


COMMAND = TrainCommand(
    name="detector", help="train the severity detector (He & Liu), on synthetic frames or the plant's images",
    description=("Train the severity detector. Without --data on deterministic synthetic inspection frames (CPU is "
                 "fine); with --data on the plant's annotated images, keeping the best validation weights. Shows a "
                 "progress bar with loss and ETA, writes a resumable training state every few steps and a registry "
                 "checkpoint (weights + content hash + metadata) at the end.\n\nexamples:\n"
                 "  defectstream train detector --arch fast --out runs/det --steps 3000\n"
                 "  defectstream train detector --data /data/DAGM --format dagm --out runs/dagm"),
    options=_DETECTOR_OPTIONS, run=_run_detector,
    data_help="training images of the plant (a path; see --format); without it: the synthetic generator")
