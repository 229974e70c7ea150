"""Severity labels (He & Liu 2020) on hand-made arrays with hand-computed values."""
import numpy as np
import pytest

from models.families.severity.labels import cell_min_max, defect_cells, severity_labels


def _row_image(cells: list[list[int]]) -> np.ndarray:
    """One cell row of 2x2 cells; each entry lists the cell's 4 pixels (row-major)."""
    img = np.zeros((2, 2 * len(cells)), np.uint8)
    for i, px in enumerate(cells):
        img[:, 2 * i:2 * i + 2] = np.array(px, np.uint8).reshape(2, 2)
    return img


IMG = _row_image([[10, 12, 11, 10], [40, 50, 45, 42], [30, 35, 33, 31], [14, 16, 15, 15]])
MASK = np.zeros_like(IMG)
MASK[:, 2:6] = 1  # cells 1 and 2 are defect cells


def test_cell_min_max_and_defect_cells():
    mn, mx = cell_min_max(IMG, 2)
    assert mn.tolist() == [[10, 40, 30, 14]]
    assert mx.tolist() == [[12, 50, 35, 16]]
    assert defect_cells(MASK, 2).tolist() == [[False, True, True, False]]


def test_hand_computed_values_truncated():
    # run [1, 3): neighbours cells 0 and 3 -> mN = min(10, 14) = 10, MN = max(12, 16) = 16
    # cell 1: d0 = min(|40-10|, |50-16|) = 30, d1 = |50-10| = 40, s = 70 -> truncated at 60 -> 12
    # cell 2: d0 = min(|30-10|, |35-16|) = 19, d1 = |35-10| = 25, s = 44 -> 44/60*12 = 8.8
    out = severity_labels(IMG, MASK, cell=2, lam=60.0)
    np.testing.assert_allclose(out, [[0.0, 12.0, 8.8, 0.0]], rtol=1e-6)


def test_hand_computed_values_untruncated():
    out = severity_labels(IMG, MASK, cell=2, lam=100.0)
    np.testing.assert_allclose(out, [[0.0, 8.4, 5.28, 0.0]], rtol=1e-6)


def test_run_at_border_uses_the_existing_neighbour():
    img = _row_image([[50, 50, 50, 50], [20, 22, 21, 20]])
    mask = np.zeros_like(img)
    mask[:, :2] = 1
    # only the right neighbour: mN = 20, MN = 22; d0 = min(30, 28) = 28, d1 = 30 -> 58/100*12
    out = severity_labels(img, mask, cell=2, lam=100.0)
    np.testing.assert_allclose(out, [[6.96, 0.0]], rtol=1e-6)


def test_flat_defect_gets_the_floor_or_zero():
    img = np.full((4, 8), 20, np.uint8)
    mask = np.zeros_like(img)
    mask[:2, 2:4] = 1
    assert severity_labels(img, mask, cell=2)[0, 1] == pytest.approx(1.0)
    assert severity_labels(img, mask, cell=2, min_defect_severity=0.0)[0, 1] == 0.0
    assert severity_labels(img, mask, cell=2).sum() == pytest.approx(1.0)


def test_colour_input_and_padding():
    img = np.repeat(IMG[:, :7, None], 3, axis=2)  # width 7 -> padded to 8
    out = severity_labels(img, MASK[:, :7], cell=2, lam=60.0)
    assert out.shape == (1, 4)
    assert out[0, 1] == pytest.approx(12.0)


def test_bad_lambda():
    with pytest.raises(ValueError):
        severity_labels(IMG, MASK, lam=0)
