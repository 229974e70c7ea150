"""Replay and the worker treat every family alike: the run log records each family's checkpoint hashes (a
segmenter run recorded `{}` before), and `model.flip_tta` reaches a severity model behind a gate."""
from __future__ import annotations

import importlib

import pytest

from models.core.families import get_family
from models.families import list_families
from models.families.gate import example as gate_example
from models.families.severity import example as severity_example
from models.loading import load_inspector, model_identity
from streams.inspection.inference import apply_flip_tta
from streams.replay.replayer import _model_info


@pytest.mark.parametrize("name", list_families())
def test_the_run_log_records_the_hashes_of_every_family(name, tmp_path):
    d = importlib.import_module(get_family(name).example).tiny_model(tmp_path / "model")
    version, hashes = _model_info(load_inspector(d, device="cpu"), str(d))
    expected_version, expected_hashes, _ = model_identity(d)
    assert version == expected_version
    assert hashes == expected_hashes and hashes  # one hash per checkpoint, gate included


@pytest.mark.parametrize("setting,expected", [("off", False), ("on", True)])
def test_a_gated_severity_model_honours_flip_tta(setting, expected, tmp_path):
    d = severity_example.tiny_model(tmp_path / "model")
    gate_example.tiny_model(tmp_path / "gate")
    (d / "gate.pt").write_bytes((tmp_path / "gate" / "gate.pt").read_bytes())
    (d / "gate.json").write_bytes((tmp_path / "gate" / "gate.json").read_bytes())
    insp = load_inspector(d, device="cpu")
    assert insp.family == "gate+severity"
    insp.inner.flip_tta = not expected
    apply_flip_tta(insp, setting)
    assert insp.inner.flip_tta is expected and insp.flip_tta is expected
