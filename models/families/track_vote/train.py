"""Training of the sequence vote from part sequences whose defects are known across frames.

The training tracks are the defects of rendered part sequences (`models.data.synthetic.render_part_sequence`):
one crop per frame a defect is visible on, cut around its ground-truth box moved and scaled at random (as a
detector's box would be), with frames dropped at random (as a detector misses some) so that the GRU sees the
lengths and gaps of real tracks. Validation tracks come from a disjoint seed range and are cut at the
ground-truth boxes. It trains on the one engine (`models.training.lite0`: warm-up + cosine schedule, the encoder at
0.3 x lr, resume, progress); the weights of the kept validation (accuracy) are written; the checkpoint records the
seeds, counts and figures.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.core.backbone import to_input
from models.families.track_vote.model import ARCH, FILE, KIND, TrackVoterNet, crop_box
from models.training.lite0 import CheckpointPlan, LiteTask, LiteTrainConfig, LiteTrainer, register_task

__all__ = ["TrackSet", "VoteTrainConfig", "TrackVoteTask", "synthetic_tracks", "train_track_vote"]


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
    resume: bool = False


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
            x = to_input([c for t in chunk for c in t], next(model.parameters()).device)
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


class TrackVoteTask(LiteTask):
    """The sequence vote's hooks: tracks rendered in `prepare` (`cfg.options`: parts, val_parts, seed,
    frames_per_part, frame_shape, size); cross-entropy with label smoothing 0.05; validation metric: accuracy."""

    name = "track_vote"
    default_lr = 1e-3
    channels_last = False  # the GRU's input is a sequence of pooled features

    def prepare(self, tr: LiteTrainer, train: list, val: list) -> None:
        from tqdm import tqdm

        o = tr.cfg.options
        rng = np.random.default_rng(0)
        bar = tqdm(total=o["parts"] + o["val_parts"], unit="part", desc="track-vote: render", file=sys.stderr,
                   disable=tr.quiet)
        first_val = o["seed"] + o["parts"]
        tr.tracks = synthetic_tracks(o["seed"], o["parts"], o["frames_per_part"], tuple(o["frame_shape"]), o["size"],
                                     tr.class_names, augment=True, rng=rng, progress=bar.update)
        tr.val_tracks = synthetic_tracks(first_val, o["val_parts"], o["frames_per_part"], tuple(o["frame_shape"]),
                                         o["size"], tr.class_names, augment=False, rng=rng, progress=bar.update)
        bar.close()
        if not tr.tracks.crops or not tr.val_tracks.crops:
            raise ValueError(f"no defect tracks in {o['parts']} training / {o['val_parts']} validation parts")
        if tr.log is not None:
            tr.log(f"track-vote: {len(tr.tracks.crops)} training tracks ({sum(tr.tracks.borderline)} borderline "
                   f"imprints), {len(tr.val_tracks.crops)} validation tracks from part seeds "
                   f"{o['seed']}..{first_val + o['val_parts'] - 1}")
        tr.n_out = len(tr.class_names)
        tr.metric_name = "val_accuracy"
        tr.record = {"source": "synthetic part sequences", "seeds": [o["seed"], first_val - 1],
                     "val_seeds": [first_val, first_val + o["val_parts"] - 1], "frames_per_part": o["frames_per_part"],
                     "frame_shape": list(o["frame_shape"]), "tracks": len(tr.tracks.crops)}
        tr.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)

    def n_train(self, tr: LiteTrainer) -> int:
        return len(tr.tracks.crops)

    def budget_unit(self, tr: LiteTrainer) -> str:
        return "tracks"

    def train_defective(self, tr: LiteTrainer) -> Sequence[bool]:
        return [True] * len(tr.tracks.crops)  # every track is a defect: uniform sampling

    def val_defective(self, tr: LiteTrainer) -> int:
        return len(tr.val_tracks.crops)

    def build(self, n_out: int, pretrained: bool) -> torch.nn.Module:
        return TrackVoterNet(n_out, pretrained=pretrained)

    def loss(self, tr: LiteTrainer, model: torch.nn.Module, idx: Sequence[int]) -> torch.Tensor:
        t = tr.tracks
        x = to_input([c for k in idx for c in t.crops[k]], tr.device)
        y = torch.as_tensor([t.labels[k] for k in idx], device=tr.device)
        return tr.loss_fn(model.forward_batch(x, [len(t.crops[k]) for k in idx]).float(), y)

    def validate(self, tr: LiteTrainer, model: torch.nn.Module) -> tuple[float, dict]:
        fig = _accuracy(model, tr.val_tracks, tr.cfg.batch)
        return fig["accuracy"], {f"val_{k}": v for k, v in fig.items() if k != "accuracy"}

    def checkpoint(self, tr: LiteTrainer, model: torch.nn.Module, metrics: dict) -> CheckpointPlan:
        return CheckpointPlan(FILE, KIND, ARCH, {"n_classes": tr.n_out, "hidden": 64},
                              {"channels": 3, "size": tr.cfg.options["size"], "context": "box + 25 % each side"})


TASK = register_task(TrackVoteTask())


def train_track_vote(cfg: VoteTrainConfig, classes: Sequence[str], log: Callable[[str], None] = print
                     ) -> tuple[Path, list[float], dict[str, float]]:
    """Train on the one engine and write `cfg.out`/track_vote.pt (the weights of the kept validation; resumable
    from `cfg.out`/train_state_track_vote.pt with `cfg.resume`). Returns (checkpoint path, loss per step,
    validation figures)."""
    torch.set_num_threads(max(1, cfg.threads))
    lite = LiteTrainConfig(task="track_vote", backbone="lite0" if cfg.pretrained else "none", epochs=cfg.epochs,
                           batch=cfg.batch, lr=cfg.lr, threads=cfg.threads, seed=0, val_split=0.0,
                           options={"parts": cfg.parts, "val_parts": cfg.val_parts, "seed": cfg.seed,
                                    "frames_per_part": cfg.frames_per_part, "frame_shape": list(cfg.frame_shape),
                                    "size": cfg.size})
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"format": "synthetic part sequences", "data": f"seeds {cfg.seed}..{cfg.seed + cfg.parts - 1}",
            "val_data": f"seeds {cfg.seed + cfg.parts}..{cfg.seed + cfg.parts + cfg.val_parts - 1}",
            "frames_per_part": cfg.frames_per_part, "frame_shape": list(cfg.frame_shape), "size": cfg.size}
    res = LiteTrainer(lite, out, [], [], {}, not cfg.progress, log=log, data_spec=spec,
                      class_names=list(classes)).run(cfg.resume)
    fig = {("accuracy" if k == "val_accuracy" else k[4:]): v for k, v in res.info.metrics.items()
           if k.startswith("val_")}
    log(f"track-vote: kept validation accuracy {fig['accuracy']:.4f}; {res.seconds:.0f} s")
    return res.checkpoint, list(res.losses), fig
