"""Write a mixed-size copy of a plain data set: every image and its mask rescaled by a seeded random factor.

The check of issue 22: a plant's images come in any size, and the training defaults must not depend on one size.
Built from NEU-Seg (200x200 everywhere) with factors uniform in [0.5, 3] (100..600 px), masks with nearest
neighbour. Write it under runs/ (never into the repository):

    .venv/bin/python ops/bench/mixed_size_set.py /data/neu-seg/train runs/data/neu-seg-mixed/train --seed 0
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="a plain data set (images/, masks/, classes.txt)")
    ap.add_argument("dst", help="where to write the rescaled copy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--low", type=float, default=0.5)
    ap.add_argument("--high", type=float, default=3.0)
    a = ap.parse_args(argv)
    src, dst = Path(a.src), Path(a.dst)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    shutil.copy(src / "classes.txt", dst / "classes.txt")
    rng = np.random.default_rng(a.seed)
    sizes = []
    for p in sorted((src / "images").iterdir()):
        f = float(rng.uniform(a.low, a.high))
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        h, w = img.shape[:2]
        size = (max(8, round(w * f)), max(8, round(h * f)))
        cv2.imwrite(str(dst / "images" / (p.stem + ".png")),
                    cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR))
        mp = src / "masks" / (p.stem + ".png")
        if mp.is_file():
            m = cv2.imread(str(mp), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(dst / "masks" / (p.stem + ".png")), cv2.resize(m, size, interpolation=cv2.INTER_NEAREST))
        sizes.append(size[0])
    s = np.array(sizes)
    print(f"wrote {len(s)} images to {dst}: sides {s.min()}..{s.max()} px, median {int(np.median(s))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
