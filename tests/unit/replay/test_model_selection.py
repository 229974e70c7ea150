"""Model promotion rules (streams.model_selection) and `defectstream models` (registry side)."""
from __future__ import annotations

import json

import pytest
import torch

from models.registry import save_checkpoint
from streams.model_selection import (
    PROMOTION_KEY, InspectorPool, ModelSelection, Promotion, is_promotion_key, parse_promotion,
)
from streams.models_cli import ModelRefError, list_infos, model_identity, promote, resolve_model
from streams.settings import Settings


def promo(version: str, at: int, path: str | None = None) -> Promotion:
    return Promotion(version, path or f"/models/{version}", at, {"detector": "h"})


def test_promotion_round_trip_and_foreign_values():
    p = promo("v2", 5)
    assert parse_promotion(p.to_json()) == p
    assert parse_promotion(None) is None
    assert parse_promotion(b'{"line_id": "x"}') is None  # a camera config is not a promotion
    assert parse_promotion(b"not json") is None
    assert is_promotion_key(b"*") and is_promotion_key("*") and not is_promotion_key(b"cam-1")


def test_new_parts_switch_open_parts_keep_their_model():
    sel = ModelSelection("v1")
    assert not sel.apply(b"cam-1", b'{"line_id": "l"}')  # not ours: the camera registry's
    assert sel.apply(PROMOTION_KEY.encode(), promo("v2", 10).to_json())
    # not loaded yet: stay on the default
    assert sel.version_for_new_part(None, ["v1"]) == "v1"
    assert sel.version_for_new_part(None, ["v1", "v2"]) == "v2"
    # a frame of the open part keeps the part's model; the next part switches
    assert sel.version_for_frame("p1", ("p1", "v1"), None, ["v1", "v2"]) == "v1"
    assert sel.version_for_frame("p2", ("p1", "v1"), None, ["v1", "v2"]) == "v2"
    # a camera pinned to a loaded version keeps it (canary / hold-back)
    assert sel.version_for_new_part("v1", ["v1", "v2"]) == "v1"
    assert sel.version_for_new_part("v9", ["v1", "v2"]) == "v2"  # pinned version not loaded
    # an older promotion read later never wins; a tombstone returns to the default
    sel.apply(b"*", promo("v0", 3).to_json())
    assert sel.wanted().model_version == "v2"
    sel.apply(b"*", None)
    assert sel.wanted() is None and sel.version_for_new_part(None, ["v1", "v2"]) == "v1"


class Insp:
    def __init__(self, version):
        self.model_version = version


def test_inspector_pool_loads_once_refuses_bad_promotions_and_evicts():
    loads = []

    def loader(path):
        loads.append(path)
        if "broken" in path:
            raise FileNotFoundError(path)
        return Insp(path.rsplit("/", 1)[-1])

    pool = InspectorPool(Insp("v1"), loader, max_loaded=2)
    assert pool.ensure(None)
    assert pool.ensure(promo("v2", 1)) and pool.ensure(promo("v2", 1)) and loads == ["/models/v2"]
    assert pool.get("v2").model_version == "v2"
    assert not pool.ensure(promo("v3", 2, "/models/broken")) and not pool.ensure(promo("v3", 2, "/models/broken"))
    assert loads.count("/models/broken") == 1  # not retried
    assert not pool.ensure(promo("v4", 3, "/models/other"))  # holds another version than promised
    assert pool.ensure(promo("v5", 4), in_use=["v2"])  # v2 still inspects an open part: kept
    assert set(pool.versions) == {"v1", "v2", "v5"}
    assert pool.ensure(promo("v6", 5), in_use=[])
    assert set(pool.versions) == {"v1", "v6"}  # the default always stays
    with pytest.raises(KeyError):
        pool.get("v2")


def _pair(root, scale: float = 1.0):
    sd = {"w": torch.ones(3) * scale}
    det = save_checkpoint(root / "detector_fast.pt", sd, kind="detector", arch="fast", arch_config={},
                          input_spec={"channels": 1}, class_names=["crack"], threshold=2.0,
                          metrics={"val_mean_iou": 0.5})
    cls = save_checkpoint(root / "classifier.pt", sd, kind="classifier", arch="cnn4", arch_config={},
                          input_spec={}, class_names=["crack"])
    return det, cls


def test_models_resolve_list_and_promote(tmp_path, chdb):
    a, b = tmp_path / "a", tmp_path / "b"
    det_a, cls_a = _pair(a)
    det_b, _ = _pair(b, 2.0)
    roots = [tmp_path]
    assert {i.path for i in list_infos(roots)} == {str(a / "detector_fast.pt"), str(a / "classifier.pt"),
                                                   str(b / "detector_fast.pt"), str(b / "classifier.pt")}
    assert resolve_model(str(a), roots) == (a / "detector_fast.pt", a / "classifier.pt")
    assert resolve_model(det_b.model_version, roots)[0] == b / "detector_fast.pt"
    full = f"{det_a.model_version}+{cls_a.model_version}"
    assert resolve_model(full, roots)[0] == a / "detector_fast.pt"
    with pytest.raises(ModelRefError):
        resolve_model("detector-fast-000000000000", roots)
    version, hashes, metrics = model_identity(*resolve_model(full, roots))
    assert version == full and hashes["detector"] == det_a.content_hash and metrics["threshold"] == 2.0
    sent = []
    p = promote(Settings(), full, roots, executor=chdb, send=lambda k, v: sent.append((k, v)), clock=lambda: 12.0)
    assert sent == [(b"*", p.to_json())] and p.model_version == full and p.promoted_at == 12000
    row = chdb.query("SELECT run_id, model_version, kind, note FROM model_runs")
    assert row[0][:3] == ("production", full, "promotion") and json.loads(row[0][3])["model_path"] == p.model_path
