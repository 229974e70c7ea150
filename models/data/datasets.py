"""Dataset readers (local paths only, never downloads), each yielding `InspectionSample`s.

Formats:
- synthetic: a spec 'synthetic:seed=9000,n=200,size=256x256' (models.data.synthetic).
- plain: `images/*` + `masks/<stem>.png` (class ids, 0 = background) + `classes.txt`
  (one class per line; line i is id i+1).
- dagm: DAGM 2007 (`ClassN/[Train|Test]/*.PNG` with `Label/<stem>_label.PNG`, or the
  `classN/*.PNG` + `true_masks/<stem>_label.PNG` layout); one defect class per DAGM class.
- neu: NEU-DET (`ANNOTATIONS/*.xml` VOC boxes + `IMAGES/*.jpg`, also `Validation_*`) or
  NEU-CLS (class folders, or the class as the file-name prefix); box-only, no masks.
- neu-cls: NEU-CLS labels (one class per image from its folder or file-name prefix) for any NEU
  folder, even one that also holds NEU-DET boxes.
- severstal: `train.csv` (ImageId, ClassId, EncodedPixels; column-major 1-based RLE) +
  `train_images/`.
- mvtec: one MVTec AD category (`test/<defect>/*.png`, `ground_truth/<defect>/<stem>_mask.png`)
  or the root holding several categories (class names '<category>/<defect>').
- magnetic-tile: `MT_<Class>/Imgs/<stem>.jpg` + `<stem>.png` masks; MT_Free is defect-free.
- elpv: ELPV solar cells, `labels.csv` (`images/cellNNNN.png <proba> <type>`); proba >= 0.5 is one
  frame-wide "defect" box (image-level labels: image classifier and gate only).

Instances of mask datasets are the 8-connected components of each class.
"""
from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np

from models.core.types import BBox, InspectionSample
from models.data.synthetic import parse_synthetic_spec, render_sample

__all__ = ["open_dataset", "read_plain", "read_dagm", "read_neu", "read_severstal", "read_mvtec",
           "read_magnetic_tile", "read_synthetic", "rle_decode", "rle_encode", "instances_from_class_mask",
           "NEU_CLASSES", "MAGNETIC_TILE_CLASSES", "DatasetError", "SplitData", "load_split", "tile_samples",
           "sample_class_mask", "image_label"]

NEU_CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
MAGNETIC_TILE_CLASSES = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
_IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """The path does not hold the expected layout."""


def _imread(p: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    img = cv2.imread(str(p), flags)
    if img is None:
        raise DatasetError(f"cannot read image {p}")
    if img.ndim == 3 and img.shape[2] == 3:
        b, g, r = img[:, :, 0], img[:, :, 1], img[:, :, 2]
        if np.array_equal(b, g) and np.array_equal(g, r):
            return np.ascontiguousarray(b)  # grey stored as RGB (NEU)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.dtype == np.uint16:
        img = (img / 257).astype(np.uint8)
    return img


def instances_from_class_mask(class_mask: np.ndarray) -> tuple[np.ndarray, tuple[tuple[BBox, int], ...]]:
    """Instance mask (0 = none, k = k-th box) and (box, class id) per 8-connected component."""
    inst = np.zeros(class_mask.shape, np.int32)
    boxes: list[tuple[BBox, int]] = []
    for cid in [int(c) for c in np.unique(class_mask) if c != 0]:
        n, lab, stats, _ = cv2.connectedComponentsWithStats((class_mask == cid).astype(np.uint8), connectivity=8)
        for k in range(1, n):
            x, y, w, h = (int(v) for v in stats[k, :4])
            boxes.append((BBox(x, y, x + w, y + h), cid))
            inst[lab == k] = len(boxes)
    return inst, tuple(boxes)


def _mask_sample(image: np.ndarray, class_mask: np.ndarray, names: tuple[str, ...], source: str) -> InspectionSample:
    if class_mask.shape[:2] != image.shape[:2]:
        raise DatasetError(f"mask of {source} is {class_mask.shape[1]}x{class_mask.shape[0]} but the image is "
                           f"{image.shape[1]}x{image.shape[0]} (width x height); masks must match their images")
    if int(class_mask.max(initial=0)) > len(names):
        raise DatasetError(f"mask of {source} holds class id {int(class_mask.max())} but only {len(names)} classes "
                           f"are known ({', '.join(names)}); ids run from 1 to {len(names)}")
    inst, boxes = instances_from_class_mask(class_mask)
    return InspectionSample(image, class_mask.astype(np.uint8), boxes, names, inst, None, source)


def _limit(it: Iterator[InspectionSample], limit: int | None) -> Iterator[InspectionSample]:
    for i, s in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield s


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix.lower() in _IMG_EXT) if d.is_dir() else []


# --------------------------------------------------------------------------------------------
def read_synthetic(spec: str) -> Iterator[InspectionSample]:
    """The samples of a `synthetic:seed=S,n=N,size=HxW` spec; a spec that does not parse is a `DatasetError` at once."""
    try:
        cfg = parse_synthetic_spec(spec)
    except ValueError as exc:
        raise DatasetError(f"cannot read the synthetic spec {spec!r} ({exc}): use synthetic:seed=INT,n=INT,size=HxW, "
                           "e.g. synthetic:seed=9000,n=200,size=256x256") from None
    return (render_sample(int(cfg["seed"]) + i, tuple(cfg["shape"]))  # type: ignore[arg-type]
            for i in range(int(cfg["n"])))  # type: ignore[arg-type]


def read_plain(root: str | Path) -> Iterator[InspectionSample]:
    """`images/`, `masks/<stem>.png` (missing mask = defect-free) and `classes.txt`."""
    r = Path(root)
    cf = r / "classes.txt"
    if not (r / "images").is_dir() or not cf.is_file():
        raise DatasetError(f"{r} needs images/ and classes.txt")
    names = tuple(line.strip() for line in cf.read_text().splitlines() if line.strip())
    for p in _images(r / "images"):
        img = _imread(p)
        mp = r / "masks" / (p.stem + ".png")
        cm = _imread(mp, cv2.IMREAD_GRAYSCALE) if mp.is_file() else np.zeros(img.shape[:2], np.uint8)
        yield _mask_sample(img, cm, names, str(p))


def read_dagm(root: str | Path) -> Iterator[InspectionSample]:
    """DAGM 2007: every image below a `class<N>` folder; masks `<stem>_label.<ext>` in a sibling
    `Label`/`true_masks` folder (no mask = defect-free)."""
    r = Path(root)
    files = [p for p in sorted(r.rglob("*")) if p.suffix.lower() in _IMG_EXT
             and p.parent.name.lower() not in ("label", "labels", "true_masks", "masks")]
    cls_of: dict[Path, str] = {}
    for p in files:
        m = next((part for part in reversed(p.relative_to(r).parts[:-1]) if re.fullmatch(r"class\d+", part, re.I)), None)
        if m is None and re.fullmatch(r"class\d+", r.name, re.I):
            m = r.name
        if m is not None:
            cls_of[p] = m.lower()
    if not cls_of:
        raise DatasetError(f"no DAGM class<N> folders under {r}")
    names = tuple(sorted(set(cls_of.values()), key=lambda s: int(s[5:])))
    for p, cname in cls_of.items():
        img = _imread(p, cv2.IMREAD_GRAYSCALE)
        cm = np.zeros(img.shape, np.uint8)
        for sub in ("Label", "label", "true_masks", "Labels"):
            for ext in (p.suffix, ".PNG", ".png"):
                mp = p.parent / sub / f"{p.stem}_label{ext}"
                if mp.is_file():
                    cm[_imread(mp, cv2.IMREAD_GRAYSCALE) > 127] = names.index(cname) + 1
                    break
            else:
                continue
            break
        yield _mask_sample(img, cm, names, str(p))


def _neu_class(stem: str) -> int | None:
    s = stem.lower()
    for i, n in sorted(enumerate(NEU_CLASSES), key=lambda t: -len(t[1])):
        if s.startswith(n.lower()) or s.startswith(n.lower().replace("-", "_")):
            return i + 1
    abbrev = {"cr": 1, "in": 2, "pa": 3, "ps": 4, "rs": 5, "sc": 6}
    return abbrev.get(s.split("_")[0])


def read_neu_cls(root: str | Path) -> Iterator[InspectionSample]:
    """NEU-CLS: one class per image, from its class folder or file-name prefix (any XML boxes are ignored)."""
    return read_neu(root, classification=True)


def read_neu(root: str | Path, classification: bool = False) -> Iterator[InspectionSample]:
    """NEU-DET (VOC XML boxes) when annotations exist, NEU-CLS (whole-image class) otherwise or when
    `classification` is set."""
    r = Path(root)
    xmls = [] if classification else sorted(p for p in r.rglob("*.xml"))
    if xmls:
        imgs = {p.stem: p for p in r.rglob("*") if p.suffix.lower() in _IMG_EXT}
        for x in xmls:
            tree = ET.parse(x).getroot()
            fn = tree.findtext("filename") or x.stem
            p = imgs.get(Path(fn).stem) or imgs.get(x.stem)
            if p is None:
                continue
            img = _imread(p)
            H, W = img.shape[:2]
            boxes = []
            for obj in tree.iter("object"):
                name = (obj.findtext("name") or "").strip()
                cid = NEU_CLASSES.index(name) + 1 if name in NEU_CLASSES else _neu_class(name)
                bb = obj.find("bndbox")
                if cid is None or bb is None:
                    continue
                x0, y0 = int(float(bb.findtext("xmin"))) - 1, int(float(bb.findtext("ymin"))) - 1
                x1, y1 = int(float(bb.findtext("xmax"))), int(float(bb.findtext("ymax")))
                boxes.append((BBox(max(0, x0), max(0, y0), min(W, x1), min(H, y1)), cid))
            yield InspectionSample(img, None, tuple(boxes), NEU_CLASSES, None, None, str(p))
        return
    files = [p for p in sorted(r.rglob("*")) if p.suffix.lower() in _IMG_EXT]
    if not files:
        raise DatasetError(f"no NEU images under {r}")
    for p in files:
        cid = _neu_class(p.parent.name) or _neu_class(p.stem)
        if cid is None:
            continue
        img = _imread(p)
        H, W = img.shape[:2]
        yield InspectionSample(img, None, ((BBox(0, 0, W, H), cid),), NEU_CLASSES, None, None, str(p))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Severstal/Kaggle RLE (1-based starts, column-major) -> bool (H, W)."""
    h, w = shape
    flat = np.zeros(h * w, bool)
    vals = [int(v) for v in rle.split()]
    for s, n in zip(vals[0::2], vals[1::2]):
        flat[s - 1:s - 1 + n] = True
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray) -> str:
    """Inverse of `rle_decode`."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.uint8), [0]])
    runs = np.nonzero(flat[1:] != flat[:-1])[0] + 1
    runs[1::2] -= runs[0::2]
    return " ".join(str(v) for v in runs)


def read_severstal(root: str | Path, csv_name: str = "train.csv", images: str = "train_images") -> Iterator[InspectionSample]:
    """Severstal steel defects: 4 classes, masks from RLE; images without rows are defect-free."""
    r = Path(root)
    rows: dict[str, list[tuple[int, str]]] = {}
    with open(r / csv_name, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("EncodedPixels"):
                rows.setdefault(row["ImageId"], []).append((int(row["ClassId"]), row["EncodedPixels"]))
    names = ("class_1", "class_2", "class_3", "class_4")
    for p in _images(r / images):
        img = _imread(p)
        cm = np.zeros(img.shape[:2], np.uint8)
        for cid, rle in rows.get(p.name, []):
            cm[rle_decode(rle, cm.shape)] = cid
        yield _mask_sample(img, cm, names, str(p))


def read_mvtec(root: str | Path) -> Iterator[InspectionSample]:
    """MVTec AD test split(s); `good` images have empty masks."""
    r = Path(root)
    single = (r / "test").is_dir()
    cats = [r] if single else sorted(d for d in r.iterdir() if (d / "test").is_dir())
    if not cats:
        raise DatasetError(f"no MVTec category (with test/) under {r}")
    names: list[str] = []
    for c in cats:
        for d in sorted((c / "test").iterdir()):
            if d.is_dir() and d.name != "good":
                names.append(d.name if single else f"{c.name}/{d.name}")
    tnames = tuple(names)
    for c in cats:
        for d in sorted((c / "test").iterdir()):
            if not d.is_dir():
                continue
            for p in _images(d):
                img = _imread(p)
                cm = np.zeros(img.shape[:2], np.uint8)
                if d.name != "good":
                    mp = c / "ground_truth" / d.name / f"{p.stem}_mask.png"
                    if mp.is_file():
                        cm[_imread(mp, cv2.IMREAD_GRAYSCALE) > 127] = tnames.index(
                            d.name if single else f"{c.name}/{d.name}") + 1
                yield _mask_sample(img, cm, tnames, str(p))


def read_magnetic_tile(root: str | Path) -> Iterator[InspectionSample]:
    """Magnetic-tile defects: MT_<Class>/Imgs/<stem>.jpg with <stem>.png masks."""
    r = Path(root)
    dirs = sorted(d for d in r.iterdir() if d.is_dir() and d.name.startswith("MT_"))
    if not dirs:
        raise DatasetError(f"no MT_* folders under {r}")
    for d in dirs:
        cname = d.name[3:]
        imgdir = d / "Imgs" if (d / "Imgs").is_dir() else d
        for p in sorted(imgdir.glob("*.jpg")):
            img = _imread(p, cv2.IMREAD_GRAYSCALE)
            cm = np.zeros(img.shape, np.uint8)
            mp = p.with_suffix(".png")
            if cname in MAGNETIC_TILE_CLASSES and mp.is_file():
                cm[_imread(mp, cv2.IMREAD_GRAYSCALE) > 127] = MAGNETIC_TILE_CLASSES.index(cname) + 1
            yield _mask_sample(img, cm, MAGNETIC_TILE_CLASSES, str(p))


ELPV_CLASSES = ("defect",)


def read_elpv(root: str | Path, threshold: float = 0.5) -> Iterator[InspectionSample]:
    """ELPV solar cells: `labels.csv` lines `images/cellNNNN.png <proba> <type>` (whitespace-separated, paths
    relative to the root). Image-level labels only: a cell graded defective with probability >= `threshold` is one
    frame-wide "defect" box, the rest are defect-free (for the image classifier and the gate; no masks)."""
    r = Path(root)
    lf = r / "labels.csv"
    if not lf.is_file():
        raise DatasetError(f"{r} needs labels.csv (images/cellNNNN.png <proba> <type> per line)")
    for n, line in enumerate(lf.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            rel, proba = parts[0], float(parts[1])
        except (IndexError, ValueError):
            raise DatasetError(f"{lf}:{n}: expected '<image> <probability> [type]', got {line!r}") from None
        img = _imread(r / rel)
        h, w = img.shape[:2]
        boxes = ((BBox(0, 0, w, h), 1),) if proba >= threshold else ()
        yield InspectionSample(img, None, boxes, ELPV_CLASSES, None, None, str(r / rel))


_READERS = {
    "elpv": read_elpv, "plain": read_plain, "dagm": read_dagm, "neu": read_neu, "neu-cls": read_neu_cls, "severstal": read_severstal,
    "mvtec": read_mvtec, "magnetic-tile": read_magnetic_tile,
}


def open_dataset(fmt: str, data: str, limit: int | None = None) -> Iterator[InspectionSample]:
    """Iterate a dataset of format `fmt` at `data` (a path, or a synthetic spec).

    Raises:
        DatasetError: unknown format or a path without the expected layout.
    """
    if fmt == "synthetic":
        return _limit(read_synthetic(data if data.startswith("synthetic") else f"synthetic:{data}"), limit)
    if fmt not in _READERS:
        raise DatasetError(f"unknown dataset format {fmt!r}; known: synthetic, {', '.join(_READERS)}")
    if not Path(data).exists():
        raise DatasetError(f"dataset path {data} does not exist")
    return _nonempty(_limit(_READERS[fmt](data), limit), fmt, data)


def _nonempty(it: Iterator[InspectionSample], fmt: str, data: str) -> Iterator[InspectionSample]:
    n = 0
    for s in it:
        n += 1
        yield s
    if n == 0:
        raise DatasetError(f"no images found in {data} as format {fmt!r} (check the path and --format)")


def sample_class_mask(s: InspectionSample) -> np.ndarray:
    """Per-pixel class ids: the mask, or the boxes filled with their class for box-only data."""
    if s.class_mask is not None:
        return s.class_mask.astype(np.uint8)
    m = np.zeros(s.image.shape[:2], np.uint8)
    for b, c in sorted(s.boxes, key=lambda bc: -bc[0].area):  # small boxes drawn last stay visible
        m[b.y0:b.y1, b.x0:b.x1] = c
    return m


def image_label(s: InspectionSample) -> int:
    """The image's class id: the class covering most annotated area (0 = no defect)."""
    if s.class_mask is not None:
        counts = np.bincount(s.class_mask.reshape(-1).astype(np.int64), minlength=len(s.class_names) + 1)
        counts[0] = 0
        return int(np.argmax(counts)) if counts.sum() else 0
    if not s.boxes:
        return 0
    area: dict[int, int] = {}
    for b, c in s.boxes:
        area[c] = area.get(c, 0) + b.area
    return max(area, key=lambda c: (area[c], -c))


class SplitData(NamedTuple):
    """Training and validation samples and how they were split (stored in checkpoint metadata)."""

    train: list[InspectionSample]
    val: list[InspectionSample]
    meta: dict


def load_split(fmt: str, data: str, val_data: str | None = None, val_split: float = 0.2, seed: int = 0,
               limit: int | None = None) -> SplitData:
    """Read a training set and its validation set: `val_data` (same format) when given, else a
    seeded random `val_split` fraction of `data` (at least one image each side).

    Raises:
        DatasetError: unreadable layout, an empty set, or a set too small to split.
    """
    train = list(open_dataset(fmt, data, limit=limit))
    if val_data:
        val = list(open_dataset(fmt, val_data))
        return SplitData(train, val, {"format": fmt, "data": str(data), "val_data": str(val_data),
                                      "train_images": len(train), "val_images": len(val)})
    if not 0.0 < val_split < 1.0:
        raise DatasetError(f"--val-split must lie in (0, 1), got {val_split}")
    if len(train) < 2:
        raise DatasetError(f"{data} holds {len(train)} image(s); at least 2 are needed to split off a validation set")
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = min(len(train) - 1, max(1, int(round(val_split * len(train)))))
    val_idx = set(order[:n_val].tolist())
    tr = [s for i, s in enumerate(train) if i not in val_idx]
    va = [s for i, s in enumerate(train) if i in val_idx]
    return SplitData(tr, va, {"format": fmt, "data": str(data), "val_split": val_split, "split_seed": seed,
                              "train_images": len(tr), "val_images": len(va),
                              "val_sources": sorted(source_name(s.source, data) for s in va)[:5000]})


def source_name(source: str, data: str) -> str:
    """An image's name relative to its data set's root (what checkpoints record of a split)."""
    try:
        return str(Path(source).resolve().relative_to(Path(data).resolve()))
    except ValueError:
        return source


def tile_samples(samples: list[InspectionSample], tile: int) -> list[InspectionSample]:
    """Cut every image into non-overlapping `tile` x `tile` tiles (remainders dropped; an image
    smaller than a tile is kept whole). Masks and boxes are cut with it; a box-only sample keeps
    the clipped parts of its boxes that hold at least a quarter of the box or of the tile."""
    if tile < 16:
        raise DatasetError(f"--tile must be at least 16 px, got {tile}")
    out: list[InspectionSample] = []
    for s in samples:
        h, w = s.image.shape[:2]
        if h < tile or w < tile:
            out.append(s)
            continue
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                img = np.ascontiguousarray(s.image[y:y + tile, x:x + tile])
                src = f"{s.source}#tile={x},{y},{tile}"
                if s.class_mask is not None:
                    out.append(_mask_sample(img, np.ascontiguousarray(s.class_mask[y:y + tile, x:x + tile]),
                                            tuple(s.class_names), src))
                    continue
                boxes = []
                for b, c in s.boxes:
                    cb = BBox(max(b.x0, x) - x, max(b.y0, y) - y, min(b.x1, x + tile) - x, min(b.y1, y + tile) - y)
                    if cb.width > 0 and cb.height > 0 and cb.area * 4 >= min(b.area, tile * tile):
                        boxes.append((cb, c))
                out.append(InspectionSample(img, None, tuple(boxes), s.class_names, None, None, src))
    return out
