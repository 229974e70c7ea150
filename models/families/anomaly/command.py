"""`defectstream train anomaly`: PatchCore fitted on defect-free images, with its own options and real defaults."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from models.core.families import TrainCommand, TrainOption
from models.data.datasets import DatasetError
from models.families.anomaly.fit import AnomalyFitConfig, fit_anomaly
from models.training.options import BACKBONE, apply_overrides

_D = AnomalyFitConfig()

_OPTIONS = (
    BACKBONE,
    TrainOption("--tile", "input tile of the encoder", type=int,
                default_text="chosen from the data: the median shorter side of the defect-free images, at most 256"),
    TrainOption("--scale", "tiles zoomed by this factor before the encoder (e.g. 2 for 64-px tiles)", type=float,
                default=_D.scale),
    TrainOption("--good-tiles", "cut --data (and validation) into N x N tiles first and fit on the defect-free ones "
                "(for sets with a defect on every image); --tile then defaults to N", type=int,
                default_text="none (whole images)"),
    TrainOption("--max-images", "fit on at most this many defect-free images (a seeded subset)", type=int,
                default=_D.max_images),
    TrainOption("--bank-size", "upper bound of the PatchCore memory bank (coreset entries)", type=int,
                default=_D.bank_size),
    TrainOption("--coreset-ratio", "coreset share of the patch features, capped by --bank-size", type=float,
                default=_D.coreset_ratio),
    TrainOption("--false-alarm", "target false-alarm rate per good frame that sets the threshold when the "
                "validation images hold no defect (with defects: best F1)", type=float, default=_D.false_alarm),
    TrainOption("--batch", "encoder batch size", type=int, default=_D.batch),
)


def _run(values: Mapping[str, Any], log: Callable[[str], None]) -> str:
    if values.get("data") is None:
        raise DatasetError("train anomaly needs --data PATH (defect-free images, or a labelled set whose good "
                           "images are used) and --format")
    cfg = AnomalyFitConfig(backbone=values.get("backbone") or _D.backbone, seed=values.get("seed", 0),
                           threads=values.get("threads", 2), val_split=values.get("val_split", 0.2),
                           split_seed=values.get("split_seed", 0))
    apply_overrides(cfg, values, "tile", "bank_size", "coreset_ratio", "false_alarm", "batch", "good_tiles", "scale",
                    "max_images")
    res = fit_anomaly(cfg, values["out"], data=values["data"], fmt=values.get("format", "plain"),
                      val_data=values.get("val_data"))
    m = res.info.metrics
    return (f"wrote {res.checkpoint} ({res.model_version}) in {res.seconds:.0f} s; bank {res.bank_size} patches "
            f"({m['bank_mb']} MB) from {m['fitted_images']} defect-free images; threshold {res.info.threshold:.4g} "
            f"({m['threshold_rule']}); validation AUROC {m['val_image_auroc']}, false alarms "
            f"{m['val_false_alarm_rate']}")


COMMAND = TrainCommand(
    name="anomaly", help="fit the anomaly model (PatchCore) on defect-free images",
    description=("Fit PatchCore on the defect-free images of --data: a coreset memory bank of EfficientNet-Lite0 "
                 "patch features; the threshold is chosen on the validation images (best F1 with defects, else "
                 "the --false-alarm rate). No gradient training: no step budget, no resume.\n\nexample:\n"
                 "  defectstream train anomaly --data /data/MVTec/bottle --format mvtec --out runs/bottle"),
    options=_OPTIONS, run=_run,
    data_help="images of the plant (a path; see --format): defect-free ones, or a labelled set whose good images "
              "are used; required")
