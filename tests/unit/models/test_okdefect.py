"""OK/DEFECT family: closed-form Grad-CAM / Grad-CAM++ equal the `grad-cam` package's, patch labels, CAM choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.data.synthetic import render_sample
from models.families.okdefect.model import CamNet, build_okdefect, scale_cam
from models.families.okdefect.train import choose_cam, choose_patch_threshold
from models.core.backbone import to_input


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_okdefect(pretrained=True).eval()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_closed_form_cams_equal_the_grad_cam_package(method):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _net()
    imgs = [render_sample(4200 + i, (128, 160), defect_prob=1.0).image for i in range(3)]
    x = to_input(imgs)
    cls = pgc.GradCAM if method == "gradcam" else pgc.GradCAMPlusPlus
    with cls(model=net, target_layers=[net.bn2]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)] * len(imgs))  # (N, H, W), scaled
    with torch.no_grad():
        out = CamNet(net)(x).numpy()
    ch = 1 if method == "gradcam" else 2
    mine = np.stack([scale_cam(o[ch], (128, 160)) for o in out])
    assert ref.shape == mine.shape
    assert float(np.abs(ref).max()) > 0.5  # a real map, not two empty ones
    np.testing.assert_allclose(mine, ref, atol=2e-3)
    np.testing.assert_allclose(out[:, 0, 0, 0], net(x)[:, 0].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_patch_threshold_is_the_most_accurate_and_the_cam_threshold_the_best_iou():
    probs = np.array([0.1, 0.2, 0.35, 0.4, 0.9, 0.95])
    labels = np.array([False, False, False, True, True, True])
    t = choose_patch_threshold(probs, labels)
    assert ((probs >= t) == labels).all()
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    out = np.zeros((1, 3, 2, 2), np.float32)
    out[0, 1] = [[1.0, 0.0], [0.0, 0.0]]  # Grad-CAM: the defect's quadrant
    out[0, 2] = [[1.0, 1.0], [1.0, 0.0]]  # Grad-CAM++: three quadrants
    cam, thr, miou = choose_cam(out, [mask])
    assert cam == "gradcam" and miou > 0.5
    assert (scale_cam(out[0, 1], (64, 64)) >= thr)[:16, :16].all()


def test_zoomed_patches_train_serve_and_score_like_validation(tmp_path):
    """`--size` above `--tile`: the Inspector resizes every patch as training and validation did."""
    from models.data.synthetic import write_plain_set
    from models.families.anomaly.tiling import cut_tiles
    from models.families.image_classifier.model import image_probabilities
    from models.loading import load_inspector
    from models.training.lite0 import LiteTrainConfig, train_lite0

    data = write_plain_set(tmp_path / "data", 8, (64, 64), seed=7100, defect_prob=0.6)
    cfg = LiteTrainConfig(task="okdefect", backbone="lite0", steps=3, batch=8, threads=1, tile=32, size=64)
    res = train_lite0(cfg, tmp_path / "m", data=str(data), fmt="plain", quiet=True)
    spec = res.info.input_spec
    assert (spec["patch"], spec["size"]) == (32, 64)
    assert res.info.train_data["choices"]["input"]["size"] == 64
    insp = load_inspector(tmp_path / "m", device="cpu")
    assert (insp.patch, insp.size) == (32, 64)
    frame = render_sample(3, (64, 96)).image
    (fm,) = insp.maps([frame])
    tiles, _ = cut_tiles(frame, 32)
    ref = image_probabilities(insp.model, tiles, 64, "cpu", sigmoid=True)[:, 0]
    assert fm.probs.shape == (len(tiles),) and np.allclose(fm.probs, ref, atol=1e-5)
    assert fm.cam.shape == frame.shape[:2]
