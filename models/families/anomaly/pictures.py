"""Pictures quality engineers check before trusting a map-based model: the frame, its anomaly or CAM map, the regions."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from models.core.types import Detection

__all__ = ["explain_picture"]


def explain_picture(image: np.ndarray, heat: np.ndarray, dets: Sequence[Detection], score: float,
                    label: str = "") -> np.ndarray:
    """BGR picture: the frame in grey under its map (`heat` in [0, 1], JET, 40 % opacity where above 0.05),
    each detected region's outline in white with its confidence, and the frame's score in the corner."""
    g = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    base = cv2.cvtColor(g.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    h = np.clip(np.nan_to_num(heat.astype(np.float32)), 0.0, 1.0)
    colour = cv2.applyColorMap((255 * h).astype(np.uint8), cv2.COLORMAP_JET)
    a = (0.4 * (h > 0.05))[:, :, None]
    out = (base * (1 - a) + colour * a).astype(np.uint8)
    for d in dets:
        m = np.zeros(g.shape[:2], np.uint8)
        m[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] = d.mask.astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
        cv2.putText(out, f"{d.confidence:.2f}", (d.bbox.x0, max(8, d.bbox.y0 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(out, f"{label} score {score:.3f}".strip(), (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 255, 255), 1,
                cv2.LINE_AA)
    return out
