#!/usr/bin/env python3
"""The gate in front of a model on a stream where most frames are good: frames/s with and without the gate.

    ops/bench/gated_stream.py --model DIR [--frames 80] [--good-share 0.9] [--frame 256x1600] [--threads 2]
        [--batch 4] [--runtime onnxruntime] [--repeats 3] [--seed 700000] [--out out/bench/gated_stream.json]

`--model DIR` holds `gate.pt` beside any family's checkpoints (e.g. `train segmenter` and `train gate` with the
same `--out`). The stream is `--frames` synthetic frames of `--frame` size in a fixed order: every frame is good
(no defect drawn) except one in round(1 / (1 - good share)), which carries at least one defect. The same frames
go through the gated Inspector and through the model behind the gate alone, in batches of `--batch`, in the
given runtime (both behind the parity check); the figure is the median of `--repeats` passes after a warm-up.

Reported: frames/s of both, the speed-up, the share of frames the gate skipped (good and defective apart), and what
the gate costs in findings: defective frames it skipped, and the detections on defective frames with and without
it. Prints one JSON object (and writes it to `--out`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.bench._emit import emit  # noqa: E402


def stream(n: int, good_share: float, shape: tuple[int, int], seed: int) -> tuple[list, list[bool]]:
    """`n` frames, a defective one every round(1 / (1 - good_share)) frames (none when the share is 1)."""
    from models.data.synthetic import render_sample

    every = round(1.0 / (1.0 - good_share)) if good_share < 1.0 else 0
    frames, defective = [], []
    for i in range(n):
        bad = bool(every) and i % every == every - 1
        s = render_sample(seed + i, shape, defect_prob=1.0 if bad else 0.0)
        frames.append(s.image)
        defective.append(bool(bad and s.class_mask.any()))
    return frames, defective


def timed(insp, frames: list, batch: int, repeats: int) -> tuple[float, list]:
    """Median frames/s over `repeats` passes (after one warm-up pass) and the last pass's detections."""
    insp.inspect(frames[:batch])
    rates, dets = [], []
    for _ in range(repeats):
        dets = []
        t0 = time.perf_counter()
        for i in range(0, len(frames), batch):
            dets.extend(insp.inspect(frames[i:i + batch]))
        rates.append(len(frames) / (time.perf_counter() - t0))
    return statistics.median(rates), dets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory with gate.pt beside the family's checkpoints")
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--good-share", type=float, default=0.9)
    ap.add_argument("--frame", default="256x1600", help="HxW")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runtime", default="onnxruntime", choices=("torch", "onnxruntime", "openvino"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=700_000, help="first frame seed (disjoint from training seeds)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not 0.0 <= a.good_share <= 1.0:
        ap.error("--good-share must be in [0, 1]")
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    import torch

    from models.core.checkpoints import CheckpointError
    from models.loading import load_inspector

    torch.set_num_threads(a.threads)
    try:
        h, w = (int(v) for v in a.frame.lower().split("x"))
    except ValueError:
        ap.error(f"--frame must be HxW, e.g. 256x1600, got {a.frame!r}")
    try:
        gated = load_inspector(a.model, device="cpu", runtime=a.runtime)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    inner = getattr(gated, "inner", None)
    if inner is None or not hasattr(gated, "gate_scores"):
        print(f"error: {a.model} has no gate.pt: nothing to compare", file=sys.stderr)
        return 2
    frames, defective = stream(a.frames, a.good_share, (h, w), a.seed)
    fps_alone, dets_alone = timed(inner, frames, a.batch, a.repeats)
    gated.stats.update(frames=0, skipped=0)
    fps_gated, dets_gated = timed(gated, frames, a.batch, a.repeats)
    passed = gated.gate_scores(frames) >= gated.threshold
    n_bad = sum(defective)
    n_good = len(frames) - n_bad
    emit({
        "bench": "gated_stream", "model": str(a.model), "model_version": gated.model_version,
        "family_behind_gate": inner.family, "runtime": gated.runtime, "threads": a.threads, "batch": a.batch,
        "frame": [h, w], "frames": len(frames), "good_frames": n_good, "defective_frames": n_bad,
        "frames_per_s_alone": round(fps_alone, 2), "frames_per_s_gated": round(fps_gated, 2),
        "speedup": round(fps_gated / fps_alone, 3),
        "gate_threshold": gated.threshold,
        "good_frames_skipped": int(sum(1 for p, d in zip(passed, defective) if not d and not p)),
        "defective_frames_skipped": int(sum(1 for p, d in zip(passed, defective) if d and not p)),
        "detections_on_defective_frames_alone": int(sum(len(x) for x, d in zip(dets_alone, defective) if d)),
        "detections_on_defective_frames_gated": int(sum(len(x) for x, d in zip(dets_gated, defective) if d)),
        "detections_on_good_frames_alone": int(sum(len(x) for x, d in zip(dets_alone, defective) if not d)),
        "detections_on_good_frames_gated": int(sum(len(x) for x, d in zip(dets_gated, defective) if not d)),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
