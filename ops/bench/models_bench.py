"""Benchmark: paper vs fast severity network (MPix/s on 1600x256 frames) and Inspector frames/s.

Run: .venv/bin/python ops/bench/models_bench.py [--threads 2] [--repeats 5] [--checkpoint DIR] [--runtime onnxruntime]
Prints one JSON object. The raw network speed uses each architecture with the config of its
checkpoint in --checkpoint (default: packaged; the architecture's defaults where there is none)
and untrained weights (speed does not depend on the weights); the Inspector uses the given
(default: packaged) checkpoints on synthetic 1600x256 frames, so its speed includes post-processing and classification of the
regions it finds.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch",
                    help="Inspector runtime (ops/bench/runtime_bench.py compares both in one run)")
    ap.add_argument("--flip-tta", choices=("checkpoint", "on", "off"), default="checkpoint",
                    help="Inspector: flip test-time augmentation as the checkpoint says, or forced on/off")
    args = ap.parse_args()

    import numpy as np
    import torch

    from models.detector import build_detector
    from models.inspector import DEFAULT_CHECKPOINT_DIR, SeverityInspector
    from models.registry import load_checkpoint
    from models.synthetic import render_sample

    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    h, w = 256, 1600
    result: dict = {"frame": [h, w], "batch": args.batch, "threads": args.threads, "device": device,
                    "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    x = torch.rand(args.batch, 1, h, w, device=device) * 255
    ck_dir = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT_DIR
    ck_dir = ck_dir.parent if ck_dir.is_file() else ck_dir
    for arch in ("paper", "fast"):
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
    insp = SeverityInspector.load(args.checkpoint, device="cpu" if args.runtime != "torch" else args.device)
    if args.runtime != "torch":
        insp.use_runtime(args.runtime)  # ONNX export beside the checkpoints, parity-checked at load
    result["inspector_runtime"] = insp.runtime
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
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
