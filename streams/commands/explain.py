"""`defectstream explain IMAGE… --model DIR --out DIR`: each image with its anomaly or Grad-CAM map and regions."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streams.commands.options import deprecated_alias

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `explain` subcommand."""
    ex = subparsers.add_parser(
        "explain", help="write images with the model's anomaly / Grad-CAM map and detected regions over them",
        description="For models with a per-pixel map (anomaly: the PatchCore distance map; okdefect: Grad-CAM or "
                    "Grad-CAM++ of the DEFECT patches): writes <out>/<stem>_explain.png per image and index.json.")
    ex.add_argument("images", nargs="+", help="image files (grey or colour)")
    ex.add_argument("--model", dest="checkpoint", metavar="DIR", default=None,
                    help="model directory (anomaly.pt or okdefect.pt); required")
    deprecated_alias(ex, "--checkpoint", "--model", "checkpoint")
    ex.add_argument("--out", required=True, help="output folder")
    ex.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ex.set_defaults(func=_explain)


def _explain(args: argparse.Namespace) -> int:
    import cv2
    import torch

    from models.families.anomaly.pictures import explain_picture
    from models.loading import load_inspector

    if not args.checkpoint:
        print("error: explain needs --model DIR (an anomaly or okdefect model directory)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    insp = load_inspector(args.checkpoint, device="cpu")
    if not hasattr(insp, "explain"):
        raise SystemExit(f"the {insp.family} model in {args.checkpoint} has no per-pixel map to explain with "
                         f"(anomaly and okdefect models have)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for p in args.images:
        im = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        if im is None:
            raise SystemExit(f"cannot read image {p}")
        if im.ndim == 3:
            im = cv2.cvtColor(im[:, :, :3], cv2.COLOR_BGR2RGB)
        (dets,), (score,) = insp.inspect_scored([im])
        (heat,) = insp.explain([im])
        name = f"{Path(p).stem}_explain.png"
        cv2.imwrite(str(out / name), explain_picture(im, heat, dets, score, insp.family))
        index.append({"image": p, "file": name, "score": score, "regions": len(dets)})
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"wrote {len(index)} pictures to {out}")
    return 0
