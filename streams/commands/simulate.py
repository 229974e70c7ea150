"""`defectstream simulate`: simulated cameras publish synthetic parts as Avro frames to Kafka (`streams.sim.simulator`)."""
from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path

from streams.settings import Settings
from streams.sim import simulator
from streams.sim.simulator import SimulationConfig, simulate


def _iso_ms(s: str) -> int:
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulated cameras: synthetic parts as Avro frames on Kafka, with ground truth",
                       description=simulator.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cameras", type=int, default=1, help="cameras to simulate")
    p.add_argument("--parts-per-minute", type=float, default=30.0, help="per camera (simulated time)")
    p.add_argument("--frames-per-part", type=int, default=6, help="frames per part")
    p.add_argument("--defect-rate", type=float, default=0.5, help="share of parts with a defect")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--parts", type=int, help="total parts over all cameras")
    g.add_argument("--duration", type=float, help="simulated seconds")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--encoding", choices=["jpeg", "png"], default="png", help="frame image encoding")
    p.add_argument("--ground-truth", type=Path, help="write ground truth JSONL here")
    p.add_argument("--line", default="line-1", help="line id of the cameras")
    p.add_argument("--camera-prefix", default="cam", help="camera ids are PREFIX-1, PREFIX-2, …")
    p.add_argument("--first-camera", type=int, default=1, help="number of the first camera (add cameras in a 2nd run)")
    p.add_argument("--start-time", help="simulated clock start, ISO 8601 (default: now)")
    p.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second; 0 = no pacing")
    p.add_argument("--frame-size", default="256x512", help="HxW of the frames (default 256x512)")
    p.add_argument("--topic", help="frames topic (default: settings)")
    p.add_argument("--pre-encode", action="store_true",
                   help="render and encode every frame first, then publish the stored bytes in real time (capture "
                        "times and ground truth on the wall clock of the send): a publisher that costs next to no CPU, "
                        "for benchmarks on the worker's cores; holds the whole run in memory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_simulate)


def run_simulate(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.topic:
        settings.kafka.topics.frames = args.topic
    h, w = (int(v) for v in args.frame_size.lower().split("x"))
    cfg = SimulationConfig(
        cameras=args.cameras, parts_per_minute=args.parts_per_minute, frames_per_part=args.frames_per_part,
        defect_rate=args.defect_rate, parts=args.parts, duration_s=args.duration, seed=args.seed,
        encoding=args.encoding, ground_truth=args.ground_truth, line=args.line, camera_prefix=args.camera_prefix,
        first_camera=args.first_camera, start_time_ms=_iso_ms(args.start_time) if args.start_time else None,
        time_scale=args.time_scale, frame_shape=(h, w), progress=not args.no_progress,
        pre_encode=args.pre_encode,
    )
    from streams import preflight

    preflight.check_kafka(settings.kafka)
    rep = simulate(settings, cfg)
    out = asdict(rep)
    out["fps"] = round(rep.fps, 2)
    out["sim_start"] = dt.datetime.fromtimestamp(rep.sim_start_ms / 1000, dt.timezone.utc).isoformat()
    out["sim_end"] = dt.datetime.fromtimestamp(rep.sim_end_ms / 1000, dt.timezone.utc).isoformat()
    print(json.dumps(out, indent=2))
    return 0
