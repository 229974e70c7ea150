"""Augmentations: geometry applied identically to image and mask, crops around defects, photometric noise."""
from __future__ import annotations

import numpy as np

from models.core.augment import defect_crop, geometric, photometric
from models.core.types import BBox


def test_geometric_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(3)
    img = np.zeros((32, 32), np.uint8)
    img[4:9, 20:30] = 200
    mask = img > 0
    for _ in range(8):
        a, m = geometric(rng, img, mask)
        assert a.shape == img.shape and np.array_equal(a > 0, m)
        assert int(m.sum()) == int(mask.sum())


def test_defect_crop_holds_part_of_the_defect():
    rng = np.random.default_rng(0)
    box = BBox(100, 60, 120, 70)
    for _ in range(20):
        y, x = defect_crop(rng, (128, 256), 64, [box], p_defect=1.0)
        assert 0 <= y <= 64 and 0 <= x <= 192
        assert x < box.x1 and box.x0 < x + 64 and y < box.y1 and box.y0 < y + 64


def test_photometric_changes_levels_but_keeps_structure():
    rng = np.random.default_rng(1)
    img = (np.indices((64, 64)).sum(0) * 2).clip(0, 255).astype(np.uint8)
    out = photometric(rng, img)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert not np.array_equal(out, img)
    assert np.corrcoef(out.ravel().astype(float), img.ravel().astype(float))[0, 1] > 0.9
