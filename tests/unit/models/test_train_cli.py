"""`defectstream train`: command-line options reach the training config; a tiny run writes a checkpoint."""
from __future__ import annotations

import json

from models.families.severity.train import DetectorTrainConfig
from streams.cli import main
from models.training.options import apply_overrides


def test_only_given_options_override_the_defaults():
    cfg = DetectorTrainConfig()
    default_patch = cfg.patch
    apply_overrides(cfg, {"steps": 7, "patch": None, "lr": 0.0}, "steps", "patch", "lr")
    assert cfg.steps == 7 and cfg.patch == default_patch and cfg.lr == 0.0  # 0.0 is a value, not "unset"


def test_tiny_detector_run_writes_a_checkpoint_with_the_options(tmp_path, capsys):
    rc = main(["train", "detector", "--out", str(tmp_path), "--steps", "3", "--frames", "4", "--val-frames", "2",
               "--patch", "64", "--batch", "2", "--quiet", "--threads", "1"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    meta = json.loads((tmp_path / "detector_fast.json").read_text())
    blob = json.dumps(meta)
    assert '"steps": 3' in blob and '"patch": 64' in blob
    assert meta["train_data"]["source"] == "synthetic:seed=100000,n=4,size=256x256"
    assert meta["train_data"]["choices"]["steps_run"] == 3 and meta["input_spec"]["train_patch"] == 64


def test_architecture_and_label_options_reach_the_checkpoint(tmp_path, capsys):
    rc = main(["train", "detector", "--out", str(tmp_path), "--steps", "2", "--frames", "3", "--val-frames", "2",
               "--patch", "64", "--batch", "2", "--quiet", "--threads", "1", "--label-floor", "5.5",
               "--arch-config", '{"width": 8, "stem": 8, "stem_blocks": 1}'])
    assert rc == 0
    meta = json.loads((tmp_path / "detector_fast.json").read_text())
    assert meta["arch_config"] == {"width": 8, "stem": 8, "stem_blocks": 1}
    assert meta["input_spec"]["label_floor"] == 5.5
    from models.core.checkpoints import load_checkpoint
    from models.families.severity.detector import build_detector

    ck = load_checkpoint(tmp_path / "detector_fast.pt", expected_kind="detector")
    build_detector(ck.info.arch, **ck.info.arch_config).load_state_dict(ck.state_dict)


def test_arch_config_must_be_a_json_object(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["train", "detector", "--out", "x", "--arch-config", "[1, 2]"])
    assert "must be a JSON object" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    rc = main(["evaluate", "--data", "synthetic:seed=1,n=2", "--model", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: model path") and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    rc = main(["evaluate", "--data", "synthetic:seed=1,n=2", "--model", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no model in") and "Traceback" not in err
