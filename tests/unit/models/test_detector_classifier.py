"""Network shapes, typed outputs and the classifier's crop windows."""
import numpy as np
import pytest
import torch

from models.core.types import BBox
from models.families.severity.detector import ARCHS, SeverityOutput, build_detector, infer_severity, pad_to_multiple
from models.families.severity.region_classifier import ClassifierOutput, build_classifier, crop_windows, region_crops


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("channels", [1, 3])
def test_detectors_are_fully_convolutional(arch, channels):
    torch.manual_seed(0)
    m = build_detector(arch, in_channels=channels).eval()
    with torch.inference_mode():
        for h, w in ((64, 64), (256, 64 * 3)):
            out = m(torch.rand(2, channels, h, w) * 255)
            assert isinstance(out, SeverityOutput)
            assert out.severity.shape == (2, 1, h // out.stride, w // out.stride)
            assert float(out.severity.min()) >= 0 and float(out.severity.max()) <= 12


def test_fast_variant_with_a_stem_block_keeps_stride_and_shapes():
    m = build_detector("fast", width=8, stem=12, stem_blocks=1).eval()
    with torch.inference_mode():
        out = m(torch.rand(1, 1, 64, 96) * 255)
    assert out.stride == 2 and out.severity.shape == (1, 1, 32, 48)
    # the original layout (no stem blocks) keeps its parameter names, so older checkpoints still load
    assert "s2.0.weight" in build_detector("fast").state_dict()


def test_paper_network_runs_on_a_1600x256_frame_and_has_the_papers_layout():
    m = build_detector("paper").eval()
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert (convs[0].kernel_size, convs[0].out_channels) == ((5, 5), 16)
    assert (convs[-2].kernel_size, convs[-2].out_channels) == ((3, 3), 512)
    assert (convs[-1].kernel_size, convs[-1].out_channels) == ((1, 1), 1)
    assert sum(isinstance(mod, torch.nn.AvgPool2d) for mod in m.modules()) == 2
    sev = infer_severity(m, [np.zeros((256, 1600), np.uint8), np.zeros((250, 250), np.uint8)])
    assert sev[0].shape == (64, 400) and sev[1].shape == (63, 63)


def test_pad_to_multiple():
    assert pad_to_multiple(torch.zeros(1, 1, 13, 17), 8).shape == (1, 1, 16, 24)


def test_crop_windows_double_when_the_defect_does_not_fit():
    assert crop_windows(BBox(100, 100, 130, 120), (512, 512)) == [BBox(83, 78, 147, 142)]
    w = crop_windows(BBox(100, 100, 200, 120), (512, 512))
    assert len(w) == 1 and w[0].width == 128
    long = crop_windows(BBox(0, 10, 500, 30), (512, 512))
    assert len(long) > 1 and all(b.width == 256 for b in long)
    assert long[0].x0 == 0 and long[-1].x1 == 500
    assert all(b.y0 >= 0 for b in long)


def test_region_crops_and_classifier_output():
    grey = np.full((100, 90), 120, np.uint8)
    grey[40:50, 40:50] = 60
    mask = np.zeros((10, 10), bool)
    mask[:] = True
    crops = region_crops(grey, None, BBox(40, 40, 50, 50), mask)
    assert crops.shape == (1, 2, 64, 64) and crops.dtype == np.float32
    assert crops[0, 1].sum() == 100 and crops[0, 0].min() == pytest.approx(-1.5)
    big = region_crops(grey, np.ones((100, 90), bool), BBox(0, 0, 90, 100))
    assert big.shape[1:] == (2, 64, 64)
    clf = build_classifier(7).eval()
    with torch.inference_mode():
        out = clf(torch.from_numpy(crops))
    assert isinstance(out, ClassifierOutput) and out.probs.shape == (1, 8)
    assert float(out.probs.sum()) == pytest.approx(1.0, abs=1e-5)
