"""`defectstream replay`: a time range of recorded frames through another model under its own run id
(`streams.replay.replayer`)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Iterable

from streams.commands.options import deprecated_alias
from streams.commands.report import parse_time
from streams.replay import replayer
from streams.replay.replayer import Replayer, ReplayError, ReplayRequest, validate_run_id
from streams.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay a time range of recorded frames through another model under its own run id",
        description=replayer.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", dest="since",
                   help="(required) range start, matched against the frames' Kafka record timestamps (publish time): "
                        "ISO date/time (plant time if naive), now, or relative 2h/1d before now")
    deprecated_alias(p, "--from", "--since", "since")
    p.add_argument("--until", required=True, help="range end (exclusive), same forms")
    p.add_argument("--model", required=True, help="checkpoint directory (or detector .pt beside classifier.pt)")
    p.add_argument("--run-id", required=True, help="id of this run (not 'production'); the same id resumes it")
    p.add_argument("--camera", dest="cameras", action="append", metavar="ID",
                   help="only this camera (repeatable, or comma separated; default: every camera)")
    deprecated_alias(p, "--cameras", "--camera", "cameras", nargs="+", append=True)
    p.add_argument("--frames-topic", help="frames topic (default: settings)")
    p.add_argument("--database", help="ClickHouse database (default: settings)")
    p.add_argument("--allow-partial", action="store_true",
                   help="replay what is left when retention removed the start of the range")
    p.add_argument("--checkpoint-every", type=float, default=5.0, help="seconds between progress records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--queue-disagreements", type=int, nargs="?", const=200, default=0, metavar="N",
                   help="queue a frame of each part whose verdict differs from production's for review in the web "
                        "view (reason 'disagreement'), at most N per run (200 without N; default: none)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default=None,
                   help="model runtime (default: settings, DEFECTSTREAM_MODEL__RUNTIME; see models/runtimes.py)")
    p.set_defaults(func=run_replay)


def _cameras(values: Iterable[str] | None) -> list[str] | None:
    if not values:
        return None
    out = sorted({c.strip() for v in values for c in v.split(",") if c.strip()})
    return out or None


def run_replay(args: argparse.Namespace) -> int:
    from sinks.sql import DriverExecutor

    settings = Settings()
    if getattr(args, "runtime", None):
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"runtime": args.runtime})})
    now = int(time.time() * 1000)
    if args.since is None:
        print("error: replay needs --since (the range start)", file=sys.stderr)
        return 2
    try:
        req = ReplayRequest(
            run_id=validate_run_id(args.run_id), from_ms=parse_time(args.since, settings.plant, now),
            until_ms=parse_time(args.until, settings.plant, now), model_path=args.model,
            cameras=_cameras(args.cameras), frames_topic=args.frames_topic, allow_partial=args.allow_partial,
            checkpoint_every_s=args.checkpoint_every, progress=not args.no_progress,
            queue_disagreements=max(0, args.queue_disagreements),
        )
    except (ReplayError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from streams import preflight

    preflight.check_kafka(settings.kafka)
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    rep = None
    try:
        rep = Replayer(settings, req, ex)
        rec = rep.run()
    except ReplayError as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"replay {req.run_id} interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        if rep is not None:
            rep.close()
        ex.close()
    summary = {k: v for k, v in asdict(rec).items() if k not in ("states", "gate", "offsets", "plan")}
    print(json.dumps(summary, indent=2))
    return 0
