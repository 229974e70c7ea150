"""Checkpoints: round trip, listing, validation of tampered or foreign files."""
import json

import pytest
import torch

from models.core.checkpoints import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint, update_metrics
from models.families.severity.detector import build_detector


def _save(path, **kw):
    torch.manual_seed(0)
    m = build_detector("fast", width=8)
    args = dict(kind="detector", arch="fast", arch_config={"width": 8}, input_spec={"channels": 1, "stride": 2},
                class_names=["a", "b"], threshold=1.5, train_data={"source": "synthetic:seed=1,n=2"},
                metrics={"val_mean_iou": 0.5})
    args.update(kw)
    return m, save_checkpoint(path, m.state_dict(), **args)


def test_round_trip_and_listing(tmp_path):
    m, info = _save(tmp_path / "a" / "detector_fast.pt")
    assert info.model_version.startswith("detector-fast-") and len(info.content_hash) == 64
    loaded = load_checkpoint(tmp_path / "a" / "detector_fast.pt", expected_kind="detector")
    assert loaded.info.threshold == 1.5 and loaded.info.class_names == ["a", "b"]
    assert loaded.info.train_data["source"] == "synthetic:seed=1,n=2"
    m2 = build_detector("fast", width=8)
    m2.load_state_dict(loaded.state_dict)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    side = json.loads((tmp_path / "a" / "detector_fast.json").read_text())
    assert side["content_hash"] == info.content_hash
    _save(tmp_path / "b" / "other.pt", kind="classifier")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    infos = list_checkpoints(tmp_path)
    assert [i.kind for i in infos] == ["detector", "classifier"]
    assert infos[0].model_version == info.model_version  # same weights -> same version


def test_tampered_weights_are_rejected(tmp_path):
    p = tmp_path / "d.pt"
    _save(p)
    blob = torch.load(p, weights_only=True)
    key = next(iter(blob["state_dict"]))
    blob["state_dict"][key] = blob["state_dict"][key] + 1e-3
    torch.save(blob, p)
    with pytest.raises(CheckpointError, match="content hash"):
        load_checkpoint(p)


def test_corrupt_missing_and_wrong_kind(tmp_path):
    p = tmp_path / "d.pt"
    _save(p)
    data = bytearray(p.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\0" * 64
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="expected a classifier"):
        load_checkpoint(p, expected_kind="classifier")


def test_update_metrics_keeps_hash(tmp_path):
    p = tmp_path / "d.pt"
    _, info = _save(p)
    new = update_metrics(p, {"eval": {"f1": 0.9}}, threshold=2.0)
    again = load_checkpoint(p)
    assert again.info.content_hash == info.content_hash and again.info.threshold == 2.0
    assert again.info.metrics["eval"] == {"f1": 0.9} and new.metrics["val_mean_iou"] == 0.5
