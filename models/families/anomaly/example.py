"""Tiny anomaly model for the tests: PatchCore fitted in seconds on tiny synthetic frames (the good ones only)."""
from __future__ import annotations

from pathlib import Path

from models.core.families import TinyRun
from models.data.synthetic import write_plain_set
from models.families.anomaly.fit import AnomalyFitConfig, fit_anomaly


def tiny_train(directory: Path, n: int = 16) -> TinyRun:
    """Fit on the defect-free ones of `n` synthetic 64x64 images (threshold by F1 on the defective ones and a
    seeded share of the good ones); the "losses" are the coreset's covering radius as it grows."""
    data = write_plain_set(directory / "data", n, (64, 64), seed=7000, defect_prob=0.5)
    cfg = AnomalyFitConfig(tile=64, bank_size=256, coreset_ratio=0.25, threads=1, val_split=0.25)
    res = fit_anomaly(cfg, directory / "model", str(data), "plain")
    return TinyRun(res.checkpoint.parent, res.coverage)


def tiny_model(directory: Path) -> Path:
    """A tiny fitted model in `directory` (as `tiny_train`)."""
    return tiny_train(directory).directory
