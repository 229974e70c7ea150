"""CNN+RNN image classifier: the Lite0 encoder's feature map read as a sequence of rows by a bidirectional GRU.

The published CNN+RNN variants for NEU surface-defect classification run a recurrent layer over the CNN's
feature map taken as a sequence (rows or columns of the map), so that elongated textures (scratches, rolled-in
scale along the rolling direction) are summarised along one axis. Here: Lite0's stride-32 map (320 channels),
a 1x1 projection to `hidden` channels, averaged over the width, gives one vector per row; a bidirectional GRU
reads the rows top to bottom and back, and its two final states feed the class logits. (A part's frames would be
another sequence; that needs part context in the Inspector protocol and is not what the published variant does.)

The Inspector is the image classifier's (`ImageClassifierInspector`: one frame-wide detection of the winning
class per defective frame), with this network behind it (`cnn_rnn.pt`, kind `cnn-rnn`).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.core.backbone import LITE0_CHANNELS, build_lite0_encoder
from models.core.checkpoints import CheckpointError, load_checkpoint
from models.families.image_classifier.model import ImageClassifierInspector, image_network
from models.runtime.runtimes import Network

__all__ = ["FILE", "KIND", "ARCH", "CnnRnn", "CnnRnnInspector"]

FILE = "cnn_rnn.pt"
KIND = "cnn-rnn"
ARCH = "lite0-bigru-rows"


class CnnRnn(nn.Module):
    """(N, 3, H, W) -> (N, n_outputs) logits: Lite0 map -> rows -> bidirectional GRU -> linear."""

    def __init__(self, n_outputs: int, hidden: int = 128, pretrained: bool = False) -> None:
        super().__init__()
        self.encoder = build_lite0_encoder(pretrained=pretrained)
        self.proj = nn.Sequential(nn.Conv2d(LITE0_CHANNELS[-1], hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True))
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * hidden, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.proj(self.encoder(x)[-1])  # (N, hidden, h, w)
        rows = a.mean(3).permute(0, 2, 1)  # (N, h, hidden): one step per row of the map
        _, last = self.rnn(rows)  # (2, N, hidden): the forward and the backward final state
        return self.head(torch.cat([last[0], last[1]], 1))


class CnnRnnInspector(ImageClassifierInspector):
    """The image classifier's Inspector over the CNN+RNN network."""

    family = "cnn-rnn"
    _runners = {"cnn-rnn": "_run"}

    def networks(self) -> dict[str, Network]:
        """The CNN+RNN (-> logits) as an exportable network with its golden input."""
        return {"cnn-rnn": image_network(self.model, self.info)}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "CnnRnnInspector":
        ck = load_checkpoint(path, expected_kind=KIND)
        cfg = ck.info.arch_config
        model = CnnRnn(int(cfg["n_outputs"]), int(cfg.get("hidden", 128)))
        try:
            model.load_state_dict(ck.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit the CNN+RNN classifier: {exc}") from exc
        return cls(model, ck.info, device)
