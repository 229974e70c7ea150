"""GPU benchmark of the severity detector: frames/s per GPU on 1600x256 frames; prints JSON. CI never needs it.

Run on a machine with a CUDA GPU:
    .venv/bin/python ops/bench/gpu_bench.py --frames 8192 --batches 64,256,512 [--dtype bf16] [--arch fast]
Smoke test without a GPU (checks the script end to end on tiny numbers):
    .venv/bin/python ops/bench/gpu_bench.py --device cpu --frames 8 --batches 4
The segmenter a plant trains (`--family segmenter`, `--model DIR`; without it a random-initialised default
architecture, whose regions are noise):
    .venv/bin/python ops/bench/gpu_bench.py --family segmenter --model DIR --frames 2048 --batches 16,64,128
    .venv/bin/python ops/bench/gpu_bench.py --family segmenter --device cpu --frames 4 --batches 2 --frame 64x256

What it measures, per batch size:
- `network_frames_per_s`: the detector alone on a batch already on the device (bf16 autocast on CUDA by default,
  channels_last), i.e. the GPU's ceiling;
- `pipeline_frames_per_s`: JPEG bytes -> frames/s of severity maps back on the host, with JPEG decode on a pool of
  CPU threads overlapped with inference: decoded frames go into pinned host buffers, are copied to the GPU
  with non_blocking on a side stream while the previous batch runs, and the cell maps come back asynchronously.
  It tells whether the box's CPUs (decode) or the GPU bound the detector stage;
- `decode_frames_per_s`: the CPU decode pool alone (its ceiling).
Weights come from the packaged checkpoint (`--checkpoint DIR` for others). The Inspector's post-processing
(thresholds, components, region classifier) is CPU work per frame and is not part of this figure.

Segmenter rows: `network_frames_per_s` (its coarse-logit network on a resident batch, autocast on CUDA) and
`inspector_frames_per_s` (the whole Inspector on the device, `load_inspector(DIR, device=...)`: upload, network,
probabilities, regions back on the host), with `ms_per_frame_outside_network` between the two.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (smoke test)")
    ap.add_argument("--frames", type=int, default=4096, help="frames per measurement")
    ap.add_argument("--batches", default="64,256,512", help="batch sizes, comma separated")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="autocast dtype on CUDA")
    ap.add_argument("--arch", choices=("fast", "paper"), default="fast")
    ap.add_argument("--frame", default="256x1600", help="HxW")
    ap.add_argument("--decode-threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--family", choices=("severity", "segmenter"), default="severity")
    ap.add_argument("--model", default=None, help="--family segmenter: a trained segmenter directory")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    {"severity": severity, "segmenter": segmenter}[args.family](args)


def severity(args: argparse.Namespace) -> None:
    import cv2
    import numpy as np
    import torch

    from models.core.checkpoints import load_checkpoint
    from models.data.synthetic import render_sample
    from models.families.severity.detector import build_detector
    from models.families.severity.inspector import DEFAULT_CHECKPOINT_DIR

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --frames 8 for the smoke test")
    h, w = (int(v) for v in args.frame.lower().split("x"))
    ck = load_checkpoint(Path(args.checkpoint or DEFAULT_CHECKPOINT_DIR) / f"detector_{args.arch}.pt", expected_kind="detector")
    model = build_detector(args.arch, **ck.info.arch_config)
    model.load_state_dict(ck.state_dict)
    model = model.to(dev).eval()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    amp = cuda and dtype != torch.float32
    base = [render_sample(910000 + i, (h, w), defect_prob=1.0).image for i in range(16)]
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1] for f in base]
    result: dict = {"benchmark": "gpu_detector", "device": str(dev),
                    "gpu": torch.cuda.get_device_name(dev) if cuda else None, "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "arch": args.arch,
                    "frame": [h, w], "autocast": args.dtype if amp else "fp32", "decode_threads": args.decode_threads,
                    "frames": args.frames, "rows": []}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=dtype, enabled=amp):
            return model(x).severity

    pool = ThreadPoolExecutor(args.decode_threads)
    # cv2 releases the GIL while decoding; one cv2 thread per pool thread
    cv2.setNumThreads(1)
    for b in [int(v) for v in args.batches.split(",") if v]:
        n_batches = max(1, args.frames // b)
        row: dict = {"batch": b, "batches": n_batches}
        # the network alone, input resident on the device
        x = torch.rand(b, 1, h, w, device=dev) * 255
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        forward(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(n_batches):
            forward(x)
        sync()
        dt = time.perf_counter() - t0
        row["network_frames_per_s"] = round(n_batches * b / dt, 1)
        row["network_mpix_per_s"] = round(n_batches * b * h * w / dt / 1e6, 1)
        del x

        def decode_into(buf: np.ndarray, start: int) -> None:
            for i in range(buf.shape[0]):
                buf[i] = cv2.imdecode(jpegs[(start + i) % len(jpegs)], cv2.IMREAD_GRAYSCALE)

        # the decode pool alone
        chunk = max(1, b // args.decode_threads)
        host = np.empty((b, h, w), np.uint8)
        t0 = time.perf_counter()
        for k in range(n_batches):
            list(pool.map(lambda s: decode_into(host[s:s + chunk], k * b + s), range(0, b, chunk)))
        row["decode_frames_per_s"] = round(n_batches * b / (time.perf_counter() - t0), 1)

        # decode overlapped with inference: two pinned host buffers, copies on a side stream
        pinned = [torch.empty((b, h, w), dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        copy_stream = torch.cuda.Stream(dev) if cuda else None
        outs = []

        def decode_batch(k: int, slot: int):
            arr = pinned[slot].numpy()
            return [pool.submit(decode_into, arr[s:s + chunk], k * b + s) for s in range(0, b, chunk)]

        t0 = time.perf_counter()
        pending = decode_batch(0, 0)
        for k in range(n_batches):
            slot = k % 2
            for f in pending:
                f.result()
            if k + 1 < n_batches:
                pending = decode_batch(k + 1, 1 - slot)  # next batch decodes while this one runs
            if cuda:
                with torch.cuda.stream(copy_stream):
                    xg = pinned[slot].to(dev, non_blocking=True)
                torch.cuda.current_stream(dev).wait_stream(copy_stream)
                # the pinned slot is reused two batches later, after this copy has completed
            else:
                xg = pinned[slot].clone()
            xf = xg.unsqueeze(1).float()
            if cuda:
                xf = xf.contiguous(memory_format=torch.channels_last)
            sev = forward(xf)
            outs.append(sev.float().to("cpu", non_blocking=cuda))
            if cuda:
                copy_stream.wait_stream(torch.cuda.current_stream(dev))
            if len(outs) > 2:
                outs.pop(0)
        sync()
        dt = time.perf_counter() - t0
        row["pipeline_frames_per_s"] = round(n_batches * b / dt, 1)
        row["bound_by"] = "decode (CPU)" if row["decode_frames_per_s"] < row["network_frames_per_s"] else f"network ({dev.type})"
        if cuda:
            row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        result["rows"].append(row)
        print(f"# batch {b} done", flush=True, file=__import__("sys").stderr)
    pool.shutdown()
    emit(result, args.out)


def segmenter(args: argparse.Namespace) -> None:
    import tempfile

    import torch

    from models.loading import load_inspector
    from segmenter_bench import _random_model, mosaic_frames  # ops/bench/segmenter_bench.py

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --frames 4 --batches 2 for the smoke test")
    h, w = (int(v) for v in args.frame.lower().split("x"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    amp = cuda and dtype != torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else _random_model(Path(tmp))
        try:
            insp = load_inspector(model_dir, device=str(dev), runtime="torch")
        except (OSError, ValueError, RuntimeError) as exc:  # CheckpointError (a RuntimeError): missing or unreadable
            raise SystemExit(f"gpu_bench: cannot load a segmenter from {model_dir}: {exc}") from None
        net = insp._coarse.eval()
        if cuda:
            net = net.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        frames = mosaic_frames(None, 16, h, w)
        result: dict = {"benchmark": "gpu_segmenter", "device": str(dev),
                        "gpu": torch.cuda.get_device_name(dev) if cuda else None, "torch": torch.__version__,
                        "model": str(args.model) if args.model else "random default architecture",
                        "model_version": insp.model_version, "frame": [h, w],
                        "autocast": args.dtype if amp else "fp32", "frames": args.frames, "rows": []}
        for b in [int(v) for v in args.batches.split(",") if v]:
            n_batches = max(1, args.frames // b)
            row: dict = {"batch": b, "batches": n_batches}
            x = torch.rand(b, 3, h, w, device=dev)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)

            def forward() -> None:
                with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=dtype, enabled=amp):
                    net(x)

            for _ in range(3):  # warm-up: kernels, allocator, cudnn autotuning
                forward()
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            for _ in range(n_batches):
                forward()
            if cuda:
                torch.cuda.synchronize(dev)
            row["network_frames_per_s"] = round(n_batches * b / (time.perf_counter() - t0), 1)
            del x
            insp.batch = b
            batch = [frames[i % len(frames)] for i in range(b)]
            insp.inspect(batch)  # warm-up
            t0 = time.perf_counter()
            n_det = 0
            for _ in range(n_batches):
                n_det += sum(len(d) for d in insp.inspect(batch))
            dt = time.perf_counter() - t0
            row["inspector_frames_per_s"] = round(n_batches * b / dt, 1)
            row["ms_per_frame_outside_network"] = round(
                1000 * (dt / (n_batches * b) - 1 / row["network_frames_per_s"]), 2)
            row["detections_per_frame"] = round(n_det / (n_batches * b), 2)
            if cuda:
                row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            result["rows"].append(row)
        emit(result, args.out)


if __name__ == "__main__":
    main()
