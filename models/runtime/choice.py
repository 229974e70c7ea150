"""Runtime `auto` and `onnxruntime-int8` for a whole Inspector: which runtime serves, and int8 parity on detections."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from models.core.checkpoints import CheckpointError
from models.data.synthetic import render_sample
from models.runtime import runtimes as _runtimes  # called through the module: tests replace openvino_available
from models.runtime.runtimes import INT8, RuntimeParityError, int8_calibration, record_inputs

__all__ = ["compare_detections", "use_auto", "use_int8", "INT8_MIN_IOU", "INT8_CONF_TOL", "synthetic_frames"]

log = logging.getLogger(__name__)

# int8 parity on detections (golden frames, fp32 torch Inspector vs int8): every region found again at
# this mask IoU or more, with the same class and its confidence within INT8_CONF_TOL; nothing extra.
INT8_MIN_IOU = 0.9
INT8_CONF_TOL = 0.05
INT8_PARITY_FRAMES = 4  # synthetic golden frames (seeds 500..), 256x512, every one holding defects
INT8_CALIBRATION_FRAMES = 16  # synthetic frames (seeds 300000..), 256x512, half with defects


def compare_detections(ref: Sequence[Sequence[Any]], got: Sequence[Sequence[Any]], frames: Sequence[np.ndarray],
                       min_iou: float, conf_tol: float) -> dict[str, Any]:
    """Whether `got` holds the same detections as `ref` on `frames`: every region of `ref` matched (greedy, best
    mask IoU; box IoU for detections without a mask) by one of `got` at mask IoU >= min_iou with the same class and |confidence difference| <= conf_tol,
    and no region left over. Returns {"same", "ref", "got", "matched", "min_mask_iou", "max_confidence_diff",
    "problems" (up to 5 sentences)}."""
    problems: list[str] = []
    n_ref = sum(len(d) for d in ref)
    n_got = sum(len(d) for d in got)
    matched, worst_iou, worst_conf = 0, 1.0, 0.0
    for fi, (da, db, f) in enumerate(zip(ref, got, frames)):
        shape = np.asarray(f).shape[:2]

        def full(d: Any) -> np.ndarray:
            m = np.zeros(shape, bool)
            # a box detector's detection has no mask (None): its box is compared
            m[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] = True if d.mask is None else d.mask
            return m

        free = [(e, full(e)) for e in db]
        for d in da:
            if not free:
                problems.append(f"frame {fi}: {d.defect_class} at {tuple(d.bbox)} not found")
                worst_iou = 0.0
                continue
            md = full(d)
            ious = [float((md & me).sum()) / max(float((md | me).sum()), 1.0) for _, me in free]
            k = int(np.argmax(ious))
            e, _ = free.pop(k)
            worst_iou = min(worst_iou, ious[k])
            dc = abs(float(d.confidence) - float(e.confidence))
            worst_conf = max(worst_conf, dc)
            if ious[k] < min_iou:
                problems.append(f"frame {fi}: {d.defect_class} at {tuple(d.bbox)} matched at mask IoU {ious[k]:.3f} "
                                f"(< {min_iou})")
            elif d.defect_class != e.defect_class:
                problems.append(f"frame {fi}: region at {tuple(d.bbox)} is {e.defect_class}, not {d.defect_class}")
            elif dc > conf_tol:
                problems.append(f"frame {fi}: {d.defect_class} at {tuple(d.bbox)} confidence {e.confidence:.3f} "
                                f"vs {d.confidence:.3f} (> {conf_tol})")
            else:
                matched += 1
        for e, _ in free:
            problems.append(f"frame {fi}: extra {e.defect_class} at {tuple(e.bbox)}")
    return {"same": not problems and len(ref) == len(got), "ref": n_ref, "got": n_got, "matched": matched,
            "min_mask_iou": round(worst_iou, 4), "max_confidence_diff": float(f"{worst_conf:.3g}"),
            "problems": problems[:5], "problem_count": len(problems)}


def synthetic_frames(seed: int, n: int, shape: tuple[int, int] = (256, 512), defect_prob: float = 1.0) -> list[np.ndarray]:
    """`n` seeded synthetic frames (seeds `seed`..): golden and calibration frames of the int8 runtime."""
    return [render_sample(seed + i, shape, defect_prob=defect_prob).image for i in range(n)]


def _image_folder(path: Path) -> list[np.ndarray]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    out = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
    return [im for im in out if im is not None]


def use_auto(insp: Any, export_cache: str | Path | None) -> dict[str, Any]:
    """Runtime `auto`: torch on CUDA; on CPU ONNX Runtime, parity-checked like any runtime; OpenVINO (when
    installed) only if ONNX Runtime cannot be used; torch when neither can (export, load or parity failed:
    logged as a warning).

    No timed trial: one on small frames picked OpenVINO (52 vs 69 ms) where ONNX Runtime served the
    1600x256 frames of a line faster (10.4 vs 8.6 frames/s, `ops/bench/models_bench.py`), so OpenVINO is
    chosen explicitly (`--runtime openvino`) after measuring it on the plant's own frames.
    """
    if not str(insp.device).startswith("cpu"):
        return {"requested": "auto", "chosen": "torch", "why": f"device {insp.device}"}
    candidates = ["onnxruntime"] + (["openvino"] if _runtimes.openvino_available() else [])
    errors: dict[str, str] = {}
    chosen = None
    for rt in candidates:
        try:
            insp.use_runtime(rt, export_cache)
        except (CheckpointError, ImportError, OSError, RuntimeError, ValueError) as exc:
            errors[rt] = str(exc)
            continue
        chosen = rt
        break
    if chosen is None:
        insp.use_runtime("torch")
        log.warning("runtime auto: no ONNX runtime passed (%s); serving %s with eager torch",
                    "; ".join(f"{k}: {v}" for k, v in errors.items()), insp.model_version)
        return {"requested": "auto", "chosen": "torch", "why": "no ONNX runtime usable", "errors": errors}
    for rt, why in errors.items():
        log.warning("runtime auto: %s not used: %s", rt, why)
    log.info("runtime auto: %s for %s", chosen, insp.model_version)
    return {"requested": "auto", "chosen": chosen, "errors": errors}


def use_int8(insp: Any, export_cache: str | Path | None, calibration: str | Path | Sequence[np.ndarray] | None,
              min_iou: float, conf_tol: float, enforce: bool = True) -> dict[str, Any]:
    """Runtime onnxruntime-int8: quantise every network (once per checkpoint content and calibration), then accept
    it only when the golden frames give the same detections as the fp32 Inspector (see compare_detections).
    `enforce=False` (benchmarks only: what a refused int8 would give) keeps the int8 runners and returns the
    failed report instead of raising."""
    parity = synthetic_frames(500, INT8_PARITY_FRAMES)
    if calibration is None:
        frames = synthetic_frames(300000, INT8_CALIBRATION_FRAMES, defect_prob=0.5)
        cal_id = f"synthetic:seed=300000,n={INT8_CALIBRATION_FRAMES},shape=256x512"
    elif isinstance(calibration, (str, Path)):
        imgs = _image_folder(Path(calibration))
        if len(imgs) < 2:
            raise CheckpointError(f"int8 calibration folder {calibration} holds fewer than 2 images")
        k = max(1, min(INT8_PARITY_FRAMES, len(imgs) // 4))
        frames, parity = imgs[:-k][:64], parity + imgs[-k:]
        cal_id = f"folder:{Path(calibration).resolve()},n={len(frames)}"
    else:
        frames = [np.asarray(f) for f in calibration]
        h = hashlib.sha256()
        for f in frames:
            h.update(np.ascontiguousarray(f).tobytes())
        cal_id = f"frames:sha256={h.hexdigest()[:16]},n={len(frames)}"
    ref = insp.inspect(parity)
    with record_inputs(max_per_network=256) as rec:
        for i in range(0, len(frames), 4):
            insp.inspect(frames[i:i + 4])
    with int8_calibration(cal_id, rec):
        insp.use_runtime(INT8, export_cache)
    got = insp.inspect(parity)
    report = compare_detections(ref, got, parity, min_iou, conf_tol)
    report.update(calibration=cal_id, min_iou=min_iou, conf_tol=conf_tol, parity_frames=len(parity))
    if not report["same"] and enforce:
        raise RuntimeParityError(
            f"int8 parity failed for {insp.model_version}: on {len(parity)} golden frames the int8 model found "
            f"{report['got']} regions where fp32 finds {report['ref']}, {report['problem_count']} differences beyond "
            f"mask IoU >= {min_iou}, same class, confidence within {conf_tol} (e.g. {report['problems'][0] if report['problems'] else '-'}); "
            f"refusing runtime {INT8} (use onnxruntime, fp32, or calibrate on the plant's frames)")
    if not report["same"]:
        log.warning("%s failed int8 parity (%d differences); int8 kept for measuring only (enforce=False)",
                    insp.model_version, report["problem_count"])
        return report
    log.info("%s passed int8 parity on detections (%d regions, min mask IoU %.3f, max confidence diff %.3g)",
             insp.model_version, report["ref"], report["min_mask_iou"], report["max_confidence_diff"])
    return report
