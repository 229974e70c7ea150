"""Per-cell severity labels from pixel annotations (He & Liu 2020, label generation).

For every defect cell (a cell of the network's output resolution holding any annotated
pixel) take its min/max intensity (mD, MD) and the min/max (mN, MN) over the nearest
non-defect cells to its left and right on the same cell row (the cells that bound the run of
defect cells the cell belongs to). Then

    d0 = min(|mD - mN|, |MD - MN|),  d1 = |MD - mN|,  s = d0 + d1,
    severity = 12 * min(s, lambda) / lambda.

Non-defect cells get 0. Where a run touches the image border only the existing side is used;
where a whole cell row is defect, the non-defect cells of the whole image are used (and if
there are none, the cell gets the maximum, 12). `min_defect_severity` (default 1.0; 0 gives
the paper's rule unchanged) lifts annotated cells of a very flat defect above background, so
that every annotated cell stays separable from background by the threshold T.
"""
from __future__ import annotations

import numpy as np

__all__ = ["cell_min_max", "defect_cells", "severity_labels", "SEVERITY_MAX"]

SEVERITY_MAX = 12.0


def _to_grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3:
        return image.astype(np.float32).mean(axis=2)
    return image.astype(np.float32)


def _pad_to(a: np.ndarray, cell: int) -> np.ndarray:
    h, w = a.shape[:2]
    ph, pw = (-h) % cell, (-w) % cell
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    return a


def cell_min_max(image: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell (min, max) of a grey image, edge-padded to a multiple of `cell`."""
    g = _pad_to(_to_grey(image), cell)
    h, w = g.shape
    blocks = g.reshape(h // cell, cell, w // cell, cell)
    return blocks.min(axis=(1, 3)), blocks.max(axis=(1, 3))


def defect_cells(mask: np.ndarray, cell: int) -> np.ndarray:
    """Bool (H/cell, W/cell): cells holding at least one annotated pixel (mask > 0)."""
    m = np.pad(mask > 0, ((0, (-mask.shape[0]) % cell), (0, (-mask.shape[1]) % cell)))
    h, w = m.shape
    return m.reshape(h // cell, cell, w // cell, cell).any(axis=(1, 3))


def severity_labels(image: np.ndarray, mask: np.ndarray, cell: int = 4, lam: float = 60.0,
                    min_defect_severity: float = 1.0) -> np.ndarray:
    """Severity label per cell in [0, 12].

    Args:
        image: uint8/float (H, W) grey or (H, W, 3) (averaged to grey).
        mask: (H, W) annotation, > 0 = defect (class ids are fine).
        cell: cell size in px (the network's output stride, 4 for the paper's network).
        lam: truncation lambda in grey levels.
        min_defect_severity: floor for defect cells (0 = the paper's rule unchanged).
    Returns:
        float32 (ceil(H/cell), ceil(W/cell)).
    """
    if lam <= 0:
        raise ValueError("lam must be > 0")
    cmin, cmax = cell_min_max(image, cell)
    dcell = defect_cells(mask, cell)
    out = np.zeros(dcell.shape, np.float32)
    if not dcell.any():
        return out
    clean = ~dcell
    g_min = float(cmin[clean].min()) if clean.any() else None
    g_max = float(cmax[clean].max()) if clean.any() else None
    n_cols = dcell.shape[1]
    for r in np.nonzero(dcell.any(axis=1))[0]:
        row = dcell[r]
        c = 0
        while c < n_cols:
            if not row[c]:
                c += 1
                continue
            a = c
            while c < n_cols and row[c]:
                c += 1
            b = c  # run of defect cells is [a, b)
            nb = [i for i in (a - 1, b) if 0 <= i < n_cols]
            if nb:
                m_n = float(min(cmin[r, i] for i in nb))
                mx_n = float(max(cmax[r, i] for i in nb))
            elif g_min is not None:
                m_n, mx_n = g_min, g_max
            else:
                out[r, a:b] = SEVERITY_MAX
                continue
            m_d, mx_d = cmin[r, a:b], cmax[r, a:b]
            d0 = np.minimum(np.abs(m_d - m_n), np.abs(mx_d - mx_n))
            d1 = np.abs(mx_d - m_n)
            s = np.minimum(d0 + d1, lam) / lam * SEVERITY_MAX
            out[r, a:b] = np.maximum(s, min_defect_severity)
    return out
