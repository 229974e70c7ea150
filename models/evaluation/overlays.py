"""Example overlays: the worst false positives and misses of an evaluation, drawn over their images."""
from __future__ import annotations

import heapq
import itertools
import json
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import cv2
import numpy as np

from models.core.types import InspectionSample
from models.evaluation.metrics import PredictedDefect, pred_mask

__all__ = ["ExampleCollector", "overlay"]


class _Example(NamedTuple):
    image: np.ndarray
    gt: np.ndarray  # bool (H, W)
    preds: list[PredictedDefect]
    score: float | None
    source: str
    pixels: int  # false-positive or missed pixels


class ExampleCollector:
    """Keeps the `n` worst false-positive and the `n` worst false-negative images while streaming.

    Worst false positive: most predicted defect pixels outside the ground truth (then the higher
    image score). Worst false negative: most ground-truth defect pixels the prediction misses
    (then the lower image score). Images without such pixels are never candidates. At most 2n
    images are held (two bounded min-heaps).
    """

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"the number of examples must be >= 1, got {n}")
        self.n = n
        self._fp: list[tuple[tuple[float, float], int, _Example]] = []
        self._fn: list[tuple[tuple[float, float], int, _Example]] = []
        self._tick = itertools.count()

    def _push(self, heap: list, key: tuple[float, float], ex: _Example) -> None:
        item = (key, -next(self._tick), ex)  # on equal keys the earlier image ranks higher
        if len(heap) < self.n:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def offer(self, sample: InspectionSample, gt: np.ndarray, pm: np.ndarray, preds: list[PredictedDefect],
              score: float | None) -> None:
        """Consider one evaluated image (ground-truth and predicted defect masks of the same shape)."""
        fp_px = int(np.logical_and(pm, ~gt).sum())
        fn_px = int(np.logical_and(gt, ~pm).sum())
        sc = 0.0 if score is None else float(score)
        if fp_px:
            self._push(self._fp, (fp_px, sc), _Example(sample.image, gt, list(preds), score, sample.source, fp_px))
        if fn_px:
            self._push(self._fn, (fn_px, -sc), _Example(sample.image, gt, list(preds), score, sample.source, fn_px))

    def worst(self) -> dict[str, list[_Example]]:
        """{"fp": [...], "fn": [...]}, worst first."""
        return {k: [e for _, _, e in sorted(h, key=lambda t: t[:2], reverse=True)]
                for k, h in (("fp", self._fp), ("fn", self._fn))}

    def write(self, folder: str | Path) -> list[dict[str, Any]]:
        """Write `fp_<rank>_<stem>.png` / `fn_<rank>_<stem>.png` overlays and `index.json` into folder.

        Returns:
            one entry per written file (file, kind, source, pixels, score), also stored in index.json.
        """
        d = Path(folder)
        d.mkdir(parents=True, exist_ok=True)
        index = []
        for kind, exs in self.worst().items():
            for rank, ex in enumerate(exs, 1):
                stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(ex.source).stem)[:60] or "image"
                name = f"{kind}_{rank:02d}_{stem}.png"
                if not cv2.imwrite(str(d / name), overlay(ex.image, ex.gt, ex.preds)):
                    raise OSError(f"cannot write {d / name}")
                index.append({"file": name, "kind": kind, "source": ex.source,
                              "pixels": ex.pixels, "score": ex.score})
        (d / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        return index


def overlay(image: np.ndarray, gt: np.ndarray, preds: Sequence[PredictedDefect]) -> np.ndarray:
    """BGR picture: the image in grey, predictions filled translucent red with class and
    confidence, the ground-truth contour in green."""
    g = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    out = cv2.cvtColor(g.astype(np.uint8), cv2.COLOR_GRAY2BGR)
    pm = pred_mask(g.shape[:2], preds)
    red = out.copy()
    red[pm] = (0, 0, 255)
    out = cv2.addWeighted(red, 0.45, out, 0.55, 0.0)
    contours, _ = cv2.findContours(gt.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (0, 255, 0), 1)
    scale = max(0.3, min(g.shape[:2]) / 500.0)
    for p in preds:
        b = p.bbox
        text = str(p.defect_class) + ("" if p.confidence is None else f" {float(p.confidence):.2f}")
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        x = int(min(max(0, b.x0), max(0, out.shape[1] - tw)))
        y = int(b.y0 - 3 if b.y0 - 3 >= th else min(out.shape[0] - 1, b.y1 + th + 2))
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (80, 80, 255), 1, cv2.LINE_AA)
    return out


# ------------------------------------------------------------------ evaluation
