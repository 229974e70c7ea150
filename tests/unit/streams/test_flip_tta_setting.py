"""`model.flip_tta` (checkpoint|on|off): the worker's speed/accuracy switch for the severity detector."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.inspection.inference import InferenceRunner, apply_flip_tta
from streams.settings import ModelSettings, Settings


@pytest.mark.parametrize("setting,before,after", [("checkpoint", True, True), ("checkpoint", False, False),
                                                 ("on", False, True), ("off", True, False)])
def test_apply_flip_tta(setting, before, after):
    insp = SimpleNamespace(flip_tta=before)
    apply_flip_tta(insp, setting)
    assert insp.flip_tta is after


def test_a_family_without_flip_tta_is_left_alone():
    insp = SimpleNamespace(model_version="seg")
    apply_flip_tta(insp, "off")
    assert not hasattr(insp, "flip_tta")


def test_the_worker_loads_the_packaged_detector_with_the_setting(monkeypatch):
    runner = InferenceRunner(ModelSettings(runtime="torch", device="cpu", flip_tta="off"))
    assert runner._load_path(None).flip_tta is False
    assert InferenceRunner(ModelSettings(runtime="torch", device="cpu"))._load_path(None).flip_tta is True
    monkeypatch.setenv("DEFECTSTREAM_MODEL__FLIP_TTA", "sometimes")
    with pytest.raises(ValueError, match="flip_tta"):
        Settings()
