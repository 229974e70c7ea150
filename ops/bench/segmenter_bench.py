#!/usr/bin/env python3
"""Segmenter cost: where an Inspector's time goes per stage and runtime, and what decoder variants cost.

    ops/bench/segmenter_bench.py [--model DIR] [--data DIR] [--runtimes torch,onnxruntime,onnxruntime-int8]
        [--int8-calibration DIR] [--threads 2] [--batch 4] [--frames 16] [--repeats 3] [--frame 256x1600]
        [--variants] [--eval-data TEST_SET] [--out out/bench/segmenter.json]

Frames: 1600x256 (`--frame`) mosaics of the images in `--data` (each image resized to the frame's height and
laid side by side, so a real model sees real surfaces and finds real regions), else synthetic steel-strip frames.
Model: `--model DIR` (a trained segmenter), else a random-initialised one of the default architecture (its regions
are noise: use a trained model for the post-processing figures).

Per runtime: Inspector frames/s over `--frames` frames in batches of `--batch` (median of `--repeats` passes), and
ms per frame of each stage, from timers around the functions the Inspector calls: `prepare` (scale, pad to 32,
normalise to float), `network` (the runner: PyTorch, ONNX Runtime or int8), `softmax_upsample` (softmax at the
logits' resolution, bilinear upsampling of the probabilities to the frame), `regions` (argmax, per-class
thresholds, connected components, Detections), `image_score`. onnxruntime-int8 runs only behind the parity gate on
detections (models/runtime/choice.py); a refusal is reported with its reason, never served. It quantises the
family's `int8_scope` (the whole graph); `onnxruntime-int8-encoder` quantises the Lite0 encoder only, for comparison.
A refused int8 is still timed (and evaluated with `--eval-data`): its row says `served: false` and why, and it is never served.

`--variants`: GFLOP per frame (torch.utils.flop_counter) and network frames/s in ONNX Runtime fp32 and int8 (random
weights, random calibration: speed only) of the decoder variants, the data behind the default in models/README.md.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from ops.bench._emit import emit  # noqa: E402

VARIANTS = {  # name -> LiteUNet decoder keyword arguments
    "res2 (before)": {"decoder": [128, 64, 48, 32], "out_stride": 2, "block": "res"},
    "res4": {"decoder": [128, 64, 48], "out_stride": 4, "block": "res"},
    "res4 narrow": {"decoder": [96, 48, 32], "out_stride": 4, "block": "res"},
    "res8": {"decoder": [128, 64], "out_stride": 8, "block": "res"},
    "sep2": {"decoder": [128, 64, 48, 32], "out_stride": 2, "block": "sep"},
    "sep4 (default)": {"decoder": [128, 64, 48], "out_stride": 4, "block": "sep"},
}


def mosaic_frames(data: Path | None, n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
    """`n` (h, w) uint8 frames: mosaics of the images under `data` (resized to height h, side by side), or
    synthetic steel-strip frames when `data` is None."""
    import cv2

    if data is None:
        from models.data.synthetic import render_sample

        return [render_sample(seed + i, (h, w)).image for i in range(n)]
    files = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))
    files = [p for p in files if "mask" not in p.parts[-2].lower()]
    if not files:
        raise SystemExit(f"segmenter_bench: no images under {data}")
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        row, width = [], 0
        while width < w:
            im = cv2.imread(str(files[int(rng.integers(len(files)))]), cv2.IMREAD_GRAYSCALE)
            im = cv2.resize(im, (max(1, round(im.shape[1] * h / im.shape[0])), h), interpolation=cv2.INTER_AREA)
            row.append(im)
            width += im.shape[1]
        frames.append(np.ascontiguousarray(np.concatenate(row, 1)[:, :w]))
    return frames


def network_gflop(model, h: int, w: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.coarse_logits(torch.zeros(1, 3, h, w))
    return round(fc.get_total_flops() / 1e9, 2)


def _stages(insp, frames: list[np.ndarray], batch: int, repeats: int) -> dict:
    import models.families.segmenter.model as sm

    acc: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    patched = {k: getattr(sm, k) for k in ("prepare_frame", "to_input", "_to_frame")}
    run, det, score = insp._run, insp.detections, insp.image_score
    for k, fn in patched.items():
        setattr(sm, k, timed({"prepare_frame": "prepare", "to_input": "prepare", "_to_frame": "upsample"}[k], fn))
    insp._run, insp.detections, insp.image_score = timed("network", run), timed("regions", det), timed("image_score", score)
    passes, n_det = [], 0
    try:
        insp.inspect(frames[:batch])  # warm-up: sessions, caches
        acc.clear()
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(frames), batch):
                n_det += sum(len(d) for d in insp.inspect(frames[i:i + batch]))
            passes.append(time.perf_counter() - t0)
    finally:
        for k, fn in patched.items():
            setattr(sm, k, fn)
        insp._run, insp.detections, insp.image_score = run, det, score
    n = len(frames) * repeats
    total = sum(passes)
    ms = {k: 1000 * v / n for k, v in acc.items()}
    probs_ms = 1000 * total / n - sum(ms.values())
    ms["softmax_upsample"] = ms.pop("upsample", 0.0) + probs_ms  # the softmax and numpy copies are the rest
    return {"frames_per_s": round(len(frames) / float(np.median(passes)), 2),
            "ms_per_frame": {k: round(v, 2) for k, v in sorted(ms.items(), key=lambda kv: -kv[1])},
            "detections_per_frame": round(n_det / n, 2)}


def _session(data: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _variants(h: int, w: int, batch: int, threads: int, repeats: int, int8: bool) -> dict:
    import torch

    from models.families.segmenter.model import LiteUNet, _Coarse
    from models.runtime.runtimes import _quantize_bytes

    out = {}
    x = np.random.default_rng(0).normal(0, 1, (batch, 3, h, w)).astype(np.float32)
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        m = LiteUNet(3, pretrained=False, **kw).eval()
        row: dict = {**kw, "gflop_per_frame": network_gflop(m, h, w)}
        buf = io.BytesIO()
        with torch.inference_mode():
            torch.onnx.export(_Coarse(m), torch.from_numpy(x[:1]), buf, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "b", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
        blobs = {"onnxruntime": buf.getvalue()}
        if int8:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "f.onnx").write_bytes(blobs["onnxruntime"])
                blobs["onnxruntime-int8"] = _quantize_bytes(Path(tmp) / "f.onnx", [x[:1], x[1:2]], {})
        for rt, blob in blobs.items():
            s = _session(blob, threads)
            s.run(None, {"input": x})
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                s.run(None, {"input": x})
                ts.append(time.perf_counter() - t0)
            row[f"{rt}_network_frames_per_s"] = round(batch / float(np.median(ts)), 2)
        out[name] = row
        print(f"segmenter_bench: {name}: {row}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="trained segmenter directory (default: random default architecture)")
    ap.add_argument("--data", default=None, help="folder of real images for the mosaic frames (default: synthetic)")
    ap.add_argument("--runtimes", default="torch,onnxruntime,onnxruntime-int8")
    ap.add_argument("--int8-calibration", default=None, help="folder of the model's own images for int8 calibration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frame", default="256x1600", help="HxW")
    ap.add_argument("--variants", action="store_true", help="GFLOP and network speed of the decoder variants")
    ap.add_argument("--no-int8-variants", action="store_true", help="with --variants: fp32 only")
    ap.add_argument("--skip-inspector", action="store_true", help="only --variants")
    ap.add_argument("--eval-data", default=None, help="a plain test set (images/, masks/): each runtime's mIoU on "
                    "it, an int8 runtime the parity gate refused included (measured, never served)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for flag, value in (("--model", args.model), ("--data", args.data), ("--eval-data", args.eval_data),
                        ("--int8-calibration", args.int8_calibration)):
        if value is not None and not Path(value).is_dir():
            ap.error(f"{flag} {value}: no such folder")
    import torch

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.frame.lower().split("x"))
    result: dict = {"bench": "segmenter", "frame": [h, w], "threads": args.threads, "batch": args.batch,
                    "cpus": os.cpu_count(), "load_avg_before": list(os.getloadavg())}
    if not args.skip_inspector:
        from models.core.checkpoints import CheckpointError
        from models.loading import load_inspector

        with tempfile.TemporaryDirectory(prefix="segbench-") as tmp:
            model_dir = Path(args.model) if args.model else _random_model(Path(tmp))
            frames = mosaic_frames(Path(args.data) if args.data else None, args.frames, h, w)
            result.update(model=str(model_dir), frames_from=args.data or "synthetic", n_frames=len(frames))
            base = load_inspector(model_dir, device="cpu", runtime="torch")
            result["model_version"] = base.model_version
            result["network_gflop_per_frame"] = network_gflop(base.model, h, w)
            result["decoder"] = {k: base.info.arch_config.get(k) for k in ("decoder", "out_stride", "block")}
            rows = {}
            from models.runtime.choice import INT8_CONF_TOL, INT8_MIN_IOU, use_int8

            for rt in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
                row: dict = {}
                try:
                    if rt.startswith("onnxruntime-int8"):
                        # the parity gate's verdict; the int8 runners are measured either way (never served here)
                        insp = load_inspector(model_dir, device="cpu", runtime="torch")
                        if rt == "onnxruntime-int8-encoder":  # int8 in the Lite0 encoder only, the decoder float32
                            insp.int8_scope = "/encoder/"
                        rep = use_int8(insp, tmp, args.int8_calibration, INT8_MIN_IOU, INT8_CONF_TOL, enforce=False)
                        row.update(int8_scope=insp.int8_scope or "whole graph", served=bool(rep["same"]),
                                   parity={k: v for k, v in rep.items() if k != "problems"})
                        if not rep["same"]:
                            row["refused"] = (f"int8 found {rep['got']} regions where fp32 finds {rep['ref']}, "
                                              f"{rep['problem_count']} differences beyond mask IoU >= {INT8_MIN_IOU}, "
                                              f"same class, confidence within {INT8_CONF_TOL} (e.g. "
                                              f"{rep['problems'][0] if rep['problems'] else '-'})")
                    else:
                        insp = base if rt == "torch" else load_inspector(model_dir, device="cpu", runtime=rt,
                                                                         export_cache=tmp)
                except CheckpointError as exc:  # no export, or quantisation failed
                    rows[rt] = {"refused": str(exc)}
                    continue
                row.update(_stages(insp, frames, args.batch, args.repeats))
                if args.eval_data:
                    row["eval"] = _evaluate(insp, Path(args.eval_data))
                rows[rt] = row
                print(f"segmenter_bench: {rt}: {row['frames_per_s']} frames/s", file=sys.stderr, flush=True)
            result["inspector"] = rows
    if args.variants:
        result["variants"] = _variants(h, w, args.batch, args.threads, args.repeats, not args.no_int8_variants)
    result["load_avg_after"] = list(os.getloadavg())
    emit(result, args.out)


def _evaluate(insp, data: Path) -> dict:
    """The segmentation figures of `insp` on a plain test set (`defectstream evaluate`'s report)."""
    from models.data.datasets import open_dataset
    from models.evaluation.evaluate import evaluate_inspector

    m = evaluate_inspector(insp, list(open_dataset("plain", str(data)))).metrics
    keep = ("miou_classes_with_background", "miou_classes", "pooled_defect_iou", "classification_accuracy")
    return {k: m.get(k) for k in keep}


def _random_model(d: Path) -> Path:
    import torch

    from models.core.checkpoints import save_checkpoint
    from models.families.segmenter.model import DEFAULT_DECODER, LiteUNet

    torch.manual_seed(0)
    seg = LiteUNet(3, pretrained=False, **DEFAULT_DECODER)
    save_checkpoint(d / "segmenter.pt", seg.state_dict(), kind="segmenter", arch="lite0-unet",
                    arch_config={"n_classes": 3, **DEFAULT_DECODER},
                    input_spec={"channels": 3, "scale": 1.0, "pad_multiple": 32}, class_names=["a", "b", "c"])
    return d


if __name__ == "__main__":
    main()
