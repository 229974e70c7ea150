"""Load any model family from a checkpoint directory as an `Inspector` (models.types).

A model directory holds the checkpoints of one family, each a registry file (`models.registry`):

| family      | files                                              |
|-------------|----------------------------------------------------|
| severity    | `detector_<arch>.pt` + `classifier.pt` (arch cnn4)  |
| segmenter   | `segmenter.pt`                                     |
| classifier  | `classifier.pt` (arch lite0: one class per image)  |

and optionally `gate.pt` (an image-level defect/no-defect gate run in front of the family, so
that good frames skip the expensive stage). The Inspector version is the checkpoints' versions
joined by "+", so the same files always give the same version. The streaming worker, replay,
`evaluate` and `models promote` all go through `load_inspector` / `model_identity` and never
depend on the family.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from models.registry import CheckpointError, load_checkpoint, read_info
from models.types import Inspector

__all__ = ["ModelFiles", "model_files", "load_inspector", "model_identity", "resolve_device", "FAMILIES",
           "compare_detections", "INT8_MIN_IOU", "INT8_CONF_TOL"]

log = logging.getLogger(__name__)

# int8 parity on detections (golden frames, fp32 torch Inspector vs int8): every region found again at
# this mask IoU or more, with the same class and its confidence within INT8_CONF_TOL; nothing extra.
INT8_MIN_IOU = 0.9
INT8_CONF_TOL = 0.05
INT8_PARITY_FRAMES = 4  # synthetic golden frames (seeds 500..), 256x512, every one holding defects
INT8_CALIBRATION_FRAMES = 16  # synthetic frames (seeds 300000..), 256x512, half with defects

FAMILIES = ("severity", "segmenter", "classifier")
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


class ModelFiles(NamedTuple):
    """The checkpoint files of one model: `files` maps a role (detector, classifier, segmenter,
    gate) to its path; `family` is the family that does the inspection."""

    family: str
    files: dict[str, Path]

    @property
    def directory(self) -> Path:
        return next(iter(self.files.values())).parent


def _kind_arch(p: Path) -> tuple[str, str]:
    info = read_info(p)
    return info.kind, info.arch


def model_files(path: str | Path | None, detector_arch: str | None = None) -> ModelFiles:
    """The checkpoint files of the model at `path` (a directory, or one of its `.pt` files;
    None = the packaged synthetic default).

    Raises:
        CheckpointError: the path does not exist or holds no complete model.
    """
    p = Path(path) if path is not None else DEFAULT_CHECKPOINT_DIR
    if not p.exists():
        raise CheckpointError(f"model path {p} does not exist")
    d = p.parent if p.is_file() else p
    files: dict[str, Path] = {}
    if (d / "gate.pt").is_file():
        files["gate"] = d / "gate.pt"
    if p.is_file() and p.name.startswith("detector_"):
        det: Path | None = p
    else:
        archs = [detector_arch] if detector_arch else ["fast", "paper"]
        det = next((d / f"detector_{a}.pt" for a in archs if (d / f"detector_{a}.pt").is_file()), None)
    seg = d / "segmenter.pt"
    cls = d / "classifier.pt"
    prefer_seg = p.is_file() and p.name == "segmenter.pt"
    if seg.is_file() and (prefer_seg or det is None):
        return ModelFiles("segmenter", {"segmenter": seg, **files})
    if det is not None:
        if not cls.is_file():
            raise CheckpointError(f"no classifier checkpoint {cls} beside the detector {det}")
        return ModelFiles("severity", {"detector": det, "classifier": cls, **files})
    if cls.is_file():
        kind, arch = _kind_arch(cls)
        if kind == "classifier" and arch != "cnn4":
            return ModelFiles("classifier", {"classifier": cls, **files})
        raise CheckpointError(f"{cls} is a region classifier of the severity family; its detector_<arch>.pt is missing")
    raise CheckpointError(f"no model in {d}: expected segmenter.pt, detector_<arch>.pt + classifier.pt, "
                          f"or an image classifier.pt")


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available, else "cpu"; anything else unchanged."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def compare_detections(ref: Sequence[Sequence[Any]], got: Sequence[Sequence[Any]], frames: Sequence[np.ndarray],
                       min_iou: float, conf_tol: float) -> dict[str, Any]:
    """Whether `got` holds the same detections as `ref` on `frames`: every region of `ref` matched (greedy, best
    mask IoU) by one of `got` at mask IoU >= min_iou with the same class and |confidence difference| <= conf_tol,
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
            m[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] = d.mask
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


def _synthetic_frames(seed: int, n: int, shape: tuple[int, int] = (256, 512), defect_prob: float = 1.0) -> list[np.ndarray]:
    from models.synthetic import render_sample

    return [render_sample(seed + i, shape, defect_prob=defect_prob).image for i in range(n)]


def _image_folder(path: Path) -> list[np.ndarray]:
    import cv2

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    out = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
    return [im for im in out if im is not None]


def _use_auto(insp: Any, export_cache: str | Path | None) -> dict[str, Any]:
    """Runtime `auto`: torch on CUDA; on CPU ONNX Runtime, parity-checked like any runtime; OpenVINO (when
    installed) only if ONNX Runtime cannot be used; torch when neither can (export, load or parity failed:
    logged as a warning).

    No timed trial: one on small frames picked OpenVINO (52 vs 69 ms) where ONNX Runtime served the
    1600x256 frames of a line faster (10.4 vs 8.6 frames/s, `ops/bench/models_bench.py`), so OpenVINO is
    chosen explicitly (`--runtime openvino`) after measuring it on the plant's own frames.
    """
    from models.runtimes import openvino_available

    if not str(insp.device).startswith("cpu"):
        return {"requested": "auto", "chosen": "torch", "why": f"device {insp.device}"}
    candidates = ["onnxruntime"] + (["openvino"] if openvino_available() else [])
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


def _use_int8(insp: Any, export_cache: str | Path | None, calibration: str | Path | Sequence[np.ndarray] | None,
              min_iou: float, conf_tol: float) -> dict[str, Any]:
    """Runtime onnxruntime-int8: quantise every network (once per checkpoint content and calibration), then accept
    it only when the golden frames give the same detections as the fp32 Inspector (see compare_detections)."""
    import hashlib

    from models.runtimes import INT8, RuntimeParityError, int8_calibration, record_inputs

    parity = _synthetic_frames(500, INT8_PARITY_FRAMES)
    if calibration is None:
        frames = _synthetic_frames(300000, INT8_CALIBRATION_FRAMES, defect_prob=0.5)
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
    if not report["same"]:
        raise RuntimeParityError(
            f"int8 parity failed for {insp.model_version}: on {len(parity)} golden frames the int8 model found "
            f"{report['got']} regions where fp32 finds {report['ref']}, {report['problem_count']} differences beyond "
            f"mask IoU >= {min_iou}, same class, confidence within {conf_tol} (e.g. {report['problems'][0] if report['problems'] else '-'}); "
            f"refusing runtime {INT8} (use onnxruntime, fp32, or calibrate on the plant's frames)")
    log.info("%s passed int8 parity on detections (%d regions, min mask IoU %.3f, max confidence diff %.3g)",
             insp.model_version, report["ref"], report["min_mask_iou"], report["max_confidence_diff"])
    return report


def load_inspector(path: str | Path | None = None, device: str = "auto", detector_arch: str | None = None,
                   runtime: str = "torch", export_cache: str | Path | None = None,
                   calibration: str | Path | Sequence[np.ndarray] | None = None,
                   int8_min_iou: float | None = None, int8_conf_tol: float | None = None) -> Inspector:
    """Load the model at `path` (see `model_files`) as an Inspector, hashes verified.

    Args:
        runtime: "torch" (eager PyTorch), "onnxruntime" or "openvino" (CPU, fp32): every network
            of the model is exported to ONNX beside its checkpoint (or in `export_cache` when that
            directory is read-only; see `models.runtimes`) and must reproduce PyTorch on its golden input.
            "auto": torch when the device resolves to CUDA; on CPU ONNX Runtime (OpenVINO, when installed,
            only if ONNX Runtime cannot be used), torch when neither can be used.
            The choice is in the Inspector's `runtime` and `runtime_choice`.
            "onnxruntime-int8" (CPU): static int8 quantisation calibrated on `calibration` (a folder of
            images, frames, or None = synthetic frames like the packaged training data), accepted only
            when golden frames give the same detections as fp32 (INT8_MIN_IOU, INT8_CONF_TOL, or the
            int8_* arguments); the comparison is in `int8_parity`.
    Raises:
        CheckpointError: missing/corrupt files, a hash mismatch, or checkpoints that disagree;
            `models.runtimes.RuntimeParityError` (a CheckpointError) when an export fails parity.
        ValueError: an unknown runtime, or a CPU runtime on a CUDA device.
    """
    from models.runtimes import AUTO, INT8, check_runtime_device

    mf = model_files(path, detector_arch)
    dev = resolve_device(check_runtime_device(runtime, device))
    if mf.family == "severity":
        from models.inspector import SeverityInspector

        insp: Any = SeverityInspector.load(mf.files["detector"], device=dev)
    elif mf.family == "segmenter":
        from models.segmenter import SegmenterInspector

        insp = SegmenterInspector.load(mf.files["segmenter"], device=dev)
    else:
        from models.image_classifier import ImageClassifierInspector

        insp = ImageClassifierInspector.load(mf.files["classifier"], device=dev)
    if "gate" in mf.files:
        from models.gate import GatedInspector

        insp = GatedInspector.load(mf.files["gate"], insp, device=dev)
    if runtime == AUTO:
        insp.runtime_choice = _use_auto(insp, export_cache)
    elif runtime == INT8:
        insp.int8_parity = _use_int8(insp, export_cache, calibration,
                                     INT8_MIN_IOU if int8_min_iou is None else int8_min_iou,
                                     INT8_CONF_TOL if int8_conf_tol is None else int8_conf_tol)
    elif runtime != "torch":
        insp.use_runtime(runtime, export_cache)
    return insp


def model_identity(path: str | Path | None, detector_arch: str | None = None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(Inspector version, content hash per role, metrics per role) of the model at `path`, every
    hash verified; the version equals what `load_inspector(path).model_version` reports."""
    mf = model_files(path, detector_arch)
    loaded = {role: load_checkpoint(p) for role, p in mf.files.items()}
    order = [r for r in ("detector", "classifier", "segmenter") if r in loaded] + (["gate"] if "gate" in loaded else [])
    if mf.family == "severity" and loaded["detector"].info.class_names != loaded["classifier"].info.class_names:
        raise CheckpointError(f"{mf.files['detector']} and {mf.files['classifier']} disagree on class names")
    version = "+".join(loaded[r].info.model_version for r in order)
    hashes = {r: loaded[r].info.content_hash for r in order}
    metrics = {r: loaded[r].info.metrics for r in order}
    return version, hashes, metrics
