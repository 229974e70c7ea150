"""Deterministic-by-seed synthetic inspection data: annotated frames and moving-part sequences.

Surfaces (brushed/rolled steel strip, stamped sheet metal, textured casting, DAGM-2007-like
oriented textures) carry defects of seven classes with pixel masks (class ids), instance masks
and a per-pixel severity, plus nuisances that are NOT defects (illumination gradients,
vignetting, sensor noise, blur, oil stains, specular glints). About 15 % of the defects are
low-contrast on purpose, so that a trivial intensity threshold does not solve the data.

Annotation masks are drawn like a careful human annotator would: the visible defect plus a
1 px margin (thin scratches and cracks therefore have masks 4-6 px wide).

Same seed, same arguments -> bit-identical output (numpy Generator + OpenCV only, no threads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from models.core.types import BBox, InspectionSample

CLASS_NAMES: tuple[str, ...] = (
    "scratch",
    "crack",
    "pit",
    "inclusion",
    "patch",
    "imprint_mild",
    "imprint_severe",
)
FAMILIES: tuple[str, ...] = ("steel_strip", "stamped_sheet", "casting", "dagm")
# Relative depth at and above which an imprint is "severe" (its ground-truth class).
IMPRINT_SEVERE_DEPTH = 0.5
# Grey levels of shading per unit of imprint depth.
_IMPRINT_GAIN = 70.0

__all__ = [
    "CLASS_NAMES",
    "FAMILIES",
    "GTDefect",
    "PartSequence",
    "SyntheticScene",
    "render_part_sequence",
    "render_sample",
    "render_scene",
    "parse_synthetic_spec",
    "VAL_SEED_BASE",
    "write_plain_set",
]

VAL_SEED_BASE = 50000  # validation seeds of the packaged checkpoints (T, post-processing); 50000-50099


# --------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------
@dataclass
class GTDefect:
    """Ground truth of one defect on a moving part."""

    defect_id: int
    defect_class: str
    boxes: dict[int, BBox]  # frame index -> box where visible
    borderline: bool = False  # an imprint that takes the other class's look in some frames


@dataclass
class PartSequence:
    """Consecutive overlapping frames of one part moving through the camera view along x."""

    frames: list[np.ndarray]  # uint8 grey (H, W)
    defects: list[GTDefect]
    nuisance_boxes: dict[int, list[BBox]]  # frame index -> glints / oil stains visible
    speed_px_per_frame: float
    family: str
    class_masks: list[np.ndarray] = field(default_factory=list)  # uint8 (H, W) per frame


@dataclass
class SyntheticScene:
    """A rendered frame with its annotation and the nuisances drawn on it."""

    sample: InspectionSample
    family: str
    nuisance_boxes: list[BBox]
    defect_depths: list[float]  # per instance (order of sample.boxes), relative [0, 1]


class _Local(NamedTuple):
    """A defect or nuisance rendered on a small local canvas (to be pasted at y0, x0)."""

    delta: np.ndarray  # float32 (h, w) grey-level change
    mask: np.ndarray  # bool (h, w) annotation mask
    severity: np.ndarray  # float32 (h, w) in [0, 12]


# --------------------------------------------------------------------------------------------
# Textures
# --------------------------------------------------------------------------------------------
def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sx: float, sy: float | None = None) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    n = cv2.GaussianBlur(n, (0, 0), sigmaX=float(sx), sigmaY=float(sy if sy is not None else sx),
                         borderType=cv2.BORDER_REFLECT)
    return n / (float(n.std()) + 1e-6)


def _texture(rng: np.random.Generator, shape: tuple[int, int], family: str) -> np.ndarray:
    h, w = shape
    if family == "steel_strip":  # brushed / rolled: streaks along the rolling direction (x)
        img = np.full(shape, rng.uniform(90, 160), np.float32)
        img += rng.uniform(4, 8) * _unit_noise(rng, shape, 25.0, 0.8)
        img += rng.uniform(2, 4) * _unit_noise(rng, (h, 1), 1.0, 1.5)
        img += rng.uniform(2, 4) * _unit_noise(rng, shape, 0.7)
    elif family == "stamped_sheet":  # smooth with a fine grain and slow undulation
        img = np.full(shape, rng.uniform(120, 180), np.float32)
        img += rng.uniform(3, 8) * _unit_noise(rng, shape, 40.0)
        img += rng.uniform(2, 4) * _unit_noise(rng, shape, 1.0)
    elif family == "casting":  # rough sand-cast texture at two scales
        img = np.full(shape, rng.uniform(80, 140), np.float32)
        img += rng.uniform(5, 9) * _unit_noise(rng, shape, 3.0)
        img += rng.uniform(3, 5) * _unit_noise(rng, shape, 1.0)
        img += 4.0 * _unit_noise(rng, shape, 30.0)
    elif family == "dagm":  # DAGM-2007-like oriented, anisotropic texture
        img = np.full(shape, rng.uniform(90, 150), np.float32)
        side = int(math.ceil(math.hypot(h, w))) + 4
        big = _unit_noise(rng, (side, side), rng.uniform(4, 12), rng.uniform(0.7, 1.5))
        rot = cv2.getRotationMatrix2D((side / 2, side / 2), float(rng.uniform(0, 180)), 1.0)
        big = cv2.warpAffine(big, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        y0, x0 = (side - h) // 2, (side - w) // 2
        img += rng.uniform(5, 10) * big[y0:y0 + h, x0:x0 + w]
        img += 3.0 * _unit_noise(rng, shape, 0.8)
    else:
        raise ValueError(f"unknown surface family {family!r}; known: {FAMILIES}")
    return img


# --------------------------------------------------------------------------------------------
# Defects (local canvases)
# --------------------------------------------------------------------------------------------
def _annotate(core: np.ndarray) -> np.ndarray:
    """Annotation mask: the visible defect plus a 1 px margin."""
    return cv2.dilate(core.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def _amp(rng: np.random.Generator, lo: float, hi: float, low_contrast: bool) -> float:
    a = rng.uniform(lo, hi)
    return a * rng.uniform(0.45, 0.65) if low_contrast else a


def _scratch(rng: np.random.Generator, low: bool) -> tuple[_Local, float]:
    length = rng.uniform(40, 150)
    ang = rng.uniform(0, math.pi)
    width = int(rng.integers(2, 4))
    bend = rng.uniform(-0.12, 0.12) * length
    half = int(length / 2) + 8
    c = np.array([half, half], np.float64)
    d = np.array([math.cos(ang), math.sin(ang)])
    n = np.array([-d[1], d[0]])
    pts = np.stack([c - d * length / 2, c + n * bend, c + d * length / 2]).round().astype(np.int32)
    canvas = np.zeros((2 * half, 2 * half), np.float32)
    cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, 1.0, thickness=width, lineType=cv2.LINE_AA)
    amp = _amp(rng, 22, 60, low) * (1.0 if rng.random() < 0.5 else -1.0)
    along = 0.75 + 0.25 * np.tanh(_unit_noise(rng, canvas.shape, 12.0))
    delta = amp * cv2.GaussianBlur(canvas, (0, 0), 0.6) * along
    core = canvas > 0.35
    depth = min(1.0, abs(amp) / 70.0)
    mask = _annotate(core)
    return _Local(delta, mask, (12.0 * depth * mask).astype(np.float32)), depth


def _crack(rng: np.random.Generator, low: bool) -> tuple[_Local, float]:
    n_steps = int(rng.integers(12, 40))
    theta = rng.uniform(0, 2 * math.pi)
    p = np.zeros(2)
    pts = [p.copy()]
    for _ in range(n_steps):
        theta += rng.normal(0, 0.35)
        p = p + 3.0 * np.array([math.cos(theta), math.sin(theta)])
        pts.append(p.copy())
    paths = [np.array(pts)]
    if rng.random() < 0.4:  # one branch from the middle
        q = pts[len(pts) // 2].copy()
        th = theta + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        br = [q.copy()]
        for _ in range(n_steps // 3):
            th += rng.normal(0, 0.35)
            q = q + 3.0 * np.array([math.cos(th), math.sin(th)])
            br.append(q.copy())
        paths.append(np.array(br))
    allp = np.concatenate(paths)
    lo = allp.min(0) - 8
    size = (allp.max(0) - lo + 8).astype(int)
    canvas = np.zeros((size[1], size[0]), np.float32)
    width = int(rng.integers(2, 4))
    for path in paths:
        q = (path - lo).round().astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [q], False, 1.0, thickness=width, lineType=cv2.LINE_AA)
    amp = _amp(rng, 35, 80, low)
    delta = -amp * cv2.GaussianBlur(canvas, (0, 0), 0.6)
    core = canvas > 0.35
    depth = min(1.0, amp / 70.0)
    mask = _annotate(core)
    return _Local(delta, mask, (12.0 * depth * mask).astype(np.float32)), depth


def _radial(h: int, w: int, ry: float, rx: float, ang: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy -= (h - 1) / 2.0
    xx -= (w - 1) / 2.0
    ca, sa = math.cos(ang), math.sin(ang)
    u = (xx * ca + yy * sa) / rx
    v = (-xx * sa + yy * ca) / ry
    return u * u + v * v  # squared normalised radius


def _pit(rng: np.random.Generator, low: bool) -> tuple[_Local, float]:
    r = rng.uniform(3.5, 7.5)
    s = int(2 * r + 10)
    rho2 = _radial(s, s, r, r * rng.uniform(0.8, 1.2))
    prof = np.clip(1.0 - rho2, 0, 1) ** 0.7
    rim = np.exp(-((np.sqrt(rho2) - 1.0) * r / 1.2) ** 2)
    amp = _amp(rng, 40, 90, low)
    delta = (-amp * prof + 0.2 * amp * rim).astype(np.float32)
    depth = min(1.0, amp / 70.0)
    mask = _annotate(rho2 <= 1.0)
    return _Local(delta, mask, (12.0 * depth * mask).astype(np.float32)), depth


def _inclusion(rng: np.random.Generator, low: bool) -> tuple[_Local, float]:
    a, b = rng.uniform(8, 30), rng.uniform(2.5, 5.0)
    s = int(2 * a + 12)
    ang = rng.normal(0, 0.15)  # along the rolling direction
    field_ = 1.0 - _radial(s, s, b, a, ang) + 0.25 * _unit_noise(rng, (s, s), 2.0)
    core = field_ > 0
    core = _largest_component(core)
    amp = _amp(rng, 28, 60, low)
    tex = 0.75 + 0.25 * np.tanh(_unit_noise(rng, (s, s), 1.5))
    delta = -amp * cv2.GaussianBlur(core.astype(np.float32), (0, 0), 0.8) * tex
    depth = min(1.0, amp / 70.0)
    mask = _annotate(core)
    return _Local(delta.astype(np.float32), mask, (12.0 * depth * mask).astype(np.float32)), depth


def _patch(rng: np.random.Generator, low: bool) -> tuple[_Local, float]:
    ry, rx = rng.uniform(14, 40), rng.uniform(14, 40)
    s_h, s_w = int(2 * ry + 16), int(2 * rx + 16)
    field_ = 1.0 - _radial(s_h, s_w, ry, rx, rng.uniform(0, math.pi)) \
        + 0.45 * _unit_noise(rng, (s_h, s_w), max(rx, ry) / 6)
    core = _largest_component(field_ > 0)
    amp = _amp(rng, 20, 42, low)
    soft = cv2.GaussianBlur(core.astype(np.float32), (0, 0), 1.2)
    # a patch changes the surface texture too (rougher scale)
    delta = -amp * soft + 0.25 * amp * _unit_noise(rng, (s_h, s_w), 1.5) * soft
    depth = min(1.0, amp / 70.0)
    mask = _annotate(core)
    return _Local(delta.astype(np.float32), mask, (12.0 * depth * mask).astype(np.float32)), depth


def _imprint_shape(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Dent depth profile D in [0, 1] and its normalised x/y slopes."""
    r = rng.uniform(10, 24)
    ry, rx = r * rng.uniform(0.75, 1.3), r
    s = int(2 * max(rx, ry) + 10)
    rho2 = _radial(s, s, ry, rx, rng.uniform(0, math.pi))
    prof = np.clip(1.0 - rho2, 0, 1).astype(np.float32)
    gy, gx = np.gradient(prof)
    scale = max(rx, ry) / 2.0
    return prof, gx * scale, gy * scale, float(r)


def _imprint_render(prof: np.ndarray, gx: np.ndarray, gy: np.ndarray, depth: float,
                    light: float, gain: float = 1.0) -> _Local:
    amp = _IMPRINT_GAIN * depth * gain
    shade = gx * math.cos(light) + gy * math.sin(light)
    delta = amp * (shade - 0.3 * prof)
    core = prof > 0.05
    mask = _annotate(core)
    sev = 12.0 * depth * np.sqrt(prof) * mask
    return _Local(delta.astype(np.float32), mask, sev.astype(np.float32))


def _largest_component(core: np.ndarray) -> np.ndarray:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(core.astype(np.uint8), connectivity=8)
    if n <= 2:
        return core
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return lab == k


_RENDERERS = {"scratch": _scratch, "crack": _crack, "pit": _pit, "inclusion": _inclusion, "patch": _patch}


def _random_defect(rng: np.random.Generator, cls: str, light: float) -> tuple[_Local, float]:
    if cls in _RENDERERS:
        return _RENDERERS[cls](rng, bool(rng.random() < 0.15))
    prof, gx, gy, _ = _imprint_shape(rng)
    depth = rng.uniform(0.2, 0.4) if cls == "imprint_mild" else rng.uniform(0.6, 1.0)
    return _imprint_render(prof, gx, gy, depth, light), depth


# --------------------------------------------------------------------------------------------
# Nuisances
# --------------------------------------------------------------------------------------------
def _oil_stain(rng: np.random.Generator) -> np.ndarray:
    r = rng.uniform(20, 55)
    s = int(2.6 * r)
    rho2 = _radial(s, s, r * rng.uniform(0.6, 1.0), r, rng.uniform(0, math.pi))
    base = np.clip(1.0 - rho2, 0, 1)
    base = cv2.GaussianBlur(base.astype(np.float32), (0, 0), r / 4)
    ring = np.exp(-((np.sqrt(rho2) - 0.9) / 0.12) ** 2).astype(np.float32)
    return (-rng.uniform(6, 16) * base + rng.uniform(0, 4) * ring).astype(np.float32)


def _glint(rng: np.random.Generator) -> np.ndarray:
    sx, sy = rng.uniform(1.2, 3.0), rng.uniform(1.2, 3.0)
    if rng.random() < 0.3:
        sx *= rng.uniform(2, 4)  # a short specular streak
    s = int(6 * max(sx, sy) + 3) | 1
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) - (s - 1) / 2
    return (rng.uniform(80, 170) * np.exp(-0.5 * ((xx / sx) ** 2 + (yy / sy) ** 2))).astype(np.float32)


def _illumination(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yn, xn = yy / max(h - 1, 1) - 0.5, xx / max(w - 1, 1) - 0.5
    g = 1.0 + rng.uniform(-0.15, 0.15) * xn * 2 + rng.uniform(-0.15, 0.15) * yn * 2
    g -= rng.uniform(0, 0.1) * (xn * xn + yn * yn) * 2
    return g.astype(np.float32)


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Camera: optional blur, sensor noise, quantisation."""
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.1))
    img = img + rng.normal(0, rng.uniform(1.0, 4.0), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Placement helpers
# --------------------------------------------------------------------------------------------
def _paste(dst: np.ndarray, src: np.ndarray, y0: int, x0: int, op: str = "add") -> None:
    h, w = src.shape
    H, W = dst.shape
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(H, y0 + h), min(W, x0 + w)
    if ya >= yb or xa >= xb:
        return
    s = src[ya - y0:yb - y0, xa - x0:xb - x0]
    d = dst[ya:yb, xa:xb]
    if op == "add":
        d += s
    elif op == "max":
        np.maximum(d, s, out=d)
    else:  # "set" where src is nonzero
        d[s != 0] = s[s != 0]


def _mask_box(mask: np.ndarray, y0: int, x0: int) -> BBox:
    ys, xs = np.nonzero(mask)
    return BBox(int(x0 + xs.min()), int(y0 + ys.min()), int(x0 + xs.max() + 1), int(y0 + ys.max() + 1))


def _overlaps(box: BBox, others: list[BBox], margin: int) -> bool:
    for o in others:
        if box.x0 < o.x1 + margin and o.x0 < box.x1 + margin and box.y0 < o.y1 + margin and o.y0 < box.y1 + margin:
            return True
    return False


def _place(rng: np.random.Generator, loc: _Local, shape: tuple[int, int], taken: list[BBox],
           margin: int = 12, tries: int = 30) -> tuple[int, int, BBox] | None:
    H, W = shape
    h, w = loc.mask.shape
    ys, xs = np.nonzero(loc.mask)
    my0, my1, mx0, mx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    for _ in range(tries):
        y_lo, y_hi = 2 - my0, H - 2 - my1
        x_lo, x_hi = 2 - mx0, W - 2 - mx1
        if y_hi < y_lo or x_hi < x_lo:
            return None
        y0 = int(rng.integers(y_lo, y_hi + 1))
        x0 = int(rng.integers(x_lo, x_hi + 1))
        box = BBox(int(x0 + mx0), int(y0 + my0), int(x0 + mx1), int(y0 + my1))
        if not _overlaps(box, taken, margin):
            return y0, x0, box
    return None


def _pick_class(rng: np.random.Generator) -> str:
    return str(CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))])


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------
def render_scene(seed: int, shape: tuple[int, int] = (256, 256), family: str | None = None,
                 defect_prob: float = 0.8, max_defects: int = 3,
                 classes: tuple[str, ...] | None = None) -> SyntheticScene:
    """Render one annotated grey frame.

    Args:
        seed: any int; same seed and arguments give the same frame, bit for bit.
        shape: (H, W) of the frame.
        family: surface family (one of FAMILIES) or None for a seeded choice.
        defect_prob: probability that the frame holds at least one defect.
        max_defects: at most this many defects (scaled up with the frame area over 256x256).
        classes: restrict defect classes (names from CLASS_NAMES), None for all.
    Returns:
        SyntheticScene whose `sample` has class_mask, instance_mask, boxes, per-pixel severity.
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])
    fam = family if family is not None else str(FAMILIES[int(rng.integers(len(FAMILIES)))])
    H, W = shape
    img = _texture(rng, shape, fam)
    cmask = np.zeros(shape, np.uint8)
    imask = np.zeros(shape, np.int32)
    sev = np.zeros(shape, np.float32)
    light = float(rng.uniform(0, 2 * math.pi))
    boxes: list[tuple[BBox, int]] = []
    depths: list[float] = []
    taken: list[BBox] = []
    scale = max(1.0, (H * W) / (256 * 256))
    n_def = 0
    if rng.random() < defect_prob:
        n_def = int(rng.integers(1, int(round(max_defects * scale)) + 1))
    for _ in range(n_def):
        cls = str(rng.choice(classes)) if classes else _pick_class(rng)
        loc, depth = _random_defect(rng, cls, light)
        placed = _place(rng, loc, shape, taken)
        if placed is None:
            continue
        y0, x0, box = placed
        taken.append(box)
        cid = CLASS_NAMES.index(cls) + 1
        _paste(img, loc.delta, y0, x0)
        _paste(cmask, (loc.mask * cid).astype(np.uint8), y0, x0, "set")
        _paste(imask, (loc.mask * (len(boxes) + 1)).astype(np.int32), y0, x0, "set")
        _paste(sev, loc.severity, y0, x0, "max")
        boxes.append((box, cid))
        depths.append(float(depth))
    nuis: list[BBox] = []
    for _ in range(int(rng.integers(0, 2 + int(scale)))):  # oil stains may lie over defects
        st = _oil_stain(rng)
        y0 = int(rng.integers(-st.shape[0] // 3, H - st.shape[0] * 2 // 3))
        x0 = int(rng.integers(-st.shape[1] // 3, W - st.shape[1] * 2 // 3))
        _paste(img, st, y0, x0)
        nuis.append(_clip_box(_mask_box(np.abs(st) > 2, y0, x0), H, W))
    img *= _illumination(rng, shape)
    for _ in range(int(rng.integers(0, 4 + int(scale)))):
        g = _glint(rng)
        placed = _place(rng, _Local(g, g > 8, g), shape, taken, margin=6, tries=10)
        if placed is None:
            continue
        y0, x0, box = placed
        _paste(img, g, y0, x0)
        nuis.append(box)
    out = _finish(rng, img)
    sample = InspectionSample(
        image=out, class_mask=cmask, boxes=tuple(boxes), class_names=CLASS_NAMES,
        instance_mask=imask, severity=sev, source=f"synthetic:seed={seed}",
    )
    return SyntheticScene(sample=sample, family=fam, nuisance_boxes=[b for b in nuis if b.area > 0],
                          defect_depths=depths)


def render_sample(seed: int, shape: tuple[int, int] = (256, 256), family: str | None = None,
                  defect_prob: float = 0.8) -> InspectionSample:
    """The annotated sample of `render_scene` (see there)."""
    return render_scene(seed, shape, family, defect_prob).sample


def _clip_box(b: BBox, H: int, W: int) -> BBox:
    return BBox(max(0, b.x0), max(0, b.y0), min(W, b.x1), min(H, b.y1))


def parse_synthetic_spec(spec: str) -> dict[str, object]:
    """Parse 'synthetic:seed=9000,n=200,size=256x256' into {'seed', 'n', 'shape'}.

    Raises ValueError on unknown keys or a wrong prefix.
    """
    if not spec.startswith("synthetic"):
        raise ValueError(f"not a synthetic spec: {spec!r}")
    out: dict[str, object] = {"seed": 9000, "n": 200, "shape": (256, 256)}
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    for part in filter(None, rest.split(",")):
        key, _, val = part.partition("=")
        key = key.strip()
        if key == "seed":
            out["seed"] = int(val)
        elif key == "n":
            out["n"] = int(val)
        elif key == "size":
            h, _, w = val.lower().partition("x")
            out["shape"] = (int(h), int(w))
        else:
            raise ValueError(f"unknown key {key!r} in synthetic spec {spec!r} (seed, n, size)")
    return out


# --------------------------------------------------------------------------------------------
# Part sequences for the tracking layer
# --------------------------------------------------------------------------------------------
def render_part_sequence(seed: int, n_frames: int = 6, frame_shape=(256, 512), defect_rate: float = 0.5,
                         family: str | None = None, speed_px_per_frame: float | None = None) -> PartSequence:
    """Render consecutive overlapping frames of one part moving along x through the view.

    The part is longer than the field of view; frame i shows the part shifted by
    round(i * speed) px. Defects are fixed on the part, so one defect is visible in several
    frames (GT box per frame where at least 30 % of its mask, or 40 px, is in view). Glints
    flicker: each is visible in 1-2 consecutive frames only. With probability 0.4 a defective
    part also carries a borderline imprint: a real mild or severe imprint that takes the other
    class's look in a strict minority of the frames it is seen in; its GT class follows its
    true depth, so a vote over the frames can recover it and a single frame may not.

    Args:
        seed: same seed and arguments -> identical sequence.
        n_frames: number of frames.
        frame_shape: (H, W) of each frame.
        defect_rate: probability that the part has at least one defect.
        family: surface family or None (seeded choice).
        speed_px_per_frame: part motion per frame; None -> seeded, 25-45 % of the frame width.
    Returns:
        PartSequence (frames uint8 grey, GT defects with per-frame boxes, nuisance boxes).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xBA27])
    fam = family if family is not None else str(FAMILIES[int(rng.integers(len(FAMILIES)))])
    H, W = int(frame_shape[0]), int(frame_shape[1])
    speed = float(speed_px_per_frame) if speed_px_per_frame is not None else float(rng.uniform(0.25, 0.45) * W)
    offsets = [int(round(i * speed)) for i in range(n_frames)]
    L = W + offsets[-1] if n_frames else W
    part = _texture(rng, (H, L), fam)
    part_cls = np.zeros((H, L), np.uint8)
    light = float(rng.uniform(0, 2 * math.pi))
    taken: list[BBox] = []
    # (defect_id, class, mask in part coords) and imprints drawn per frame
    placed: list[tuple[int, str, np.ndarray, int, int]] = []
    imprints: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, float, list[float]]] = []
    borderline_ids: set[int] = set()
    if rng.random() < defect_rate:
        n_def = int(rng.integers(1, 1 + max(1, int(round(2 * L / W)))))
        plan = [_pick_class(rng) for _ in range(n_def)]
        if rng.random() < 0.4:
            plan.append("borderline")
        for cls in plan:
            if cls in ("imprint_mild", "imprint_severe", "borderline"):
                prof, gx, gy, _ = _imprint_shape(rng)
                if cls == "borderline":
                    # A real mild or severe imprint that takes the other class's look in a minority
                    # of the frames it is seen in (reflections change with the viewing angle); the
                    # gains are set once its position, hence the frames it is seen in, is known.
                    severe = bool(rng.random() < 0.5)
                    depth = float(rng.uniform(0.6, 0.7) if severe else rng.uniform(0.3, 0.4))
                    gains = [float(rng.uniform(0.97, 1.03)) for _ in range(n_frames)]
                    flip_to = (0.34 if severe else 0.65) / depth
                    cls = "imprint_severe" if severe else "imprint_mild"
                else:
                    flip_to = None
                    depth = rng.uniform(0.2, 0.4) if cls == "imprint_mild" else rng.uniform(0.6, 1.0)
                    gains = [float(rng.uniform(0.93, 1.07)) for _ in range(n_frames)]
                loc = _imprint_render(prof, gx, gy, depth, light)
            else:
                loc, depth = _random_defect(rng, cls, light)
                gains, flip_to = [], None
            pos = _place(rng, loc, (H, L), taken)
            if pos is None:
                continue
            y0, x0, box = pos
            taken.append(box)
            did = len(placed) + 1
            if gains and flip_to is not None:
                borderline_ids.add(did)
                seen = [i for i, o in enumerate(offsets) if o < x0 + loc.mask.shape[1] and x0 < o + W]
                # strictly fewer flipped frames than true-looking ones: the vote can recover the class
                for i in rng.permutation(seen)[: (len(seen) - 1) // 2]:
                    gains[int(i)] *= flip_to
            if gains:
                imprints.append((y0, x0, prof, gx, gy, depth, gains))
            else:
                _paste(part, loc.delta, y0, x0)
            cid = CLASS_NAMES.index(cls) + 1
            _paste(part_cls, (loc.mask * cid).astype(np.uint8), y0, x0, "set")
            placed.append((did, cls, loc.mask, y0, x0))
    stains: list[BBox] = []
    for _ in range(int(rng.integers(0, 1 + L // W))):
        st = _oil_stain(rng)
        y0 = int(rng.integers(-st.shape[0] // 3, H - st.shape[0] * 2 // 3))
        x0 = int(rng.integers(0, max(1, L - st.shape[1])))
        _paste(part, st, y0, x0)
        stains.append(_clip_box(_mask_box(np.abs(st) > 2, y0, x0), H, L))
    # glints: fixed on the part, visible in 1-2 consecutive frames (specular flicker)
    glints: list[tuple[int, int, np.ndarray, set[int]]] = []
    for _ in range(int(rng.integers(1, 3 + n_frames // 2))):
        g = _glint(rng)
        pos = _place(rng, _Local(g, g > 8, g), (H, L), taken, margin=6, tries=10)
        if pos is None:
            continue
        y0, x0, _box = pos
        vis = [i for i, o in enumerate(offsets) if o <= x0 and x0 + g.shape[1] <= o + W]
        if not vis:
            continue
        start = int(rng.integers(len(vis)))
        frames_on = set(vis[start:start + int(rng.integers(1, 3))])
        glints.append((y0, x0, g, frames_on))
    illum = _illumination(rng, (H, W))
    frames: list[np.ndarray] = []
    cmasks: list[np.ndarray] = []
    nuisance: dict[int, list[BBox]] = {}
    gt = [GTDefect(defect_id=did, defect_class=cls, boxes={}, borderline=did in borderline_ids)
          for did, cls, *_ in placed]
    for i, o in enumerate(offsets):
        view = part[:, o:o + W].copy()
        for y0, x0, prof, gx, gy, depth, gains in imprints:
            loc = _imprint_render(prof, gx, gy, depth, light, gains[i])
            _paste(view, loc.delta, y0, x0 - o)
        view *= illum * float(rng.uniform(0.97, 1.03))  # slight lamp flicker
        boxes_i: list[BBox] = []
        for gy0, gx0, g, on in glints:
            if i in on:
                _paste(view, g, gy0, gx0 - o)
                boxes_i.append(_mask_box(g > 8, gy0, gx0 - o))
        for sb in stains:
            vb = BBox(max(0, sb.x0 - o), sb.y0, min(W, sb.x1 - o), sb.y1)
            if vb.x1 > vb.x0:
                boxes_i.append(vb)
        nuisance[i] = boxes_i
        frames.append(_finish(rng, view))
        cmasks.append(part_cls[:, o:o + W].copy())
        for d, (did, cls, mask, y0, x0) in zip(gt, placed):
            full = int(mask.sum())
            vis = np.zeros_like(mask)
            lo_x, hi_x = max(0, o - x0), min(mask.shape[1], o + W - x0)
            if hi_x <= lo_x:
                continue
            vis[:, lo_x:hi_x] = mask[:, lo_x:hi_x]
            nvis = int(vis.sum())
            if nvis and (nvis >= 0.3 * full or nvis >= 40):
                b = _mask_box(vis, y0, x0 - o)
                d.boxes[i] = _clip_box(b, H, W)
    return PartSequence(frames=frames, defects=gt, nuisance_boxes=nuisance, speed_px_per_frame=speed,
                        family=fam, class_masks=cmasks)


def write_plain_set(directory: str | Path, n: int, shape: tuple[int, int] = (64, 64), seed: int = 0,
                    defect_prob: float = 0.7) -> Path:
    """Write `n` seeded synthetic samples (seeds `seed`..) as a `plain` data set (`images/`, `masks/`,
    `classes.txt`) in `directory`; the families' tiny examples train on it. Returns the directory."""
    d = Path(directory)
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "masks").mkdir(exist_ok=True)
    (d / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    for i in range(n):
        s = render_sample(seed + i, shape, defect_prob=defect_prob)
        cv2.imwrite(str(d / "images" / f"{i:04d}.png"), s.image)
        cv2.imwrite(str(d / "masks" / f"{i:04d}.png"), s.class_mask.astype(np.uint8))
    return d
