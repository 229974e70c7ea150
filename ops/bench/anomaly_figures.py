"""Figures of the anomaly and OK/DEFECT families: image/pixel metrics on a data set, ELPV and synthetic fits, speed.

Run (PYTHONPATH = the repository root):
  measure: .venv/bin/python ops/bench/anomaly_figures.py measure --checkpoint DIR --data PATH --format plain [--tile 64]
      image AUROC / AP, accuracy at the model's threshold, pixel AUROC (anomaly map or CAM) where masks exist,
      defect recall / precision at IoU 0.3 (connected components of the ground truth), images/s.
  elpv:    ... elpv --data ELPV_ROOT --out runs/elpv [--fit-max 300] [--split-seed 0]
      fit on the proba-0 cells of a seeded 70/30 split, test on the held-out cells: AUROC of proba >= 0.5
      against proba 0, overall and per cell type.
  synthetic: ... synthetic --out runs/anomaly-synth  (fit on good synthetic frames, test on a disjoint seed range)
  speed:   ... speed --checkpoint DIR [--threads 2]  (1600x256 frames: frames/s in torch and onnxruntime, and the
      nearest-neighbour search alone: torch matmul/min vs faiss-cpu IndexFlatL2 when faiss is importable; for an
      OK/DEFECT checkpoint the classifier without CAM, the graph with Grad-CAM and Grad-CAM++, the whole Inspector)
Prints one JSON object (and writes it to --json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import models.families  # noqa: E402,F401  (registers the families)
from models.core.types import InspectionSample  # noqa: E402
from models.data.datasets import image_label, open_dataset, sample_class_mask, tile_samples  # noqa: E402
from models.evaluation.metrics import average_precision, image_auroc  # noqa: E402
from models.loading import load_inspector  # noqa: E402


def _pixel_map(insp, frames):
    if hasattr(insp, "anomaly_maps"):
        return insp.anomaly_maps(frames)
    return [fm.cam * fm.probs.max() for fm in insp.maps(frames)]  # CAM weighted by the frame's DEFECT probability


def _recall_precision(dets, gt: np.ndarray, iou: float = 0.3) -> tuple[int, int, int, int]:
    n, lab = cv2.connectedComponents(gt.astype(np.uint8), connectivity=8)
    masks = []
    for d in dets:
        m = np.zeros(gt.shape, bool)
        m[d.bbox.y0:d.bbox.y1, d.bbox.x0:d.bbox.x1] = d.mask
        masks.append(m)
    found = 0
    matched = np.zeros(len(masks), bool)
    for k in range(1, n):
        g = lab == k
        best, bj = 0.0, -1
        for j, m in enumerate(masks):
            u = np.logical_or(g, m).sum()
            v = np.logical_and(g, m).sum() / u if u else 0.0
            if v > best:
                best, bj = v, j
        if best >= iou:
            found += 1
            matched[bj] = True
    return found, n - 1, int(matched.sum()), len(masks)


def measure(insp, samples: list[InspectionSample], batch: int = 32) -> dict:
    labels, scores, pix_s, pix_y = [], [], [], []
    rec = np.zeros(4, int)
    t0 = time.time()
    t_inspect = 0.0
    rng = np.random.default_rng(0)
    for i in range(0, len(samples), batch):
        part = samples[i:i + batch]
        frames = [s.image for s in part]
        t = time.time()
        dets, sc = insp.inspect_scored(frames)
        t_inspect += time.time() - t
        maps = _pixel_map(insp, frames)
        for s, d, v, m in zip(part, dets, sc, maps):
            gt = sample_class_mask(s) > 0
            labels.append(bool(gt.any()))
            scores.append(v)
            keep = rng.random(gt.shape) < 0.25  # a seeded quarter of the pixels keeps pixel AUROC cheap
            pix_s.append(m[keep])
            pix_y.append(gt[keep])
            rec += _recall_precision(d, gt)
    y, s = np.array(labels), np.array(scores)
    py, ps = np.concatenate(pix_y), np.concatenate(pix_s)
    return {"images": len(samples), "defective": int(y.sum()), "image_auroc": image_auroc(y, s),
            "image_ap": average_precision(y, s), "accuracy_at_threshold": float(((s > 0.5) == y).mean()),
            "recall_good_flagged": float((s[~y] > 0.5).mean()) if (~y).any() else None,
            "recall_defective_flagged": float((s[y] > 0.5).mean()) if y.any() else None,
            "pixel_auroc": image_auroc(py, ps) if py.any() else None,
            "defect_recall_iou0.3": rec[0] / rec[1] if rec[1] else None, "gt_defects": int(rec[1]),
            "detection_precision_iou0.3": rec[2] / rec[3] if rec[3] else None, "detections": int(rec[3]),
            "images_per_s": len(samples) / t_inspect, "seconds": round(time.time() - t0, 1)}


def _elpv(root: Path) -> list[tuple[str, float, str]]:
    rows = []
    for line in (root / "labels.csv").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], float(parts[1]), parts[2]))
    return rows


def _sample(img: np.ndarray, defect: bool, source: str) -> InspectionSample:
    h, w = img.shape[:2]
    from models.core.types import BBox

    boxes = ((BBox(0, 0, w, h), 1),) if defect else ()
    return InspectionSample(img, None, boxes, ("defect",), source=source)


def run_elpv(args) -> dict:
    from models.families.anomaly.fit import AnomalyFitConfig, fit_anomaly_samples

    root = Path(args.data)
    rows = _elpv(root)
    rng = np.random.default_rng(args.split_seed)
    order = rng.permutation(len(rows))
    n_test = int(0.3 * len(rows))
    test_rows = [rows[i] for i in order[:n_test]]
    rest = [rows[i] for i in order[n_test:]]
    good = [r for r in rest if r[1] == 0.0]
    val_rows = good[:args.val]
    fit_rows = good[args.val:args.val + args.fit_max]
    load = lambda r: cv2.imread(str(root / r[0]), cv2.IMREAD_GRAYSCALE)  # noqa: E731
    fit = [_sample(load(r), False, r[0]) for r in fit_rows]
    val = [_sample(load(r), False, r[0]) for r in val_rows]
    cfg = AnomalyFitConfig(tile=args.tile, threads=args.threads, bank_size=args.bank_size)
    res = fit_anomaly_samples(cfg, args.out, fit, val, {"data": str(root), "split_seed": args.split_seed})
    insp = load_inspector(args.out, device="cpu")
    test = [r for r in test_rows if r[1] == 0.0 or r[1] >= 0.5]
    t = time.time()
    sc = []
    for i in range(0, len(test), 32):
        sc += insp.inspect_scored([load(r) for r in test[i:i + 32]])[1]
    secs = time.time() - t
    y = np.array([r[1] >= 0.5 for r in test])
    s = np.array(sc)
    out = {"fit": res.info.metrics, "test_cells": len(test), "defective": int(y.sum()), "auroc": image_auroc(y, s),
           "ap": average_precision(y, s), "cells_per_s": len(test) / secs}
    for typ in ("mono", "poly"):
        k = np.array([r[2] == typ for r in test])
        out[f"auroc_{typ}"] = image_auroc(y[k], s[k])
        out[f"cells_{typ}"] = int(k.sum())
    return out


def run_synthetic(args) -> dict:
    from models.data.synthetic import render_sample
    from models.families.anomaly.fit import AnomalyFitConfig, fit_anomaly_samples

    shape = (256, 256)
    fam = args.family
    fit = [render_sample(610000 + i, shape, family=fam, defect_prob=0.0) for i in range(args.fit_max)]
    val = [render_sample(620000 + i, shape, family=fam, defect_prob=0.5) for i in range(args.val)]
    cfg = AnomalyFitConfig(tile=256, threads=args.threads, bank_size=args.bank_size)
    res = fit_anomaly_samples(cfg, args.out, fit, val, {"data": "synthetic 610000.. (good), 620000.. (val)"})
    insp = load_inspector(args.out, device="cpu")
    test = [render_sample(630000 + i, shape, family=fam, defect_prob=0.5) for i in range(args.test)]
    return {"fit": res.info.metrics, "family": fam, "test_seeds": "630000..", **measure(insp, test, batch=8)}


def run_speed(args) -> dict:
    from models.data.synthetic import render_sample

    frames = [render_sample(500 + i, (256, 1600), defect_prob=0.5).image for i in range(4)]
    out = {"threads": args.threads, "frame": "1600x256"}
    for rt in ("torch", "onnxruntime"):
        insp = load_inspector(args.checkpoint, device="cpu", runtime=rt)
        insp.inspect(frames[:1])
        t = time.time()
        for _ in range(args.repeats):
            insp.inspect(frames)
        out[f"frames_per_s_{rt}"] = args.repeats * len(frames) / (time.time() - t)
        if hasattr(insp, "model") and hasattr(insp.model, "bank"):
            out["bank_size"] = int(insp.model.bank.shape[0])
    insp = load_inspector(args.checkpoint, device="cpu")
    if hasattr(insp, "model") and hasattr(insp.model, "bank"):
        from models.families.anomaly.tiling import cut_tiles
        from models.core.backbone import to_input

        with torch.inference_mode():
            x = to_input([t for f in frames[:1] for t in cut_tiles(f, insp.tile)[0]])
            f = insp.model.features(x)
            q = (f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1]) - insp.model.mean).contiguous()
            bank = insp.model.bank
            bsq = insp.model.bank_sq

            def nn_torch():
                return ((q * q).sum(1, keepdim=True) - 2 * q @ bank.t() + bsq).min(1).values

            nn_torch()
            t = time.time()
            for _ in range(args.repeats):
                nn_torch()
            out["nn_ms_per_frame_torch"] = 1000 * (time.time() - t) / args.repeats
            out["patches_per_frame"] = int(q.shape[0])
            t = time.time()
            for _ in range(args.repeats):
                insp.model.features(x)
            out["features_ms_per_frame_torch"] = 1000 * (time.time() - t) / args.repeats
        try:
            import faiss  # optional: measured only, not a dependency

            faiss.omp_set_num_threads(args.threads)
            index = faiss.IndexFlatL2(bank.shape[1])
            index.add(bank.numpy())
            qn = q.numpy()
            index.search(qn, 1)
            t = time.time()
            for _ in range(args.repeats):
                d, _ = index.search(qn, 1)
            out["nn_ms_per_frame_faiss"] = 1000 * (time.time() - t) / args.repeats
            out["faiss_max_abs_diff"] = float(np.abs(d[:, 0] - nn_torch().clamp_min(0).numpy()).max())
        except ImportError:
            out["nn_ms_per_frame_faiss"] = None
    if hasattr(insp, "maps"):
        out.update(_okdefect_speed(args, frames))
    return out


def _okdefect_speed(args, frames: list) -> dict:
    """OK/DEFECT on the same frames: the classifier alone (patch probabilities, no CAM) against the Inspector's
    graph with both CAMs (logit + Grad-CAM + Grad-CAM++, one pass) and its whole Inspector (CAM scaling per
    patch, thresholds, regions), in torch and ONNX Runtime."""
    from models.families.anomaly.tiling import cut_tiles
    from models.families.okdefect.model import patch_outputs
    from models.runtime.runtimes import Network, Select, build_runner
    from models.families.image_classifier.model import resize_square

    out: dict = {}
    for rt in ("torch", "onnxruntime"):
        insp = load_inspector(args.checkpoint, device="cpu", runtime=rt)
        tiles = [t for f in frames for t in cut_tiles(f, insp.patch)[0]]
        out["patches_per_frame"] = len(tiles) // len(frames)
        size = int(getattr(insp, "size", insp.patch))
        out["network_input"] = size
        if size != insp.patch:  # a zoomed model: the networks see the patches as the Inspector feeds them
            tiles = [resize_square(t, size) for t in tiles]
        cam_net = insp.networks()["okdefect"]
        # its own export name: the logit-only graph must not replace the CAM graph's export beside the checkpoint
        plain = Network(cam_net.checkpoint.with_name(cam_net.checkpoint.stem + "-logit.pt"),
                        cam_net.content_hash + "-logit", Select(insp.model).eval(), cam_net.golden, cam_net.trace_shape)
        runners = {"without_cam": build_runner(plain, rt, threads=args.threads, cache_dir=Path(args.out) / "exports"),
                   "with_cam_graph": insp._run}
        for name, run in runners.items():
            patch_outputs(run, tiles[:64])
            t = time.time()
            for _ in range(args.repeats):
                patch_outputs(run, tiles)
            out[f"okdefect_{name}_frames_per_s_{rt}"] = args.repeats * len(frames) / (time.time() - t)
        insp.inspect(frames[:1])
        t = time.time()
        for _ in range(args.repeats):
            insp.inspect(frames)
        out[f"okdefect_inspector_with_cam_frames_per_s_{rt}"] = args.repeats * len(frames) / (time.time() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("measure", "elpv", "synthetic", "speed"))
    ap.add_argument("--checkpoint")
    ap.add_argument("--data")
    ap.add_argument("--format", default="plain")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default="runs/anomaly")
    ap.add_argument("--fit-max", type=int, default=300)
    ap.add_argument("--val", type=int, default=60)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--bank-size", type=int, default=4096)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--family", default="steel_strip", help="synthetic: surface family (one line, one surface)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "measure":
        samples = list(open_dataset(args.format, args.data, limit=args.limit))
        if args.tile:
            samples = tile_samples(samples, args.tile)
        res = {"checkpoint": args.checkpoint, "data": args.data, "tile": args.tile,
               **measure(load_inspector(args.checkpoint, device="cpu"), samples)}
    elif args.mode == "elpv":
        args.tile = args.tile or 300
        res = run_elpv(args)
    elif args.mode == "synthetic":
        res = run_synthetic(args)
    else:
        res = run_speed(args)
    text = json.dumps(res, indent=1, default=float)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
