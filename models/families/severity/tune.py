"""`train threshold` for the severity family: re-choose T and the post-processing of a detector + classifier."""
from __future__ import annotations

from typing import Any, Callable

import torch

from models.core.checkpoints import update_metrics
from models.core.families import RetuneRequest
from models.data.synthetic import VAL_SEED_BASE, render_sample
from models.families.severity.inspector import SeverityInspector, resolve_checkpoints
from models.families.severity.train_data import DataSpec, prepare_images, tune_postprocess_on_images

__all__ = ["retune"]


def _retune(req: RetuneRequest, tune: Callable[[Any], Any], tuned_on: dict[str, object], on: str = "") -> str:
    """Load the severity Inspector in `req.out`, re-choose its T and post-processing with `tune`,
    record them (and `tuned_on`) in the detector checkpoint; returns the line with old and new."""
    insp = SeverityInspector.load(req.out, device="cpu", detector_arch=req.arch or "fast")
    old = insp.threshold
    best = tune(insp)
    det_p, _ = resolve_checkpoints(req.out, req.arch or "fast")
    update_metrics(det_p, {"val_pipeline_mean_iou": best.mean_iou, **tuned_on},
                   threshold=best.threshold, postprocess=best.postprocess())
    return (f"{det_p}: T {old:.2f} -> {best.threshold:.2f}, relative {best.relative:.2f}, hysteresis low "
            f"{best.low:.2f} x T, holes up to {best.hole_area} px filled, flip TTA {'on' if best.flip_tta else 'off'} "
            f"(validation pipeline mean IoU {best.mean_iou:.3f}{on})")


def retune(req: RetuneRequest) -> str:
    """On the validation split of `req.data` when given, else on the synthetic validation seeds."""
    torch.set_num_threads(req.threads)
    if req.data:
        split = DataSpec(req.fmt, req.data, req.val_data, req.val_split, req.split_seed).load()
        val, _, _ = prepare_images(split.val)
        return _retune(req, lambda insp: tune_postprocess_on_images(insp, val, progress=True),
                       {"threshold_tuned_on": f"{len(val)} validation images of {req.data} (detector+classifier)",
                        "threshold_tuning_split": split.meta}, on=f" on {len(val)} images")
    n = req.val_frames or 100
    samples = [render_sample(VAL_SEED_BASE + i) for i in range(n)]
    return _retune(
        req, lambda insp: insp.tune_threshold([s.image for s in samples], [s.class_mask for s in samples],
                                              candidates=[0.5 * i for i in range(8, 24)],
                                              relatives=[0.0, 0.5], lows=[1.0, 0.8, 0.7, 0.6, 0.5],
                                              hole_areas=[0, 64, 256], flip_ttas=[False, True], progress=True),
        {"threshold_tuned_on": f"synthetic:seed={VAL_SEED_BASE},n={n} (detector+classifier)"})
