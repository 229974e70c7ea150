"""Model promotion rules (streams.inspection.model_selection) and `defectstream models` (registry side)."""
from __future__ import annotations

import json

import pytest
import torch

from models.core.checkpoints import save_checkpoint
from models.loading import model_identity
from streams.commands.models import (
    KafkaUnavailable,
    ModelRefError,
    clear_promotion,
    list_infos,
    list_models,
    production_view,
    promote,
    read_cameras_topic,
    resolve_model,
)
from streams.inspection.cameras import CameraConfig, CameraRegistry
from streams.inspection.model_selection import (
    PLANT,
    PROMOTION_KEY,
    InspectorPool,
    ModelSelection,
    Promotion,
    Scope,
    is_promotion_key,
    parse_promotion,
    parse_scope,
    scope_of,
)
from streams.settings import Settings

from ..fakes import FakeInspector


def promo(version: str, at: int, path: str | None = None, scope: str = PROMOTION_KEY) -> Promotion:
    return Promotion(version, path or f"/models/{version}", at, {"detector": "h"}, "", scope)


def test_promotion_round_trip_and_foreign_values():
    p = promo("v2", 5)
    assert parse_promotion(p.to_json()) == p
    assert parse_promotion(None) is None
    assert parse_promotion(b'{"line_id": "x"}') is None  # a camera config is not a promotion
    assert parse_promotion(b"not json") is None
    assert is_promotion_key(b"*") and is_promotion_key("*") and not is_promotion_key(b"cam-1")
    assert is_promotion_key(b"*line:line-2") and is_promotion_key("*camera:cam-3")
    assert not is_promotion_key(b"*line:") and not is_promotion_key(None)  # a scope needs its id


def test_scope_keys_round_trip():
    assert scope_of() == PLANT and PLANT.key == "*"
    assert scope_of(camera="cam-3").key == "*camera:cam-3" and scope_of(line="line-2").key == "*line:line-2"
    for s in (PLANT, Scope("line", "line-2"), Scope("camera", "cam:3")):  # ids may hold ':'
        assert parse_scope(s.key) == s and parse_scope(s.key.encode()) == s
    assert parse_scope(b"cam-3") is None
    with pytest.raises(ValueError):
        scope_of(camera="cam-3", line="line-2")
    with pytest.raises(ValueError):
        scope_of(camera="")
    # the key, not the value, says where a promotion applies
    p = promo("v2", 5, scope="*camera:cam-3")
    assert parse_promotion(p.to_json(), b"*line:l9").scope == "*line:l9"


def test_records_of_older_releases_still_parse_as_plant_wide():
    old = json.dumps({"kind": "model_promotion", "model_version": "v2", "model_path": "/m/v2", "promoted_at": 7,
                      "content_hashes": {"detector": "h"}, "note": ""}).encode()  # no "scope" field
    assert parse_promotion(old) == Promotion("v2", "/m/v2", 7, {"detector": "h"}, "", "*")
    sel = ModelSelection("v1")
    assert sel.apply(b"*", old)
    assert sel.promotion is not None and sel.wanted() == [sel.promotion]
    assert sel.version_for_new_part(None, ["v1", "v2"], camera_id="any", line_id="any") == "v2"


def test_scope_precedence_camera_pinned_line_plant_default():
    sel = ModelSelection("v0")
    sel.apply(b"*", promo("plant", 1).to_json())
    sel.apply(b"*line:l2", promo("line", 2).to_json())
    sel.apply(b"*camera:c3", promo("cam", 3).to_json())
    every = ["v0", "plant", "line", "cam", "pin"]
    assert sel.version_for_new_part(None, every, "c3", "l2") == "cam"
    assert sel.version_for_new_part("pin", every, "c3", "l2") == "cam"  # an explicit camera promotion beats a pin
    assert sel.version_for_new_part("pin", every, "c4", "l2") == "pin"  # a pin holds back a line/plant rollout
    assert sel.version_for_new_part(None, every, "c4", "l2") == "line"
    assert sel.version_for_new_part(None, every, "c4", "l1") == "plant"
    assert sel.version_for_new_part(None, every, "c3", "l1") == "cam"  # camera scope: whatever its line
    assert sel.version_for_new_part(None, every) == "plant"  # camera and line unknown
    # a promotion that is not loaded (yet, or failed) falls through to the next rule
    assert sel.version_for_new_part(None, ["v0", "plant", "line"], "c3", "l2") == "line"
    assert sel.version_for_new_part(None, ["v0", "plant"], "c3", "l2") == "plant"
    assert sel.version_for_new_part(None, ["v0"], "c3", "l2") == "v0"
    assert [p.model_version for p in sel.wanted()] == ["cam", "line", "plant"]
    assert sel.candidates("c3", "l2", "pin") == [("camera", "cam"), ("pinned", "pin"), ("line", "line"),
                                                 ("plant", "plant"), ("default", "v0")]


def test_clearing_a_scope_falls_back_and_applies_at_the_part_boundary():
    sel = ModelSelection("v0")
    sel.apply(b"*line:l2", promo("line", 2).to_json())
    sel.apply(b"*camera:c3", promo("cam", 3).to_json())
    avail = ["v0", "line", "cam"]
    open_part = ("p1", sel.version_for_frame("p1", None, None, avail, "c3", "l2"))
    assert open_part == ("p1", "cam")
    assert sel.apply(b"*camera:c3", None)  # `models promote --camera c3 --clear`
    assert sel.version_for_frame("p1", open_part, None, avail, "c3", "l2") == "cam"  # the open part keeps it
    assert sel.version_for_frame("p2", open_part, None, avail, "c3", "l2") == "line"  # the next part falls back
    assert sel.apply(b"*line:l2", None)
    assert sel.version_for_frame("p3", ("p2", "line"), None, avail, "c3", "l2") == "v0"
    assert sel.wanted() == [] and sel.promotions == {}
    # records apply in offset order whatever their promoted_at; a record re-read (an offset already
    # applied) changes nothing; other scopes are independent
    sel.apply(b"*camera:c3", promo("new", 5).to_json(), offset=10)
    sel.apply(b"*camera:c3", promo("old", 1).to_json(), offset=7)  # read again after a seek
    sel.apply(b"*camera:c4", promo("old", 5).to_json(), offset=11)
    assert {str(s): p.model_version for s, p in sel.promotions.items()} == {"camera c3": "new", "camera c4": "old"}
    # a value under a scope key that is no promotion is ignored (and not taken for a camera config)
    assert sel.apply(b"*camera:c3", b'{"line_id": "x"}') and sel.promotions[Scope("camera", "c3")].model_version == "new"
    reg = CameraRegistry()
    assert not reg.apply(b"*camera:c3", promo("x", 1).to_json()) and not reg.apply(b"*", None) and len(reg) == 0


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
    # the record read last wins (offset order), whatever its promoted_at; a tombstone returns to the default
    sel.apply(b"*", promo("v0", 3).to_json())
    assert [p.model_version for p in sel.wanted()] == ["v0"]
    sel.apply(b"*", None)
    assert sel.wanted() == [] and sel.version_for_new_part(None, ["v1", "v2"]) == "v1"


def test_inspector_pool_loads_once_refuses_bad_promotions_and_evicts():
    loads = []

    def loader(path):
        loads.append(path)
        if "broken" in path:
            raise FileNotFoundError(path)
        return FakeInspector(path.rsplit("/", 1)[-1])

    pool = InspectorPool(FakeInspector("v1"), loader, max_loaded=2)
    assert pool.ensure(None)
    assert pool.ensure(promo("v2", 1)) and pool.ensure(promo("v2", 1)) and loads == ["/models/v2"]
    assert pool.get("v2").model_version == "v2"
    assert not pool.ensure(promo("v3", 2, "/models/broken")) and not pool.ensure(promo("v3", 2, "/models/broken"))
    assert loads.count("/models/broken") == 1  # not retried before its backoff (see the retry test)
    assert not pool.ensure(promo("v4", 3, "/models/other"))  # holds another version than promised
    assert pool.ensure(promo("v5", 4), in_use=["v2"])  # v2 still inspects an open part: kept
    assert set(pool.versions) == {"v1", "v2", "v5"}
    assert pool.ensure(promo("v6", 5), in_use=[])
    assert set(pool.versions) == {"v1", "v6"}  # the default always stays
    with pytest.raises(KeyError):
        pool.get("v2")


def test_inspector_pool_holds_one_model_per_scope_and_never_evicts_a_needed_one():
    loads = []

    def loader(path):
        loads.append(path)
        return FakeInspector(path.rsplit("/", 1)[-1])

    pool = InspectorPool(FakeInspector("v1"), loader, max_loaded=2)
    wanted = [promo("cam", 3, scope="*camera:c3"), promo("line", 2, scope="*line:l2"), promo("plant", 1)]
    assert pool.missing(wanted) == wanted
    assert pool.sync(wanted, in_use=["old"]) == {"cam", "line", "plant"}
    assert set(pool.versions) == {"v1", "cam", "line", "plant"}  # beyond max_loaded: all are needed
    assert pool.missing(wanted) == [] and pool.sync(wanted) == {"cam", "line", "plant"} and len(loads) == 3
    # the camera promotion is cleared but a part opened with it is still open: kept
    pool.release({"cam", "line", "plant"})
    assert "cam" in pool.versions
    pool.release({"line", "plant"})  # the part closed: the bound applies again, LRU first
    assert "cam" not in pool.versions and {"v1", "line", "plant"} <= set(pool.versions)
    pool.release(set())
    assert len(pool.versions) == 2 and "v1" in pool.versions  # the default always stays


def _pair(root, scale: float = 1.0):
    sd = {"w": torch.ones(3) * scale}
    det = save_checkpoint(root / "detector_fast.pt", sd, kind="detector", arch="fast", arch_config={},
                          input_spec={"channels": 1}, class_names=["crack"], threshold=2.0,
                          metrics={"val_mean_iou": 0.5})
    cls = save_checkpoint(root / "classifier.pt", sd, kind="classifier", arch="cnn4", arch_config={},
                          input_spec={}, class_names=["crack"])
    return det, cls


def _segmenter(root):
    """A segmenter model directory (`segmenter.pt` only), as `train segmenter` writes it."""
    return save_checkpoint(root / "segmenter.pt", {"w": torch.arange(4.0)}, kind="segmenter", arch="unet-lite0",
                           arch_config={}, input_spec={"channels": 1}, class_names=["defect"],
                           metrics={"mean_iou": 0.4})


def test_models_resolve_list_and_promote(tmp_path, chdb):
    a, b, seg = tmp_path / "a", tmp_path / "b", tmp_path / "seg"
    det_a, cls_a = _pair(a)
    det_b, _ = _pair(b, 2.0)
    seg_info = _segmenter(seg)
    roots = [tmp_path]
    assert {i.path for i in list_infos(roots)} == {str(a / "detector_fast.pt"), str(a / "classifier.pt"),
                                                   str(b / "detector_fast.pt"), str(b / "classifier.pt"),
                                                   str(seg / "segmenter.pt")}
    full = f"{det_a.model_version}+{cls_a.model_version}"
    models = {m.model_version: m for m in list_models(roots)}
    assert len(models) == 3 and models[full].family == "severity" and models[full].path == a / "detector_fast.pt"
    assert models[seg_info.model_version].family == "segmenter"
    assert models[seg_info.model_version].files == {"segmenter": str(seg / "segmenter.pt")}
    # a PATH (directory or one of its .pt files), the full version, or one checkpoint's version
    assert resolve_model(str(a), roots) == a and resolve_model(str(seg / "segmenter.pt"), roots) == seg / "segmenter.pt"
    assert resolve_model(det_b.model_version, roots) == b / "detector_fast.pt"
    assert resolve_model(full, roots) == a / "detector_fast.pt"
    assert resolve_model(seg_info.model_version, roots) == seg / "segmenter.pt"
    with pytest.raises(ModelRefError):
        resolve_model("detector-fast-000000000000", roots)
    with pytest.raises(ModelRefError, match="does not exist|no model"):
        resolve_model(str(tmp_path / "missing"), roots)
    (tmp_path / "lonely").mkdir()
    save_checkpoint(tmp_path / "lonely" / "classifier.pt", {"w": torch.ones(1)}, kind="classifier", arch="cnn4",
                    arch_config={}, input_spec={}, class_names=["crack"])
    with pytest.raises(ModelRefError):  # a region classifier without its detector is no model
        resolve_model(str(tmp_path / "lonely"), roots)
    version, hashes, metrics = model_identity(resolve_model(full, roots))
    assert version == full and hashes["detector"] == det_a.content_hash

    sent = []
    p = promote(Settings(), full, roots, executor=chdb, send=lambda k, v: sent.append((k, v)), clock=lambda: 12.0)
    assert sent == [(b"*", p.to_json())] and p.model_version == full and p.promoted_at == 12000 and p.scope == "*"
    # a segmenter directory, for one camera
    s = promote(Settings(), str(seg), roots, camera="cam-3", executor=chdb, send=lambda k, v: sent.append((k, v)),
                clock=lambda: 13.0)
    assert sent[-1] == (b"*camera:cam-3", s.to_json())
    assert s.model_version == seg_info.model_version and s.content_hashes == {"segmenter": seg_info.content_hash}
    assert s.model_path == str((seg).resolve())
    ln = promote(Settings(), det_b.model_version, roots, line="line-2", send=lambda k, v: sent.append((k, v)))
    assert sent[-1][0] == b"*line:line-2" and ln.model_path.endswith("b/detector_fast.pt")
    cleared = clear_promotion(Settings(), camera="cam-3", executor=chdb, send=lambda k, v: sent.append((k, v)),
                              clock=lambda: 14.0)
    assert cleared == Scope("camera", "cam-3") and sent[-1] == (b"*camera:cam-3", None)
    rows = chdb.query("SELECT run_id, model_version, kind, note FROM model_runs ORDER BY recorded_at")
    assert [r[:3] for r in rows] == [("production", full, "promotion"),
                                     ("production", seg_info.model_version, "promotion"),
                                     ("production", "", "promotion_cleared")]
    assert json.loads(rows[0][3])["model_path"] == p.model_path and json.loads(rows[2][3])["scope"] == "*camera:cam-3"
    # what workers make of the records sent
    sel = ModelSelection("default")
    for k, v in sent:
        sel.apply(k, v)
    assert [x.model_version for x in sel.wanted()] == [ln.model_version, full]
    with pytest.raises(ModelRefError):  # nothing is published for an invalid model
        promote(Settings(), str(tmp_path / "lonely"), roots, camera="cam-3", send=lambda k, v: sent.append((k, v)))
    assert len(sent) == 4


def test_production_view_says_which_camera_runs_what():
    sel = ModelSelection()
    sel.apply(b"*", promo("plant", 1).to_json())
    sel.apply(b"*line:l2", promo("line", 2).to_json())
    sel.apply(b"*camera:c9", promo("cam", 3).to_json())  # a camera with no config
    reg = CameraRegistry()
    reg.apply(b"c1", CameraConfig(line_id="l2").to_json())
    reg.apply(b"c2", CameraConfig(line_id="l2", model_version="held").to_json())
    reg.apply(b"c3", CameraConfig(line_id="l1").to_json())
    view = {c.camera_id: (c.rule, c.model_version) for c in production_view(sel, reg, "v0")}
    assert view == {"c1": ("line", "line"), "c2": ("pinned", "held"), "c3": ("plant", "plant"), "c9": ("camera", "cam")}
    assert production_view(ModelSelection(), reg, "v0")[0].model_version == "v0"


def test_reading_promotions_from_an_unreachable_broker_is_a_clear_error():
    s = Settings()
    s.kafka.bootstrap_servers = "127.0.0.1:1"  # nothing listens there
    with pytest.raises(KafkaUnavailable, match="127.0.0.1:1 is not reachable"):
        read_cameras_topic(s, timeout_s=1.0)


def test_models_list_says_which_promotions_are_not_in_force(tmp_path):
    from streams.commands.models import loadable

    d = tmp_path / "d"
    _pair(d)
    sent = []
    p = promote(Settings(), str(d), [tmp_path], camera="c1", send=lambda k, v: sent.append((k, v)))
    assert loadable(p) == "ok"
    _pair(d, 3.0)  # retrained in place: the promoted version is gone from that path
    assert loadable(p).startswith("not loadable: the path holds model")
    assert loadable(p._replace(model_path=str(tmp_path / "missing"))).startswith("not loadable:")


def test_production_view_follows_a_renamed_camera():
    sel = ModelSelection("v0")
    sel.apply(b"*camera:old", promo("cam", 3, scope="*camera:old").to_json())
    reg = CameraRegistry()
    reg.apply(b"*alias:new", b'{"kind": "camera_alias", "camera_id": "new", "alias_of": "old"}')
    view = {c.camera_id: (c.rule, c.model_version) for c in production_view(sel, reg, "v0")}
    assert view == {"new": ("camera", "cam"), "old": ("camera", "cam")}


def test_models_list_shows_a_promotion_not_in_force_and_what_its_cameras_run_instead(tmp_path, monkeypatch):
    import streams.commands.models as cmd

    d = tmp_path / "d"
    _pair(d)
    good = promote(Settings(), str(d), [tmp_path], line="l2", send=lambda k, v: None)
    sel = ModelSelection()
    sel.apply(b"*line:l2", good.to_json(), 0)
    sel.apply(b"*", promo("gone", 1, "/nowhere").to_json(), 1)
    sel.apply(b"*camera:c1", b'{"kind": "model_promotion", "promoted_at": "soon"}', 2)
    reg = CameraRegistry()
    reg.apply(b"c1", CameraConfig(line_id="l1").to_json())
    reg.apply(b"c2", CameraConfig(line_id="l2").to_json())
    monkeypatch.setattr(cmd, "read_cameras_topic", lambda settings, timeout_s: (sel, reg))
    doc = cmd._production(Settings(), 1.0)
    assert {p["scope_name"]: p["loadable"][:13] for p in doc["promotions"]} == {"line l2": "ok", "plant": "not loadable:"}
    cams = {c["camera_id"]: (c["rule"], c["model_version"]) for c in doc["cameras"]}
    assert cams["c1"][0] == "default" and cams["c2"] == ("line", good.model_version)
    assert doc["rejected_records"] == {"promotion": 1}
