"""Benchmark: paper vs fast severity network (MPix/s on 1600x256 frames) and Inspector frames/s.

Run: .venv/bin/python ops/bench/models_bench.py [--threads 2] [--repeats 5] [--checkpoint DIR] [--runtime onnxruntime]
         [--stages] [--int8] [--frame 256x1600] [--out out/bench/models.json]
Prints one JSON object (and writes it to --out).
`--stages`: the share of each stage of one micro-batch through the Inspector (JPEG decode, batch assembly,
detector network, flip TTA mirroring/averaging, upsampling, thresholds + connected components, classifier crops,
classifier network, the rest) from timers around those functions, and the cProfile top functions (by own time).
`--int8`: the int8 runtime's parity on detections (accepted or refused, with the reason) and the fp32 vs int8
ONNX Runtime speed of each network on the same input (measured also when parity refused it).
`--runtime` accepts auto and onnxruntime-int8 too (loaded as the worker loads it). The raw network speed uses each architecture with the config of its
checkpoint in --checkpoint (default: packaged; the architecture's defaults where there is none)
and untrained weights (speed does not depend on the weights); the Inspector uses the given
(default: packaged) checkpoints on synthetic 1600x256 frames, so its speed includes post-processing and classification of the
regions it finds.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino", "auto", "onnxruntime-int8"), default="torch",
                    help="Inspector runtime (ops/bench/runtime_bench.py compares both in one run)")
    ap.add_argument("--flip-tta", choices=("checkpoint", "on", "off"), default="checkpoint",
                    help="Inspector: flip test-time augmentation as the checkpoint says, or forced on/off")
    ap.add_argument("--frame", default="256x1600", help="HxW of the frames")
    ap.add_argument("--stages", action="store_true", help="stage shares and cProfile top functions of the Inspector")
    ap.add_argument("--int8", action="store_true", help="int8 parity on detections and fp32 vs int8 network speed")
    ap.add_argument("--skip-networks", action="store_true", help="leave out the raw paper/fast network timing")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    import os

    import torch

    from models.core.checkpoints import load_checkpoint
    from models.data.synthetic import render_sample
    from models.families.severity.detector import build_detector
    from models.families.severity.inspector import DEFAULT_CHECKPOINT_DIR
    from models.loading import load_inspector

    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    h, w = (int(v) for v in args.frame.lower().split("x"))
    marker = Path(__file__).resolve().parents[2] / "runs" / ".cpu-free"
    result: dict = {"frame": [h, w], "batch": args.batch, "threads": args.threads, "device": device,
                    "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                    "cpu_free_marker": marker.exists(), "load_avg_before": list(os.getloadavg())}
    x = torch.rand(args.batch, 1, h, w, device=device) * 255
    ck_dir = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT_DIR
    ck_dir = ck_dir.parent if ck_dir.is_file() else ck_dir
    for arch in (() if args.skip_networks else ("paper", "fast")):
        ck = ck_dir / f"detector_{arch}.pt"
        config = load_checkpoint(ck, expected_kind="detector").info.arch_config if ck.is_file() else {}
        result[f"{arch}_arch_config"] = config
        m = build_detector(arch, **config).to(device).eval()
        with torch.inference_mode():
            m(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                m(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / args.repeats
        result[f"{arch}_mpix_per_s"] = round(args.batch * h * w / dt / 1e6, 3)
        result[f"{arch}_ms_per_frame"] = round(1000 * dt / args.batch, 2)
        result[f"{arch}_params"] = sum(p.numel() for p in m.parameters())
    dev = args.device if args.runtime in ("torch", "auto") else "cpu"
    insp = load_inspector(args.checkpoint, device=dev, detector_arch="fast", runtime=args.runtime)  # parity-checked
    result["inspector_runtime"] = insp.runtime
    if getattr(insp, "runtime_choice", None):
        result["inspector_runtime_choice"] = insp.runtime_choice
    if args.flip_tta != "checkpoint":
        insp.flip_tta = args.flip_tta == "on"
    result["inspector_flip_tta"] = insp.flip_tta
    frames = [render_sample(900000 + i, (h, w)).image for i in range(args.batch * 2)]
    insp.inspect(frames[: args.batch])
    t0 = time.perf_counter()
    n = 0
    for _ in range(max(1, args.repeats // 2)):
        for i in range(0, len(frames), args.batch):
            res = insp.inspect(frames[i:i + args.batch])
            n += len(res)
    dt = time.perf_counter() - t0
    result["inspector_model_version"] = insp.model_version
    result["inspector_frames_per_s"] = round(n / dt, 2)
    result["inspector_mpix_per_s"] = round(n * h * w / dt / 1e6, 3)
    if args.stages:
        result["stages"] = _stages(insp, frames, args.batch, max(2, args.repeats // 2))
    if args.int8:
        result["int8"] = _int8(args.checkpoint, frames[: args.batch], max(3, args.repeats))
    result["load_avg_after"] = list(os.getloadavg())
    emit(result, args.out)


def _stages(insp, frames: list, batch: int, rounds: int) -> dict:
    """Seconds and share of each Inspector stage over `rounds` passes of `frames` in micro-batches of `batch`,
    from timers wrapped around the stage functions; JPEG decode of the same frames is timed beside it."""
    import cProfile
    import pstats

    import cv2

    import models.families.severity.inspector as mi

    acc: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1] for f in frames]
    saved = {k: getattr(mi, k) for k in ("infer_severity", "upsample_severity", "regions_from_severity", "region_crops")}
    saved_insp = {k: getattr(insp, k) for k in ("_run_detector", "_run_classifier", "_severity_once", "severity_maps")}
    for k, fn in saved.items():
        setattr(mi, k, timed(k, fn))
    insp._run_detector = timed("detector_network", saved_insp["_run_detector"])
    insp._run_classifier = timed("classifier_network", saved_insp["_run_classifier"])
    insp._severity_once = timed("_severity_once", saved_insp["_severity_once"])
    insp.severity_maps = timed("severity_maps", saved_insp["severity_maps"])
    prof = cProfile.Profile()
    total = 0.0
    n = 0
    try:
        for _ in range(rounds):
            for i in range(0, len(frames), batch):
                t0 = time.perf_counter()
                decoded = [cv2.imdecode(j, cv2.IMREAD_UNCHANGED) for j in jpegs[i:i + batch]]
                acc["decode_jpeg"] = acc.get("decode_jpeg", 0.0) + time.perf_counter() - t0
                prof.enable()
                insp.inspect(decoded)
                prof.disable()
                total += time.perf_counter() - t0
                n += len(decoded)
    finally:
        for k, fn in saved.items():
            setattr(mi, k, fn)
        for k, fn in saved_insp.items():
            setattr(insp, k, fn)
    g = lambda k: acc.get(k, 0.0)  # noqa: E731
    stages = {
        "decode_jpeg": g("decode_jpeg"),
        "batch_assembly": g("infer_severity") - g("detector_network"),  # stack, to tensor, float, pad, crop back
        "detector_network": g("detector_network"),
        "upsample": g("upsample_severity"),
        "flip_tta_mirror_and_mean": g("severity_maps") - g("_severity_once"),
        "threshold_components": g("regions_from_severity"),
        "classifier_crops": g("region_crops"),
        "classifier_network": g("classifier_network"),
    }
    stages["other"] = total - sum(stages.values())  # per-frame Python, grey conversion, detections, vote, locks
    st = pstats.Stats(prof)
    top = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]  # (file, line, fn) -> (cc, nc, tt, ct)
    return {
        "frames": n, "batch": batch, "seconds": round(total, 4), "frames_per_s": round(n / total, 2),
        "ms_per_frame": {k: round(1000 * v / n, 3) for k, v in stages.items()},
        "share": {k: round(v / total, 4) for k, v in stages.items()},
        "not_inference_share": round(1 - (stages["detector_network"] + stages["classifier_network"]) / total, 4),
        "cprofile_top_tottime": [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "calls": v[1],
                                  "tottime_ms_per_frame": round(1000 * v[2] / n, 3)} for k, v in top],
    }


def _int8(checkpoint, frames: list, repeats: int) -> dict:
    """Int8 parity on detections for the fast severity model, and fp32 vs int8 ONNX Runtime speed per network."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from models.core.checkpoints import load_checkpoint
    from models.families.severity.inspector import DEFAULT_CHECKPOINT_DIR
    from models.loading import INT8_CONF_TOL, INT8_MIN_IOU, load_inspector
    from models.runtime.runtimes import INT8, RuntimeParityError, export_name, int8_export_name

    d = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT_DIR
    out: dict = {"tolerance": {"min_mask_iou": INT8_MIN_IOU, "confidence": INT8_CONF_TOL}}
    t0 = time.perf_counter()
    try:
        insp = load_inspector(d, device="cpu", detector_arch="fast", runtime=INT8)
        out["parity"] = {"accepted": True, **insp.int8_parity}
    except RuntimeParityError as exc:
        out["parity"] = {"accepted": False, "refusal": str(exc)}
    out["load_s"] = round(time.perf_counter() - t0, 2)
    det_in = np.stack(frames).astype(np.float32)[:, None]
    crops = np.random.default_rng(0).normal(0, 1, (32, 2, 64, 64)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    for name, x in (("detector_fast", det_in[:1]), ("classifier", crops)):
        ck = d / f"{name}.pt"
        h = load_checkpoint(ck).info.content_hash
        row: dict = {"input": list(x.shape)}
        outs = {}
        for label, fname in (("fp32", export_name(ck, h)), ("int8", int8_export_name(ck, h))):
            path = d / fname
            if not path.is_file():
                row[label] = "missing"
                continue
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            outs[label] = sess.run(None, feed)[0]
            times = []
            for _ in range(repeats):
                t1 = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t1)
            dt = sorted(times)[len(times) // 2]
            row[label] = {"ms_per_call": round(1000 * dt, 2)}
            if name.startswith("detector"):
                row[label]["mpix_per_s"] = round(x.shape[0] * x.shape[2] * x.shape[3] / dt / 1e6, 2)
        if "fp32" in outs and "int8" in outs:
            row["max_abs_diff"] = float(f"{float(np.abs(outs['fp32'] - outs['int8']).max()):.3g}")
            row["mean_abs_diff"] = float(f"{float(np.abs(outs['fp32'] - outs['int8']).mean()):.3g}")
            row["speedup_int8"] = round(row["fp32"]["ms_per_call"] / row["int8"]["ms_per_call"], 2)
        out[name] = row
    return out


if __name__ == "__main__":
    main()
