"""Benchmark: eager PyTorch vs ONNX Runtime (and OpenVINO) per family x runtime x batch size x frame size, in one run.

Run: .venv/bin/python ops/bench/runtime_bench.py [--threads 2] [--sizes 256x1600,256x256] [--batches 1,4]
         [--runtimes torch,onnxruntime,openvino] [--checkpoint DIR] [--segmenter DIR] [--classifier DIR]
         [--min-time 1.5]
Prints one JSON object:
- `networks`: each network's forward call alone (input prepared as its Inspector prepares frames):
  MPix/s of frame pixels, frames/s, ms per batch per runtime, `max_abs_diff` per runtime (the
  largest |runtime - torch| of its output on the same batch) and `speedup` per runtime (vs torch);
- `inspectors`: the whole Inspector per family (pre/post-processing, region classification, gate)
  in frames/s and MPix/s, and per runtime whether it gave the same detections as torch (mask
  IoU >= 0.99, same classes, confidences within 1e-3).
OpenVINO is left out (`skipped`) when its package is not installed.
The severity family uses the given (default: packaged) checkpoints; the segmenter, image classifier
and gate use the given model directories (the gate: the segmenter directory's), else randomly
initialised networks of the shipped architectures (speed does not depend on the weights; detections of random weights are not meaningful,
so only their agreement is reported). Frames are synthetic (`models.data.synthetic.render_sample`).
ONNX exports are made in a temporary copy of every model directory (`export_s` per network).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        h, w = part.lower().split("x")
        out.append((int(h), int(w)))
    return out


def _time(fn: Callable[[], Any], min_time: float, min_iters: int) -> float:
    """Median seconds of one call (after one warm-up call), over at least min_iters calls and min_time s."""
    fn()
    times: list[float] = []
    t_end = time.perf_counter() + min_time
    while len(times) < min_iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return statistics.median(times)


def _random_lite_dir(d: Path, size: int) -> dict[str, Path]:
    """Random-init segmenter, image classifier and gate checkpoints (the shipped architectures)."""
    import torch

    from models.core.checkpoints import save_checkpoint
    from models.families.image_classifier.model import build_image_classifier
    from models.families.segmenter.model import DEFAULT_DECODER, LiteUNet

    torch.manual_seed(0)
    seg_d, cls_d = d / "segmenter", d / "classifier"
    seg = LiteUNet(4, pretrained=False, **DEFAULT_DECODER)
    save_checkpoint(seg_d / "segmenter.pt", seg.state_dict(), kind="segmenter", arch="lite0-unet",
                    arch_config={"n_classes": 4, **DEFAULT_DECODER},
                    input_spec={"channels": 3, "scale": 1.0, "pad_multiple": 32}, class_names=["1", "2", "3", "4"])
    gate = build_image_classifier(1)
    save_checkpoint(seg_d / "gate.pt", gate.state_dict(), kind="gate", arch="lite0", arch_config={"n_outputs": 1},
                    input_spec={"channels": 3, "size": size}, class_names=["1", "2", "3", "4"], threshold=1e-6)
    clf = build_image_classifier(7)
    save_checkpoint(cls_d / "classifier.pt", clf.state_dict(), kind="classifier", arch="lite0",
                    arch_config={"n_outputs": 7, "has_good": True}, input_spec={"channels": 3, "size": size},
                    class_names=[f"c{i}" for i in range(6)])
    return {"segmenter": seg_d, "classifier": cls_d}


def _copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in (src if src.is_dir() else src.parent).iterdir():
        if p.suffix in (".pt", ".json") and not p.name.startswith("train_state"):
            shutil.copy(p, dst / p.name)
    return dst


def _compare(row: dict[str, Any], outs: dict[str, Any], rate: str) -> None:
    """Speed-up and largest output difference of every runtime against torch, in `row`."""
    import numpy as np

    others = [rt for rt in outs if rt != "torch"]
    row["speedup"] = {rt: round(row[rt][rate] / row["torch"][rate], 2) for rt in others}
    row["max_abs_diff"] = {rt: float(f"{float(np.abs(outs['torch'] - outs[rt]).max()):.3g}") for rt in others}


def _agreement(a: list, b: list, frames: list) -> dict[str, Any]:
    """Whether two runtimes' detections agree: same count, mask IoU >= 0.99, same class, |conf| <= 1e-3."""
    import numpy as np

    same, n, worst_iou, worst_conf = True, 0, 1.0, 0.0
    for da, db, f in zip(a, b, frames):
        if len(da) != len(db):
            same = False
        free = list(db)
        for d in da:
            if not free:
                break
            m = np.zeros(f.shape[:2], bool)
            m[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] = d.mask
            ious = []
            for e in free:
                me = np.zeros(f.shape[:2], bool)
                me[e.bbox.y0:e.bbox.y1, e.bbox.x0:e.bbox.x1] = e.mask
                ious.append(float((m & me).sum() / max((m | me).sum(), 1)))
            k = int(np.argmax(ious))
            e = free.pop(k)
            n += 1
            worst_iou = min(worst_iou, ious[k])
            worst_conf = max(worst_conf, abs(d.confidence - e.confidence))
            same = same and ious[k] >= 0.99 and d.defect_class == e.defect_class and abs(d.confidence - e.confidence) <= 1e-3
    return {"same_detections": same, "matched": n, "min_mask_iou": round(worst_iou, 4),
            "max_confidence_diff": float(f"{worst_conf:.3g}")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads = ONNX Runtime intra-op threads")
    ap.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("256x1600,256x256"), help="HxW,HxW")
    ap.add_argument("--batches", default="1,4", help="batch sizes, comma separated")
    ap.add_argument("--checkpoint", default=None, help="severity model directory (default: packaged)")
    ap.add_argument("--segmenter", default=None, help="segmenter model directory (default: random init, with a gate)")
    ap.add_argument("--classifier", default=None, help="image classifier directory (default: random init)")
    ap.add_argument("--lite-size", type=int, default=224, help="input size of the random image classifier/gate")
    ap.add_argument("--min-time", type=float, default=1.5, help="seconds per measurement (at least)")
    ap.add_argument("--min-iters", type=int, default=3, help="calls per measurement (at least)")
    ap.add_argument("--families", default="severity-fast,severity-paper,segmenter,gate+segmenter,classifier")
    ap.add_argument("--runtimes", default="torch,onnxruntime,openvino", help="torch always runs (the reference)")
    args = ap.parse_args()

    import onnxruntime
    import torch

    from models.data.synthetic import render_sample
    from models.loading import DEFAULT_CHECKPOINT_DIR, load_inspector

    torch.set_num_threads(args.threads)
    runtimes = ["torch"] + [r for r in args.runtimes.split(",") if r and r != "torch"]
    skipped = {}
    if "openvino" in runtimes:
        try:
            import openvino  # noqa: F401
        except ImportError:
            runtimes.remove("openvino")
            skipped["openvino"] = "package not installed (pip install openvino)"
    batches = [int(b) for b in args.batches.split(",")]
    families = args.families.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    result: dict[str, Any] = {
        "threads": args.threads, "sizes": [list(s) for s in args.sizes], "batches": batches, "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "cpu": platform.processor() or platform.machine(),
        "precision": "fp32 in every runtime", "runtimes": runtimes, "skipped": skipped, "networks": [],
        "inspectors": [], "load_s": {},
    }
    try:
        sev_dir = _copy_model(Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT_DIR, tmp / "severity")
        rand = _random_lite_dir(tmp / "random", args.lite_size) if not (args.segmenter and args.classifier) else {}
        seg_dir = _copy_model(Path(args.segmenter), tmp / "segmenter") if args.segmenter else rand["segmenter"]
        if not (seg_dir / "gate.pt").is_file() and rand:  # a trained segmenter without a gate: the random gate
            shutil.copy(rand["segmenter"] / "gate.pt", seg_dir / "gate.pt")
        cls_dir = _copy_model(Path(args.classifier), tmp / "classifier") if args.classifier else rand["classifier"]
        seg_only = _copy_model(seg_dir, tmp / "segmenter-ungated")
        (seg_only / "gate.pt").unlink(missing_ok=True)
        specs = {"severity-fast": (sev_dir, "fast"), "severity-paper": (sev_dir, "paper"),
                 "segmenter": (seg_only, None), "gate+segmenter": (seg_dir, None), "classifier": (cls_dir, None)}
        loaded: dict[str, dict[str, Any]] = {}
        for fam in families:
            path, arch = specs[fam]
            if fam == "gate+segmenter" and not (path / "gate.pt").is_file():
                continue
            loaded[fam] = {}
            for rt in runtimes:
                t0 = time.perf_counter()
                loaded[fam][rt] = load_inspector(path, device="cpu", detector_arch=arch, runtime=rt)
                # for the first exporting runtime this includes the ONNX export; always the parity check
                result["load_s"][f"{fam}/{rt}"] = round(time.perf_counter() - t0, 2)

        frames_by_size = {s: [render_sample(900000 + i, s).image for i in range(max(batches))] for s in args.sizes}

        # --- networks alone ---------------------------------------------------------------------
        def network_inputs(fam: str, insp: Any, frames: list) -> dict[str, tuple[Callable[[Any], Any], Any]]:
            """name -> (runner, input tensor) for the networks of one family on these frames."""
            from models.core.families import get_family

            # the outermost family's networks (a gated model: the gate's); its spec knows their inputs
            spec = get_family(insp.family.partition("+")[0])
            return spec.bench_networks(insp, frames) if spec.bench_networks is not None else {}

        for fam, pair in loaded.items():
            for size in args.sizes:
                for b in batches:
                    frames = frames_by_size[size][:b]
                    nets = {rt: network_inputs(fam, insp, frames) for rt, insp in pair.items()}
                    for name in nets["torch"]:
                        row: dict[str, Any] = {"network": name, "frame": list(size), "batch": b,
                                               "input": list(nets["torch"][name][1].shape)}
                        outs = {}
                        for rt, by_name in nets.items():
                            run, x = by_name[name]
                            with torch.inference_mode():
                                outs[rt] = run(x).float().numpy()
                                dt = _time(lambda: run(x), args.min_time, args.min_iters)
                            row[rt] = {"mpix_per_s": round(b * size[0] * size[1] / dt / 1e6, 3),
                                       "frames_per_s": round(b / dt, 2), "ms_per_batch": round(1000 * dt, 2)}
                        _compare(row, outs, "frames_per_s")
                        result["networks"].append(row)
                    print(f"# networks {fam} {size} batch {b} done", flush=True, file=__import__("sys").stderr)

        # cnn4 region classifier on 64x64 crops (its input does not depend on the frame size)
        if "severity-fast" in loaded:
            pair = loaded["severity-fast"]
            for b in (16, 128):
                x = torch.randn(b, 2, 64, 64)
                row = {"network": "classifier_cnn4", "frame": [64, 64], "batch": b, "input": list(x.shape)}
                outs = {}
                for rt, insp in pair.items():
                    run = insp._run_classifier
                    with torch.inference_mode():
                        outs[rt] = run(x).float().numpy()
                        dt = _time(lambda: run(x), args.min_time, args.min_iters)
                    row[rt] = {"crops_per_s": round(b / dt, 1), "ms_per_batch": round(1000 * dt, 2)}
                _compare(row, outs, "crops_per_s")
                result["networks"].append(row)

        # --- whole Inspectors -------------------------------------------------------------------
        for fam, pair in loaded.items():
            for size in args.sizes:
                for b in batches:
                    frames = frames_by_size[size][:b]
                    row = {"family": fam, "frame": list(size), "batch": b}
                    dets = {}
                    for rt, insp in pair.items():
                        dets[rt] = insp.inspect(frames)
                        dt = _time(lambda: insp.inspect(frames), args.min_time, args.min_iters)
                        row[rt] = {"frames_per_s": round(b / dt, 2), "mpix_per_s": round(b * size[0] * size[1] / dt / 1e6, 3)}
                    row["speedup"] = {rt: round(row[rt]["frames_per_s"] / row["torch"]["frames_per_s"], 2)
                                      for rt in pair if rt != "torch"}
                    row["agreement"] = {rt: _agreement(dets["torch"], dets[rt], frames) for rt in pair if rt != "torch"}
                    row["detections"] = sum(len(d) for d in dets["torch"])
                    if hasattr(pair["torch"], "flip_tta"):
                        row["flip_tta"] = pair["torch"].flip_tta
                    result["inspectors"].append(row)
                    print(f"# inspector {fam} {size} batch {b} done", flush=True, file=__import__("sys").stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
