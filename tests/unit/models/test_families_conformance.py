"""One test over every registered family (like torchvision's test_models.py): a family gets all of it by registering.

For each family in `list_families()` its tiny example (`FamilySpec.example`):
- a tiny training run lowers the loss, and its checkpoint loads through `load_inspector` with the
  protocol's fields filled and `model_identity` agreeing on the version;
- the tiny model gives the same detections in ONNX Runtime as in eager PyTorch, on odd frame sizes,
  grey and colour frames.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from models.core.families import get_family
from models.core.types import Detection, Inspector
from models.data.synthetic import render_sample
from models.families import list_families
from models.loading import load_inspector, model_files, model_identity
from models.runtime.choice import compare_detections

FAMILIES = list_families()


def _frames() -> list[np.ndarray]:
    """Odd sizes (not multiples of 32, one under the networks' stride), grey and colour."""
    grey = [np.ascontiguousarray(render_sample(4100 + i, (128, 128), defect_prob=1.0).image[:h, :w])
            for i, (h, w) in enumerate([(37, 53), (64, 96), (101, 67), (7, 9)])]
    rng = np.random.default_rng(0)
    colour = [np.ascontiguousarray(np.repeat(grey[1][:, :, None], 3, 2)),
              rng.integers(0, 256, (45, 71, 3), dtype=np.uint8)]
    return grey + colour


def _example(name: str):
    spec = get_family(name)
    assert spec.example, f"family {name} names no tiny example"
    return importlib.import_module(spec.example)


def _check_protocol(insp: Inspector, frames: list[np.ndarray]) -> None:
    assert isinstance(insp, Inspector)
    assert insp.model_version and insp.class_names and insp.device == "cpu" and insp.runtime == "torch"
    spec = get_family(insp.family)  # a registered family (a wrapper prefixes its own name)
    for option in spec.options:  # what a setting may override (e.g. model.flip_tta) is there, gated or not
        assert hasattr(insp, option), option
    assert "background" not in insp.class_names
    dets, scores = insp.inspect_scored(frames)
    assert len(dets) == len(scores) == len(frames)
    assert insp.inspect([]) == [] and insp.inspect_scored([]) == ([], [])
    for f, ds, s in zip(frames, dets, scores):
        assert 0.0 <= s <= 1.0
        h, w = f.shape[:2]
        for d in ds:
            assert isinstance(d, Detection) and d.defect_class in insp.class_names
            assert 0 <= d.bbox.x0 < d.bbox.x1 <= w and 0 <= d.bbox.y0 < d.bbox.y1 <= h
            assert 0.0 <= d.confidence <= 1.0
            if spec.masks:
                assert d.mask.shape == (d.bbox.height, d.bbox.width) and d.mask.dtype == bool and d.area_px > 0
            else:  # a box detector: no mask, no pixel area (never a filled box passed off as one)
                assert d.mask is None and d.area_px == 0


def test_every_family_is_registered():
    assert {"severity", "segmenter", "classifier", "gate"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tiny_training_lowers_the_loss_and_its_checkpoint_loads(name, tmp_path):
    run = _example(name).tiny_train(tmp_path)
    assert len(run.losses) >= 2 and all(np.isfinite(run.losses))
    k = max(1, len(run.losses) // 4)
    assert np.mean(run.losses[-k:]) < np.mean(run.losses[:k]), run.losses
    mf = model_files(run.directory)
    assert name in (mf.family, *mf.files)  # the family itself, or the wrapper's role beside its inner family
    insp = load_inspector(run.directory, device="cpu")
    _check_protocol(insp, _frames())
    version, hashes, _ = model_identity(run.directory)
    assert version == insp.model_version and set(hashes) == set(mf.files)
    assert {n: net.content_hash for n, net in insp.networks().items()} == hashes


@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_runtime_gives_the_same_detections_on_odd_sizes_grey_and_colour(name, tmp_path):
    d = _example(name).tiny_model(tmp_path / "model")
    frames = _frames()
    ref = load_inspector(d, device="cpu")
    ort = load_inspector(d, device="cpu", runtime="onnxruntime", export_cache=tmp_path / "cache")
    _check_protocol(ref, frames)
    assert ort.runtime == "onnxruntime" and ort.model_version == ref.model_version
    (da, sa), (db, sb) = ref.inspect_scored(frames), ort.inspect_scored(frames)
    assert sum(len(x) for x in da) > 0, "the tiny model should find something to compare"
    report = compare_detections(da, db, frames, min_iou=0.99, conf_tol=1e-3)
    assert report["same"], report
    np.testing.assert_allclose(sa, sb, atol=1e-3)
