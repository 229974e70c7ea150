"""`defectstream camera-config` and `defectstream cameras reset|alias`: camera records on the compacted `cameras` topic.

`camera-config CAM …` sets or deletes a camera's settings. `cameras reset CAM` tells the workers
that CAM was replaced and counts ``frame_seq`` from 0 again (a `CameraReset`: each worker clears
that camera's sequence history once, at its next frame; publish it after the old camera stopped,
frames of the new one read before it are dead-lettered as out of order). `cameras alias NEW OLD`
says NEW is the renamed OLD: OLD's camera config and camera-scoped promotion apply to NEW while NEW
has none of its own (`--clear` removes it). See `streams.inspection.cameras`.
"""
from __future__ import annotations

import argparse
import json

from streams.inspection.cameras import CameraConfig, publish_camera_alias, publish_camera_config, publish_camera_reset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("camera-config", help="set or delete a camera's settings on the `cameras` topic",
                       description="Writes a CameraConfig (JSON) keyed by camera id to the compacted `cameras` "
                                   "topic; workers apply it from that camera's next part.")
    p.add_argument("camera_id")
    p.add_argument("--line", help="line id to report for this camera")
    p.add_argument("--roi", help="x0,y0,x1,y1: detections outside are ignored")
    p.add_argument("--min-confidence", type=float, help="this camera's minimum defect confidence (default: settings)")
    p.add_argument("--fail-severity", type=float, help="this camera's severity that fails a part (default: settings)")
    p.add_argument("--model-version",
                   help="pin this camera to a model version (used while loaded; a `models promote --camera` wins)")
    p.add_argument("--frames-per-part", type=int, help="frames per part of this camera (default: settings)")
    p.add_argument("--delete", action="store_true", help="remove the camera's entry (back to defaults)")
    p.set_defaults(func=_run_camera_config)

    c = sub.add_parser("cameras", help="reset a replaced camera's frame_seq, or alias a renamed camera",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = c.add_subparsers(dest="cameras_command", metavar="ACTION")
    r = csub.add_parser("reset", help="the camera was replaced: its frame_seq restarts (workers forget the old one)")
    r.add_argument("camera_id")
    r.add_argument("--note", default="", help="why (stored with the record)")
    r.set_defaults(func=_run_reset)
    a = csub.add_parser("alias", help="NEW is the renamed OLD: OLD's config and camera promotion follow it")
    a.add_argument("camera_id", metavar="NEW")
    a.add_argument("alias_of", metavar="OLD", nargs="?")
    a.add_argument("--clear", action="store_true", help="remove NEW's alias (no OLD)")
    a.add_argument("--note", default="", help="free text stored with the alias")
    a.set_defaults(func=_run_alias)
    c.set_defaults(func=lambda args: (c.print_help(), 2)[1])


def _checked_settings():
    """The settings, once the broker answered (an unreachable one is one line within 10 s, not client retries)."""
    from streams import preflight
    from streams.settings import Settings

    settings = Settings()
    preflight.check_kafka(settings.kafka)
    return settings


def _run_reset(args: argparse.Namespace) -> int:
    rec = publish_camera_reset(_checked_settings(), args.camera_id, note=args.note)
    print(rec.to_json().decode())
    return 0


def _run_alias(args: argparse.Namespace) -> int:
    import sys

    if args.clear == bool(args.alias_of):
        print("cameras alias: give NEW OLD, or NEW --clear", file=sys.stderr)
        return 2
    if args.alias_of == args.camera_id:
        print("cameras alias: a camera cannot be its own alias", file=sys.stderr)
        return 2
    rec = publish_camera_alias(_checked_settings(), args.camera_id, None if args.clear else args.alias_of, note=args.note)
    print(rec.to_json().decode() if rec else json.dumps({"cleared_alias": args.camera_id}))
    return 0


def _run_camera_config(args: argparse.Namespace) -> int:
    cfg = None
    if not args.delete:
        roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
        cfg = CameraConfig(camera_id=args.camera_id, line_id=args.line, roi=roi, min_confidence=args.min_confidence,
                           fail_severity=args.fail_severity, model_version=args.model_version,
                           frames_per_part=args.frames_per_part)
    publish_camera_config(_checked_settings(), args.camera_id, cfg)
    print(cfg.to_json().decode() if cfg else f"deleted {args.camera_id}")
    return 0
