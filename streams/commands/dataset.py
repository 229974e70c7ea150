"""`defectstream dataset export`: reviewed frames (review_frames + labels) as a `plain` training set."""
from __future__ import annotations

import argparse
import json

from streams.commands.options import DefaultsHelpFormatter, UsageError, cameras, time_range


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dataset", help="training sets from reviewed production frames", formatter_class=DefaultsHelpFormatter)
    dsub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    ex = dsub.add_parser("export", help="write the reviewed frames of a range as a plain data set (train reads it)",
                         formatter_class=DefaultsHelpFormatter)
    ex.add_argument("--since", required=True, help="frames captured from: now, 7d, 12h, 30m, or ISO date/time (plant time)")
    ex.add_argument("--until", default="now", help="captured before (exclusive), same forms")
    ex.add_argument("--camera", action="append", metavar="ID", help="only this camera (repeatable)")
    ex.add_argument("--out", required=True, help="folder to write (created; must be empty or new)")
    ex.add_argument("--database", help="ClickHouse database (default: settings clickhouse.database)")
    ex.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from sinks.sql import DriverExecutor
    from streams.commands.report import parse_time
    from streams.review.export import export_dataset
    from streams.settings import Settings

    settings = Settings()
    now = int(time.time() * 1000)
    since, until = parse_time(args.since, settings.plant, now), parse_time(args.until, settings.plant, now)
    time_range(since, until)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        manifest = export_dataset(ex, out, since, until, cameras=cameras(args.camera))
    finally:
        ex.close()
    print(json.dumps({"out": str(out), "frames": manifest["frames_total"], "defect_frames": manifest["defect_frames"],
                      "boxes": manifest["boxes"], "classes": manifest["classes"], "skipped": manifest["skipped"]}))
    return 0
