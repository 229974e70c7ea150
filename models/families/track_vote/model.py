"""Sequence vote: a CNN+RNN over the crops of one tracked defect across a part's frames votes its class.

The tracker votes a track's class by summing confidence x severity over the frames it was seen on
(`streams.tracking.tracker.PartTracker.summarize`). A borderline imprint takes the other class's look
in a minority of its frames, and a frame-level classifier can be confidently wrong on exactly those
frames. The sequence vote instead reads the crops themselves, in frame order: the Lite0 encoder turns
each crop into a vector, a bidirectional GRU reads the vectors of the track (the part's frames are the
sequence here, not the rows of one image as in the `cnn-rnn` family), and its two final states give the
class logits. It learns from the crops what the frames have in common, rather than averaging per-frame
decisions.

It is a wrapper (`track_vote.pt` beside any family's checkpoints): detections are the inner model's,
unchanged; the Inspector protocol's `vote_track(crops)` returns the class probabilities (every other
Inspector returns None there, and the tracker keeps its own vote).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from models.core.backbone import LITE0_CHANNELS, build_lite0_encoder, to_input
from models.core.checkpoints import CheckpointError, load_checkpoint
from models.core.types import Detection
from models.runtime.runtimes import Network, Runner, Select, TorchRunner, golden_frame
from models.runtime.swap import WrapperSwap

__all__ = ["FILE", "KIND", "ARCH", "TrackVoterNet", "TrackVotedInspector", "track_crops", "crop_box"]

FILE = "track_vote.pt"
KIND = "track-vote"
ARCH = "lite0-bigru-frames"
CONTEXT = 0.25  # each crop is the box grown by this share of its size on every side (at least MIN_PAD px)
MIN_PAD = 6
MAX_CROPS = 32  # a longer track is read at this many evenly spaced frames (one network call, never split)


class TrackVoterNet(nn.Module):
    """(T, 3, S, S) crops of one track, in frame order -> (1, n_classes) logits.

    `forward_batch` runs several tracks of different lengths at once (training)."""

    def __init__(self, n_classes: int, hidden: int = 64, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder = build_lite0_encoder(pretrained=pretrained)
        self.proj = nn.Sequential(nn.Linear(LITE0_CHANNELS[-1], hidden), nn.ReLU(inplace=True))
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * hidden, n_classes))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.encoder(x)[-1].mean((2, 3)))  # (T, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.rnn(self._features(x).unsqueeze(0))  # (2, 1, hidden)
        return self.head(torch.cat([last[0], last[1]], 1))

    def forward_batch(self, x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Crops of len(lengths) tracks concatenated in track order -> (len(lengths), n_classes) logits."""
        f = self._features(x)
        seqs = list(torch.split(f, list(lengths)))
        padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        packed = nn.utils.rnn.pack_padded_sequence(padded, torch.as_tensor(list(lengths)), batch_first=True,
                                                   enforce_sorted=False)
        _, last = self.rnn(packed)
        return self.head(torch.cat([last[0], last[1]], 1))


def crop_box(frame: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """The box (x0, y0, x1, y1, image coords) grown by CONTEXT, clipped to the frame, resized to size x size."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    px = max(MIN_PAD, CONTEXT * (x1 - x0))
    py = max(MIN_PAD, CONTEXT * (y1 - y0))
    a, b = int(max(0, np.floor(x0 - px))), int(min(w, np.ceil(x1 + px)))
    c, d = int(max(0, np.floor(y0 - py))), int(min(h, np.ceil(y1 + py)))
    if b <= a or d <= c:  # a box outside the frame: the nearest pixel
        a, c = min(max(0, int(x0)), w - 1), min(max(0, int(y0)), h - 1)
        b, d = a + 1, c + 1
    crop = np.ascontiguousarray(frame[c:d, a:b])
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if min(crop.shape[:2]) > size
                      else cv2.INTER_LINEAR)


def track_crops(frames: Sequence[np.ndarray] | Mapping[int, np.ndarray], boxes: Mapping[int, Sequence[float]],
                size: int) -> list[np.ndarray]:
    """One crop per frame a track was seen on (`boxes`: part frame index -> box), in frame order."""
    return [crop_box(frames[i], boxes[i], size) for i in sorted(boxes)]


def voter_network(model: nn.Module, info: Any) -> Network:
    """The voter (crops of one track -> logits) as an exportable network with its golden input (3 crops)."""
    size = int(info.input_spec["size"])
    g = golden_frame((96, 128))
    crops = [crop_box(g, b, size) for b in ((10, 20, 40, 50), (20, 22, 52, 56), (30, 18, 70, 60))]
    return Network(Path(info.path), info.content_hash, Select(model), to_input(crops, "cpu").numpy(),
                   (2, 3, size, size))


class TrackVotedInspector(WrapperSwap):
    """`inner`'s detections, unchanged, plus `vote_track` (version = inner version + voter version)."""

    def __init__(self, model: nn.Module, info: Any, inner: Any, device: str = "cpu") -> None:
        self.voter_model, self.voter_info, self.inner = model, info, inner
        self._runners = {"track-vote": "_run"}
        self.device = device
        self.size = int(info.input_spec["size"])
        self.vote_classes = list(info.class_names)
        self.model_version = f"{inner.model_version}+{info.model_version}"
        self.class_names = list(inner.class_names)
        self.family = f"track-vote+{inner.family}"
        self.runtime = "torch"
        self._run: Runner = TorchRunner(Select(self.voter_model))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, inner: Any, device: str = "cpu") -> "TrackVotedInspector":
        ck = load_checkpoint(path, expected_kind=KIND)
        cfg = ck.info.arch_config
        model = TrackVoterNet(int(cfg["n_classes"]), int(cfg.get("hidden", 64)))
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the track voter: {exc}") from exc
        unknown = sorted(set(ck.info.class_names) - set(inner.class_names))
        if unknown:
            raise CheckpointError(f"{path}: the track voter votes classes the model never reports: {unknown}")
        return cls(model.to(device).eval(), ck.info, inner, device)

    def networks(self) -> dict[str, Network]:
        return {**self.inner.networks(), "track-vote": voter_network(self.voter_model, self.voter_info)}

    def __getattr__(self, name: str) -> Any:  # the inner family's options (flip_tta, stats, ...) read through
        if name in ("inner", "voter_model", "voter_info"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        return self.inner.inspect_scored(frames)

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        return self.inner.inspect(frames)

    @torch.inference_mode()
    def vote_track(self, frames: Sequence[np.ndarray] | Mapping[int, np.ndarray],
                   boxes: Mapping[int, Sequence[float]]) -> dict[str, float] | None:
        """Class probabilities of one track from its frames (part frame index -> uint8 frame, any size) and its box
        on each frame it was seen on; None for no boxes."""
        if not len(boxes):
            return None
        keys = sorted(boxes)
        if len(keys) > MAX_CROPS:
            keys = [keys[int(i)] for i in np.linspace(0, len(keys) - 1, MAX_CROPS).round()]
        x = to_input(track_crops(frames, {k: boxes[k] for k in keys}, self.size), self.device)
        with self._lock:
            logits = self._run(x)
        p = torch.softmax(logits.detach().cpu().float().reshape(-1), 0).numpy()
        return {c: float(v) for c, v in zip(self.vote_classes, p)}
