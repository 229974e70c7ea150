#!/usr/bin/env python3
"""PatchCore feature variants on 64-px tiles of a plain set with train/ and test/ splits (NEU-Seg): which Lite0
stages and neighbourhood pooling give the best tile AUROC (the figures behind the anomaly default in
models/README.md).

    .venv/bin/python ops/bench/anomaly_variants.py --data /data/neu-seg [--tile 64] [--fit 1500] [--test 1500]

Fit: a seeded subset of the defect-free train tiles, bank 4096 by greedy coreset (as `train anomaly`); test: a
seeded subset of the test tiles (with and without defect pixels); score: a tile's largest patch distance (no
smoothing). One JSON line per variant.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import models.families  # noqa: E402,F401
from models.core.backbone import _timm, imagenet_state_dict, to_input  # noqa: E402
from models.data.datasets import image_label, open_dataset, tile_samples  # noqa: E402
from models.evaluation.metrics import average_precision, image_auroc  # noqa: E402
from models.families.anomaly.fit import greedy_coreset  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--data", required=True, help="a folder with train/ and test/ in the plain layout")
ap.add_argument("--tile", type=int, default=64)
ap.add_argument("--fit", type=int, default=1500, help="good train tiles to fit on")
ap.add_argument("--test", type=int, default=1500, help="test tiles")
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
for split in ("train", "test"):
    if not (Path(args.data) / split).is_dir():
        ap.error(f"--data {args.data}: no {split}/ folder (a plain set with train/ and test/ is expected)")
torch.set_num_threads(args.threads)
rng = np.random.default_rng(0)
D = args.data
tr = [s for s in tile_samples(list(open_dataset("plain", D + "/train")), args.tile) if image_label(s) == 0]
tr = [tr[i] for i in rng.choice(len(tr), min(args.fit, len(tr)), replace=False)]
te = tile_samples(list(open_dataset("plain", D + "/test")), args.tile)
te = [te[i] for i in rng.choice(len(te), min(args.test, len(te)), replace=False)]
y = np.array([image_label(s) > 0 for s in te])
sd = imagenet_state_dict()


def run(stages, pool, score="max"):
    enc = _timm().create_model("efficientnet_lite0", pretrained=False, features_only=True, out_indices=stages).eval()
    want = enc.state_dict(); enc.load_state_dict({k: sd[k] for k in want})
    def feats(imgs):
        out = []
        with torch.inference_mode():
            for i in range(0, len(imgs), 64):
                fs = enc(to_input([s.image for s in imgs[i:i+64]], "cpu"))
                g = fs[0].shape[-2:]
                fs = [F.avg_pool2d(f, pool, 1, pool // 2, count_include_pad=False) if pool > 1 else f for f in fs]
                fs = [F.interpolate(f, size=g, mode="bilinear", align_corners=False) for f in fs]
                out.append(torch.cat(fs, 1))
        return torch.cat(out)
    t = time.time()
    f = feats(tr); c = f.shape[1]
    flat = f.permute(0, 2, 3, 1).reshape(-1, c)
    if len(flat) > 200000:
        flat = flat[torch.from_numpy(rng.choice(len(flat), 200000, replace=False))]
    idx, _ = greedy_coreset(flat, 4096)
    bank = flat[torch.as_tensor(idx)]
    ft = feats(te); n, _, h, w = ft.shape
    q = ft.permute(0, 2, 3, 1).reshape(-1, c)
    d = torch.cat([torch.cdist(q[i:i+8192], bank).min(1).values for i in range(0, len(q), 8192)]).reshape(n, h * w)
    s = d.max(1).values if score == "max" else d.topk(max(1, h * w // 10), 1).values.mean(1)
    s = s.numpy()
    return {"stages": stages, "pool": pool, "score": score, "channels": c, "grid": [h, w],
            "auroc": round(image_auroc(y, s), 4), "ap": round(average_precision(y, s), 4), "s": round(time.time() - t, 1)}


for variant in [((2, 3), 3), ((1, 2), 3), ((1, 2, 3), 3), ((2, 3), 5), ((3, 4), 3), ((2, 3, 4), 3)]:
    print(json.dumps(run(*variant)), flush=True)
