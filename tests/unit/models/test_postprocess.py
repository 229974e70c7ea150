"""Threshold, 4-px joining and connected components."""
import numpy as np
import pytest

from models.core.regions import choose_threshold, fill_holes, image_iou, regions_from_severity, upsample_severity
from models.core.types import BBox


def _map(blocks):
    m = np.zeros((40, 60), np.float32)
    for y0, y1, x0, x1, v in blocks:
        m[y0:y1, x0:x1] = v
    return m


def test_components_closer_than_4px_are_joined():
    m = _map([(10, 20, 10, 20, 5.0), (10, 20, 24, 30, 5.0)])  # gap of 4 px (cols 20..23)
    regs = regions_from_severity(m, 1.0)
    assert len(regs) == 1
    r = regs[0]
    assert r.bbox == BBox(10, 10, 30, 20)
    assert r.area_px == 100 + 60  # the bridge is not part of the mask
    assert r.mask.shape == (10, 20) and r.mask.dtype == bool


def test_components_farther_apart_stay_separate_and_small_ones_drop():
    m = _map([(10, 20, 10, 20, 5.0), (10, 20, 26, 32, 9.0), (30, 32, 50, 52, 5.0)])
    regs = regions_from_severity(m, 1.0, min_area=12)
    assert [r.bbox for r in regs] == [BBox(10, 10, 20, 20), BBox(26, 10, 32, 20)]
    assert regs[1].severity_max == 9.0 and regs[1].severity_mean == 9.0


def test_threshold_matters():
    m = _map([(5, 10, 5, 10, 2.0), (20, 30, 20, 30, 6.0)])
    assert len(regions_from_severity(m, 1.0)) == 2
    assert len(regions_from_severity(m, 3.0)) == 1
    assert regions_from_severity(np.zeros((8, 8), np.float32), 1.0) == []


def test_hysteresis_grows_seeded_regions_only():
    # a "scratch": a strong stretch (8) continuing as a faint one (4), and a separate faint blob (4)
    m = _map([(10, 13, 5, 20, 8.0), (10, 13, 20, 45, 4.0), (25, 35, 10, 20, 4.0)])
    single = regions_from_severity(m, 6.0)
    assert [r.bbox for r in single] == [BBox(5, 10, 20, 13)]
    grown = regions_from_severity(m, 6.0, low=0.5)
    assert [r.bbox for r in grown] == [BBox(5, 10, 45, 13)]  # the faint blob has no seed: still dropped
    assert grown[0].area_px == 3 * 40 and grown[0].severity_max == 8.0
    with pytest.raises(ValueError):
        regions_from_severity(m, 6.0, low=0.0)


def test_upsample_and_choose_threshold():
    cells = np.zeros((4, 4), np.float32)
    cells[1:3, 1:3] = 8.0
    up = upsample_severity(cells, 4, (15, 16))
    assert up.shape == (15, 16)
    gt = np.zeros((15, 16), np.uint8)
    gt[4:12, 4:12] = 1
    t, miou = choose_threshold([up], [gt])
    assert 0.5 < t < 8.0 and miou > 0.8
    assert image_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) is None


def test_small_enclosed_holes_are_filled_and_open_bays_are_not():
    ring = _map([(10, 30, 10, 30, 8.0)])
    ring[17:23, 17:23] = 0.0  # a 36 px hole in the middle (a dent's flat centre)
    ring[10:20, 27:30] = 0.0  # a bay open to the outside
    plain = regions_from_severity(ring, 4.0)
    filled = regions_from_severity(ring, 4.0, hole_area=50)
    assert plain[0].area_px + 36 == filled[0].area_px
    assert regions_from_severity(ring, 4.0, hole_area=20)[0].area_px == plain[0].area_px  # hole too large
    m = np.zeros((5, 5), bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    assert fill_holes(m, 9).all() and not fill_holes(m, 8)[2, 2]
    assert not fill_holes(np.zeros((3, 3), bool), 5).any()
