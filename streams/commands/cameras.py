"""`defectstream camera-config`: set or delete a camera's settings on the compacted `cameras` topic."""
from __future__ import annotations

import argparse

from streams.inspection.cameras import CameraConfig, publish_camera_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("camera-config", help="set or delete a camera's settings on the `cameras` topic",
                       description="Writes a CameraConfig (JSON) keyed by camera id to the compacted `cameras` "
                                   "topic; workers apply it from that camera's next part.")
    p.add_argument("camera_id")
    p.add_argument("--line", help="line id to report for this camera")
    p.add_argument("--roi", help="x0,y0,x1,y1: detections outside are ignored")
    p.add_argument("--min-confidence", type=float)
    p.add_argument("--fail-severity", type=float)
    p.add_argument("--model-version",
                   help="pin this camera to a model version (used while loaded; a `models promote --camera` wins)")
    p.add_argument("--frames-per-part", type=int)
    p.add_argument("--delete", action="store_true", help="remove the camera's entry (back to defaults)")
    p.set_defaults(func=_run_camera_config)


def _run_camera_config(args: argparse.Namespace) -> int:
    from streams.settings import Settings

    cfg = None
    if not args.delete:
        roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
        cfg = CameraConfig(camera_id=args.camera_id, line_id=args.line, roi=roi, min_confidence=args.min_confidence,
                           fail_severity=args.fail_severity, model_version=args.model_version,
                           frames_per_part=args.frames_per_part)
    publish_camera_config(Settings(), args.camera_id, cfg)
    print(cfg.to_json().decode() if cfg else f"deleted {args.camera_id}")
    return 0
