"""Severity-regression detectors: the paper's network (He & Liu 2020) and a fast CPU variant.

Both are fully convolutional, take uint8-range grey (1 channel) or colour (3 channels) input
as float tensors (N, C, H, W) in [0, 255], and return `SeverityOutput` with one severity per
output cell (`stride` px): raw regression values (train with L2 on them) and the [0, 12]
clamped map for inference. H and W must be multiples of `pad_multiple` (pad before calling;
`pad_to_multiple` does it).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SeverityOutput", "PaperSeverityNet", "FastSeverityNet", "build_detector", "ARCHS",
           "pad_to_multiple"]

SEVERITY_MAX = 12.0


class SeverityOutput(NamedTuple):
    """Detector output: (N, 1, H/stride, W/stride) maps."""

    raw: torch.Tensor  # unclamped regression output (the L2 loss uses this)
    severity: torch.Tensor  # clamped to [0, 12]
    stride: int


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x * (1.0 / 127.5) - 1.0


class BNConvReLU(nn.Sequential):
    """The paper's unit: batch norm, then convolution, then ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1) -> None:
        super().__init__(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.ReLU(inplace=True))


class PaperResidual(nn.Module):
    """Bottleneck residual block: 1x1 (b) -> 5x5 (b) -> 1x1 (out), projected shortcut."""

    def __init__(self, cin: int, b: int, cout: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(BNConvReLU(cin, b, 1), BNConvReLU(b, b, 5), BNConvReLU(b, cout, 1))
        self.short = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.short(x) + self.branch(x)


class PaperSeverityNet(nn.Module):
    """He & Liu's regression CNN: severity per 4x4 cell.

    conv 5x5/16, avg-pool 3x3/2, conv 3x3/16, avg-pool 3x3/2, residual stages 8/32 and 16/64
    (1x1 and 5x5 convolutions), conv 3x3/512, conv 1x1/1; BN-conv-ReLU units.
    """

    stride = 4
    pad_multiple = 4

    def __init__(self, in_channels: int = 1, blocks_per_stage: int = 1, head_channels: int = 512) -> None:
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = [
            BNConvReLU(in_channels, 16, 5),
            nn.AvgPool2d(3, 2, 1),
            BNConvReLU(16, 16, 3),
            nn.AvgPool2d(3, 2, 1),
        ]
        cin = 16
        for b, cout in ((8, 32), (16, 64)):
            for _ in range(blocks_per_stage):
                layers.append(PaperResidual(cin, b, cout))
                cin = cout
        layers += [BNConvReLU(cin, head_channels, 3), nn.BatchNorm2d(head_channels), nn.Conv2d(head_channels, 1, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        raw = self.body(_normalise(x))
        return SeverityOutput(raw, raw.clamp(0.0, SEVERITY_MAX), self.stride)


class _DSBlock(nn.Module):
    """Depthwise-separable residual block (dilated depthwise 3x3, pointwise 1x1)."""

    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, 1, dilation, dilation=dilation, groups=c, bias=False)
        self.pw = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.pw(self.dw(x))))


def _cbr(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FastSeverityNet(nn.Module):
    """CPU streaming variant: a small encoder to 1/8 with dilated depthwise blocks (receptive
    field ~100 px for large low-contrast patches) and a light decoder back to 1/2, so the
    severity is predicted per 2x2 cell (the paper's finer option) at a fraction of the cost.
    """

    stride = 2
    pad_multiple = 8

    def __init__(self, in_channels: int = 1, width: int = 24, stem: int = 16, stem_blocks: int = 0) -> None:
        """
        Args:
            width: channels at 1/4 (twice that at 1/8); 24 is the original default.
            stem: channels at 1/2, where thin defects (2-3 px scratches) are still resolved.
            stem_blocks: depthwise-separable blocks at 1/2 (0 = the original design).
        """
        super().__init__()
        self.in_channels = in_channels
        w = width
        self.s2 = nn.Sequential(_cbr(in_channels, stem, 3, 2), *[_DSBlock(stem, 1) for _ in range(stem_blocks)]) \
            if stem_blocks else _cbr(in_channels, stem, 3, 2)
        self.s4 = nn.Sequential(_cbr(stem, w, 3, 2), _DSBlock(w, 1), _DSBlock(w, 2))
        self.s8 = nn.Sequential(_cbr(w, 2 * w, 3, 2), _DSBlock(2 * w, 1), _DSBlock(2 * w, 2), _DSBlock(2 * w, 4),
                                _DSBlock(2 * w, 8))
        self.up8 = _cbr(2 * w, w, 1)
        self.dec4 = nn.Sequential(_cbr(2 * w, w, 1), _DSBlock(w, 1))
        self.up4 = _cbr(w, 16, 1)
        self.dec2 = nn.Sequential(_cbr(stem + 16, 16, 1), _DSBlock(16, 1))
        self.head = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        f2 = self.s2(_normalise(x))
        f4 = self.s4(f2)
        f8 = self.s8(f4)
        u = F.interpolate(self.up8(f8), size=f4.shape[-2:], mode="bilinear", align_corners=False)
        d4 = self.dec4(torch.cat([f4, u], 1))
        u = F.interpolate(self.up4(d4), size=f2.shape[-2:], mode="bilinear", align_corners=False)
        raw = self.head(self.dec2(torch.cat([f2, u], 1)))
        return SeverityOutput(raw, raw.clamp(0.0, SEVERITY_MAX), self.stride)


ARCHS = {"paper": PaperSeverityNet, "fast": FastSeverityNet}


def build_detector(arch: str, **config: object) -> nn.Module:
    """Build a detector by architecture name ('paper' or 'fast') and its config kwargs."""
    try:
        cls = ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown detector arch {arch!r}; known: {sorted(ARCHS)}") from None
    return cls(**config)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad (N, C, H, W) on the bottom/right to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if h > ph and w > pw else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x


@torch.inference_mode()
def infer_severity(model: nn.Module, images: "list", device: str = "cpu", amp: bool = False,
                   run: "Callable[[torch.Tensor], torch.Tensor] | None" = None) -> "list":
    """Per-cell severity maps (numpy float32, cropped to ceil(H/stride) x ceil(W/stride)).

    Args:
        model: a detector in eval mode (its stride and padding multiple are used).
        images: uint8 arrays (H, W) or (H, W, C) matching the model's input channels; frames of
            equal shape are batched together.
        run: the forward call (a `models.runtime.runtimes` runner: padded input -> severity map); default
            `model(x).severity`.
    """
    import numpy as np

    stride, mult = int(model.stride), int(model.pad_multiple)
    out: list = [None] * len(images)
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    for shape, idx in groups.items():
        arr = np.stack([images[i] for i in idx])
        x = torch.from_numpy(arr).to(device)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = pad_to_multiple(x.float(), mult)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.startswith("cuda")):
            sev = (run(x) if run is not None else model(x).severity).float()
        sev = sev[:, 0].cpu().numpy()
        h, w = -(-shape[0] // stride), -(-shape[1] // stride)
        for j, i in enumerate(idx):
            out[i] = sev[j, :h, :w]
    return out
