"""`train threshold` for the segmenter: re-choose its per-class thresholds and minimum areas on validation images."""
from __future__ import annotations

from pathlib import Path

import torch

from models.core.checkpoints import update_metrics
from models.core.families import RetuneRequest
from models.data.datasets import DatasetError, load_split
from models.families.segmenter.model import SegmenterInspector, choose_postprocess, frame_probabilities

__all__ = ["retune"]


def retune(req: RetuneRequest) -> str:
    """On the validation split of `req.data` (required); returns the line with the chosen settings."""
    if not req.data:
        raise DatasetError("train threshold for a segmenter needs --data PATH (and --format / --val-data)")
    torch.set_num_threads(req.threads)
    path = Path(req.out) / "segmenter.pt"
    insp = SegmenterInspector.load(path, device="cpu")
    split = load_split(req.fmt, req.data, val_data=req.val_data, val_split=req.val_split, seed=req.split_seed)
    post, ious = choose_postprocess(frame_probabilities(insp.model, split.val, insp.scale, "cpu"),
                                    len(insp.class_names))
    meta = {k: v for k, v in split.meta.items() if k != "val_sources"}
    update_metrics(path, {"val_iou_per_class_postprocessed": dict(zip(insp.class_names, ious)),
                          "postprocess_tuned_on": meta}, postprocess=post.to_dict())
    return f"{path}: " + ", ".join(f"{c}: p >= {t:.2f}, area >= {a} px (val IoU {v:.3f})" for c, t, a, v in
                                   zip(insp.class_names, post.thresholds, post.min_areas, ious))
