"""Training augmentation, every recipe in one place. Pure numpy, seeded by the caller.

He & Liu 2020 (the severity family): shifted crops around defects, flips, 90-degree rotations,
sensor noise, illumination and contrast changes (`defect_crop`, `geometric`, `photometric`).
The Lite0 families (segmenter, gate, image classifier): `lite_geometric`, `lite_photometric`.

Contrast gain stays within +-5 %: a larger gain would turn mild imprints into severe ones
(their class is their contrast).
"""
from __future__ import annotations

import numpy as np

from models.core.types import BBox

__all__ = ["defect_crop", "geometric", "photometric", "lite_geometric", "lite_photometric"]


def defect_crop(rng: np.random.Generator, shape: tuple[int, int], size: int, boxes: list[BBox],
                p_defect: float = 0.6) -> tuple[int, int]:
    """Top-left (y, x) of a size x size crop: with probability p_defect one that holds a
    randomly shifted defect box (as much of it as fits), otherwise uniform."""
    H, W = shape
    if boxes and rng.random() < p_defect:
        b = boxes[int(rng.integers(len(boxes)))]
        y_lo, y_hi = b.y1 - size, b.y0
        x_lo, x_hi = b.x1 - size, b.x0
        if y_lo > y_hi:
            y_lo, y_hi = y_hi, y_lo
        if x_lo > x_hi:
            x_lo, x_hi = x_hi, x_lo
        y = int(rng.integers(y_lo, y_hi + 1))
        x = int(rng.integers(x_lo, x_hi + 1))
    else:
        y = int(rng.integers(0, max(1, H - size + 1)))
        x = int(rng.integers(0, max(1, W - size + 1)))
    return int(np.clip(y, 0, max(0, H - size))), int(np.clip(x, 0, max(0, W - size)))


def geometric(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """Same random flip / 90-degree rotation applied to every (H, W[, ...]) array."""
    k = int(rng.integers(4)) if arrays[0].shape[0] == arrays[0].shape[1] else 2 * int(rng.integers(2))
    fl = rng.random() < 0.5
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(0, 1))
        if fl:
            a = a[:, ::-1]
        out.append(np.ascontiguousarray(a))
    return out


def photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """uint8 -> uint8: brightness offset, +-5 % gain, a linear illumination ramp, noise."""
    f = img.astype(np.float32)
    h, w = f.shape[:2]
    ramp = np.linspace(-1, 1, w, dtype=np.float32)[None, :] * rng.uniform(-0.08, 0.08)
    ramp = ramp + np.linspace(-1, 1, h, dtype=np.float32)[:, None] * rng.uniform(-0.08, 0.08)
    f = f * (rng.uniform(0.95, 1.05) + ramp) + rng.uniform(-20, 20)
    f += rng.normal(0, rng.uniform(0, 3.0), f.shape).astype(np.float32)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def lite_photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """The Lite0 families' brightness and contrast: contrast x0.8..1.25 about the mean, offset -20..20 grey levels."""
    a = rng.uniform(0.8, 1.25)
    b = rng.uniform(-20, 20)
    m = float(img.mean())
    out = (img.astype(np.float32) - m) * a + m + b
    return np.clip(out, 0, 255).astype(np.uint8)


def lite_geometric(rng: np.random.Generator, img: np.ndarray,
                   cm: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The Lite0 families' flips and (square images only) transposition, the mask `cm` alike."""
    if rng.random() < 0.5:
        img, cm = img[:, ::-1], None if cm is None else cm[:, ::-1]
    if rng.random() < 0.5:
        img, cm = img[::-1], None if cm is None else cm[::-1]
    if img.shape[0] == img.shape[1] and rng.random() < 0.5:
        img, cm = np.swapaxes(img, 0, 1), None if cm is None else cm.T
    return np.ascontiguousarray(img), None if cm is None else np.ascontiguousarray(cm)
