"""Training of the sequence vote from part sequences whose defects are known across frames.

The training tracks are the defects of rendered part sequences (`models.data.synthetic.render_part_sequence`):
one crop per frame a defect is visible on, cut around its ground-truth box moved and scaled at random (as a
detector's box would be), with frames dropped at random (as a detector misses some) so that the GRU sees the
lengths and gaps of real tracks. Validation tracks come from a disjoint seed range and are cut at the
ground-truth boxes. The weights with the best validation accuracy are kept; the checkpoint records the seeds,
counts and figures.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.core.backbone import to_input
from models.core.checkpoints import save_checkpoint
from models.families.track_vote.model import ARCH, FILE, KIND, TrackVoterNet, crop_box

__all__ = ["TrackSet", "VoteTrainConfig", "synthetic_tracks", "train_track_vote"]


@dataclass
class TrackSet:
    crops: list[np.ndarray]  # per track: uint8 (T, S, S)
    labels: list[int]
    borderline: list[bool]
    classes: list[str]


@dataclass
class VoteTrainConfig:
    out: str
    parts: int = 600  # training part sequences
    val_parts: int = 150
    seed: int = 200_000  # first training part seed (validation: the range after it)
    frames_per_part: int = 6
    frame_shape: tuple[int, int] = (256, 512)
    size: int = 64
    epochs: int = 8
    batch: int = 16
    lr: float = 1e-3
    threads: int = 2
    pretrained: bool = True
    progress: bool = True


def _jitter(box: Sequence[float], rng: np.random.Generator, shape: tuple[int, int]) -> tuple[float, ...]:
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = max(1.0, x1 - x0), max(1.0, y1 - y0)
    s = rng.uniform(0.85, 1.2)
    cx, cy = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * w, (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * h
    return (max(0.0, cx - s * w / 2), max(0.0, cy - s * h / 2), min(shape[1], cx + s * w / 2),
            min(shape[0], cy + s * h / 2))


def synthetic_tracks(first_seed: int, parts: int, frames_per_part: int, frame_shape: tuple[int, int], size: int,
                     classes: Sequence[str], *, augment: bool, rng: np.random.Generator,
                     progress: Callable[[int], None] | None = None) -> TrackSet:
    """The defect tracks of `parts` rendered sequences from `first_seed` on (see the module docstring)."""
    from models.data.synthetic import render_part_sequence

    out = TrackSet([], [], [], list(classes))
    index = {c: i for i, c in enumerate(classes)}
    for j in range(parts):
        seq = render_part_sequence(first_seed + j, n_frames=frames_per_part, frame_shape=frame_shape)
        for d in seq.defects:
            if d.defect_class not in index or not d.boxes:
                continue
            frames = sorted(d.boxes)
            if augment and len(frames) > 1:
                kept = [f for f in frames if rng.random() < 0.85]
                frames = kept or [frames[int(rng.integers(len(frames)))]]
            crops = [crop_box(seq.frames[f], _jitter(d.boxes[f], rng, frame_shape) if augment else d.boxes[f], size)
                     for f in frames]
            out.crops.append(np.stack(crops))
            out.labels.append(index[d.defect_class])
            out.borderline.append(bool(d.borderline))
        if progress is not None:
            progress(1)
    return out


def _accuracy(model: TrackVoterNet, ts: TrackSet, batch: int) -> dict[str, float]:
    model.eval()
    pred: list[int] = []
    with torch.inference_mode():
        for i in range(0, len(ts.crops), batch):
            chunk = ts.crops[i:i + batch]
            x = to_input([c for t in chunk for c in t])
            pred += model.forward_batch(x, [len(t) for t in chunk]).argmax(1).tolist()
    y = np.asarray(ts.labels)
    p = np.asarray(pred)
    imprint = np.asarray([ts.classes[k].startswith("imprint") for k in y])
    border = np.asarray(ts.borderline)
    res = {"accuracy": float((p == y).mean()) if len(y) else 0.0, "tracks": int(len(y))}
    if imprint.any():
        res["imprint_accuracy"] = float((p[imprint] == y[imprint]).mean())
        res["imprint_tracks"] = int(imprint.sum())
    if border.any():
        res["borderline_accuracy"] = float((p[border] == y[border]).mean())
        res["borderline_tracks"] = int(border.sum())
    return res


def train_track_vote(cfg: VoteTrainConfig, classes: Sequence[str], log: Callable[[str], None] = print
                     ) -> tuple[Path, list[float], dict[str, float]]:
    """Train and write `cfg.out`/track_vote.pt. Returns (checkpoint path, loss per step, validation figures)."""
    from tqdm import tqdm

    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    t0 = time.time()
    bar = tqdm(total=cfg.parts + cfg.val_parts, unit="part", desc="track-vote: render", file=sys.stderr,
               disable=not cfg.progress)
    train = synthetic_tracks(cfg.seed, cfg.parts, cfg.frames_per_part, cfg.frame_shape, cfg.size, classes,
                             augment=True, rng=rng, progress=bar.update)
    val = synthetic_tracks(cfg.seed + cfg.parts, cfg.val_parts, cfg.frames_per_part, cfg.frame_shape, cfg.size,
                           classes, augment=False, rng=rng, progress=bar.update)
    bar.close()
    if not train.crops or not val.crops:
        raise ValueError(f"no defect tracks in {cfg.parts} training / {cfg.val_parts} validation parts")
    log(f"track-vote: {len(train.crops)} training tracks ({sum(train.borderline)} borderline imprints), "
        f"{len(val.crops)} validation tracks from part seeds {cfg.seed}..{cfg.seed + cfg.parts + cfg.val_parts - 1}")
    model = TrackVoterNet(len(classes), pretrained=cfg.pretrained)
    enc = list(model.encoder.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW([{"params": enc, "lr": cfg.lr * 0.3}, {"params": rest, "lr": cfg.lr}], weight_decay=1e-4)
    per_epoch = max(1, math.ceil(len(train.crops) / cfg.batch))
    total = per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(
        math.pi * min(1.0, s / max(1, total)))))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    losses: list[float] = []
    best: tuple[float, dict, dict] | None = None
    bar = tqdm(total=total, unit="step", desc="track-vote: train", file=sys.stderr, disable=not cfg.progress)
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(train.crops))
        for i in range(0, len(order), cfg.batch):
            idx = order[i:i + cfg.batch]
            x = to_input([c for k in idx for c in train.crops[k]])
            y = torch.as_tensor([train.labels[k] for k in idx])
            loss = loss_fn(model.forward_batch(x, [len(train.crops[k]) for k in idx]), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1)
        fig = _accuracy(model, val, cfg.batch)
        log(f"track-vote: epoch {epoch + 1}: loss {np.mean(losses[-per_epoch:]):.4f}, validation " +
            ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in fig.items()))
        if best is None or fig["accuracy"] > best[0]:
            best = (fig["accuracy"], {k: v.detach().clone() for k, v in model.state_dict().items()}, fig)
    bar.close()
    assert best is not None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE
    save_checkpoint(path, best[1], kind=KIND, arch=ARCH, arch_config={"n_classes": len(classes), "hidden": 64},
                    input_spec={"channels": 3, "size": cfg.size, "context": "box + 25 % each side"},
                    class_names=list(classes),
                    train_data={"source": "synthetic part sequences", "seeds": [cfg.seed, cfg.seed + cfg.parts - 1],
                                "val_seeds": [cfg.seed + cfg.parts, cfg.seed + cfg.parts + cfg.val_parts - 1],
                                "frames_per_part": cfg.frames_per_part, "frame_shape": list(cfg.frame_shape),
                                "tracks": len(train.crops), "epochs": cfg.epochs, "batch": cfg.batch,
                                "wall_s": round(time.time() - t0, 1)},
                    metrics={f"val_{k}": v for k, v in best[2].items()})
    log(f"track-vote: kept validation accuracy {best[0]:.4f}; {time.time() - t0:.0f} s")
    return path, losses, best[2]
