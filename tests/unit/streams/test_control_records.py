"""The `cameras` topic's control records: a gone model never stops a part, garbage is skipped and
counted, failed promotions are retried and ordered by offset, a replaced or renamed camera (issue 17)."""
from __future__ import annotations

import asyncio
import json

import pytest

from streams.inspection.cameras import CameraAlias, CameraConfig, CameraRegistry, CameraReset, apply_cameras_record
from streams.inspection.inference import InferenceRunner
from streams.inspection.model_selection import InspectorPool, LoadBackoff, ModelSelection, Promotion
from streams.inspection.pipeline import InspectPipeline
from streams.settings import ModelSettings, PlantSettings, Settings

from ..fakes import FakeInspector, ListEmitter, MemoryStore
from .test_model_switch import ev


def _pipeline(default="v1", store=None, registry=None, load=lambda path: FakeInspector(path.rsplit("/", 1)[-1])):
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=FakeInspector(default))
    runner._load_path = load
    emitter = ListEmitter()
    pipe = InspectPipeline(settings, runner, registry if registry is not None else CameraRegistry(),
                           store if store is not None else MemoryStore(), emitter)
    return runner, emitter, pipe


def _verdicts(emitter):
    return {r.event.part_id: (r.event.model_version, r.event.opened_model_version)
            for r in emitter.sent if r.kind == "parts"}


# -- item 1: an open part whose model is gone -------------------------------------------------------
def test_an_open_part_whose_promoted_model_is_gone_after_a_restart_finishes_on_the_current_one():
    store = MemoryStore()
    runner, _emitter, pipe = _pipeline(store=store)
    runner.selection.apply(b"*", Promotion("v2", "/models/v2", 1).to_json(), 0)
    asyncio.run(pipe.process([ev("p1", 1, 0, False, 0)]))  # p1 opens on v2
    assert store.load("cam-1").part.model_version == "v2"
    # v3 replaces v2, then the worker restarts (or the partition moves): nobody loads v2 any more
    runner2, emitter2, pipe2 = _pipeline(store=store)
    runner2.selection.apply(b"*", Promotion("v3", "/models/v3", 2).to_json(), 1)
    asyncio.run(pipe2.process([ev("p1", 2, 1, False, 1), ev("p1", 3, 2, True, 2), ev("p2", 4, 0, True, 3)]))
    assert _verdicts(emitter2) == {"p1": ("v3", "v2"), "p2": ("v3", "")}
    assert not [r for r in emitter2.sent if r.kind == "deadletter"]
    assert pipe2.metrics.parts_model_switched._value.get() == 1


def test_a_redeploy_with_another_default_model_finishes_open_parts_on_it():
    store = MemoryStore()
    _runner, _emitter, pipe = _pipeline(default="v1", store=store)
    asyncio.run(pipe.process([ev("p1", 1, 0, False, 0)]))
    _runner2, emitter2, pipe2 = _pipeline(default="v1b", store=store)  # MODEL__PATH changed
    asyncio.run(pipe2.process([ev("p1", 2, 1, True, 1)]))
    (verdict,) = [r.event for r in emitter2.sent if r.kind == "parts"]
    assert (verdict.model_version, verdict.opened_model_version, verdict.frames) == ("v1b", "v1", 2)


# -- item 2: garbage on the cameras topic ----------------------------------------------------------
def _promo_json(**over):
    d = {"kind": "model_promotion", "model_version": "bad", "model_path": "/models/bad", "promoted_at": 5}
    d.update(over)
    return json.dumps(d).encode()


DEEP = b"[" * 200_000 + b"]" * 200_000
GARBAGE = [
    (b"*", _promo_json(promoted_at=None)),
    (b"*", _promo_json(promoted_at="soon")),
    (b"*", _promo_json(content_hashes=[1])),
    (b"*", _promo_json(content_hashes={"detector": 1})),
    (b"*", _promo_json(model_version=7)),
    (b"*line:l1", DEEP),
    (b"*line:l1", b"[" * 30_000 + b"]" * 30_000),  # under the size limit: the parser's depth bound refuses it
    (b"cam-1", b'{"line_id": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"),
    (b"*camera:cam-1", b"\xff\xfe not utf-8"),
    (b"*", b'{"kind": "model_promotion", "model_version": "v", "model_path": "/p", "x": ' + b"1" * 70_000 + b"}"),
    (b"cam-1", DEEP),
    (b"cam-1", b'{"roi": "everywhere"}'),
    (b"cam-1", b"[1]"),
    (b"*reset:cam-1", b'{"kind": "camera_reset", "camera_id": "cam-1", "reset_id": null}'),
    (b"*reset:cam-1", CameraReset(kind="camera_reset", camera_id="cam-2", reset_id="r").to_json()),  # other camera
    (b"*alias:cam-1", b'{"kind": "camera_alias", "camera_id": "cam-1", "alias_of": ["old"]}'),
    (b"*something:else", b"{}"),
    (None, b"{}"),
]


@pytest.mark.parametrize("key,value", GARBAGE, ids=[f"{i}" for i in range(len(GARBAGE))])
def test_an_invalid_cameras_record_is_skipped_and_counted_never_raised(key, value):
    sel, reg = ModelSelection("v0"), CameraRegistry()
    sel.apply(b"*", Promotion("good", "/models/good", 1).to_json(), 0)
    sel.apply(b"*line:l1", Promotion("line", "/models/line", 1).to_json(), 1)
    reg.apply(b"cam-1", CameraConfig(line_id="l9").to_json())
    rejected: list[str] = []
    what = apply_cameras_record(key, value, reg, sel, 10, rejected.append)
    assert what.startswith("rejected:") and len(rejected) == 1
    # what was in force stays in force
    assert {str(s): p.model_version for s, p in sel.promotions.items()} == {"plant": "good", "line l1": "line"}
    assert reg.get("cam-1") == CameraConfig(line_id="l9") and reg.cameras() == ["cam-1"]
    # and the direct entry points never raise either (the follower of older code called them)
    sel.apply(key, value, 11)
    reg.apply(key, value)


def test_the_follower_counts_rejected_records_in_the_worker_metrics():
    _runner, _emitter, pipe = _pipeline()
    for key, value in GARBAGE[:3]:
        apply_cameras_record(key, value, pipe.registry, pipe.runner.selection, None,
                             lambda kind: pipe.metrics.control_rejected.labels(kind=kind).inc())
    assert pipe.metrics.control_rejected.labels(kind="promotion")._value.get() == 3


# -- item 6: promotions silently not applied --------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_promotion_that_failed_to_load_is_retried_with_backoff_and_at_once_when_promoted_again():
    clock, broken, loads, failures = Clock(), {"/models/v2"}, [], []

    def loader(path):
        loads.append(path)
        if path in broken:
            raise FileNotFoundError(path)  # e.g. the file was not synced to this host yet
        return FakeInspector(path.rsplit("/", 1)[-1])

    pool = InspectorPool(FakeInspector("v1"), loader, backoff=LoadBackoff(5.0, 60.0), clock=clock,
                         on_failure=failures.append)
    sel = ModelSelection("v1")
    sel.apply(b"*", Promotion("v2", "/models/v2", 1).to_json(), 0)
    wanted = sel.wanted()
    assert pool.sync(wanted, seqs=sel.promotion_seq) == set() and len(loads) == 1
    assert pool.missing(wanted, sel.promotion_seq) == []  # not before the backoff
    clock.t = 5.0
    assert pool.missing(wanted, sel.promotion_seq) == wanted
    assert pool.sync(wanted, seqs=sel.promotion_seq) == set() and len(loads) == 2
    assert [f.attempts for f in failures] == [1, 2] and failures[-1].retry_at == 15.0  # doubled
    assert pool.failures[0].error.startswith("FileNotFoundError")
    broken.clear()
    sel.apply(b"*", Promotion("v2", "/models/v2", 2).to_json(), 1)  # promoted again: tried at once
    assert pool.sync(sel.wanted(), seqs=sel.promotion_seq) == {"v2"} and len(loads) == 3
    assert pool.failures == []


def test_two_promotions_of_one_retrained_directory_do_not_both_die_after_a_restart():
    # /models/d held v2 when cam-1 got it; it was retrained in place (v3) and promoted for cam-2
    pool = InspectorPool(FakeInspector("v1"), lambda path: FakeInspector("v3"), clock=Clock())
    sel = ModelSelection("v1")
    sel.apply(b"*camera:cam-1", Promotion("v2", "/models/d", 1, scope="*camera:cam-1").to_json(), 0)
    sel.apply(b"*camera:cam-2", Promotion("v3", "/models/d", 2, scope="*camera:cam-2").to_json(), 1)
    assert pool.sync(sel.wanted(), seqs=sel.promotion_seq) == {"v3"}
    assert [(f.model_version, f.model_path) for f in pool.failures] == [("v2", "/models/d")]
    assert sel.version_for_new_part(None, pool.versions, "cam-2") == "v3"
    assert sel.version_for_new_part(None, pool.versions, "cam-1") == "v1"


def test_promotions_follow_the_topic_offsets_not_promoted_at():
    hour = 3_600_000
    sel = ModelSelection("v1")
    sel.apply(b"*", Promotion("ahead", "/models/ahead", 10 * hour + hour).to_json(), 0)  # a clock an hour ahead
    sel.apply(b"*", Promotion("later", "/models/later", 10 * hour + 60_000).to_json(), 1)
    assert sel.promotion.model_version == "later"
    sel.apply(b"*", Promotion("ahead", "/models/ahead", 11 * hour).to_json(), 0)  # the same record read again
    assert sel.promotion.model_version == "later"


def test_a_worker_retries_a_failed_promotion_and_counts_it():
    attempts = []

    def load(path):
        attempts.append(path)
        if len(attempts) == 1:
            raise OSError("not there yet")
        return FakeInspector(path.rsplit("/", 1)[-1])

    runner, emitter, pipe = _pipeline(load=load)
    runner.selection.apply(b"*", Promotion("v2", "/models/v2", 1).to_json(), 0)
    asyncio.run(pipe.process([ev("p1", 1, 0, True, 0)]))
    assert pipe.metrics.model_load_failures.labels(model_version="v2")._value.get() == 1
    assert pipe.metrics.promotions_not_loaded._value.get() == 1
    runner.pool.clock = lambda: 1e9  # the backoff has passed
    asyncio.run(pipe.process([ev("p2", 2, 0, True, 1)]))
    assert _verdicts(emitter) == {"p1": ("v1", ""), "p2": ("v2", "")}
    assert pipe.metrics.promotions_not_loaded._value.get() == 0


# -- item 15: a replaced or renamed camera ----------------------------------------------------------
def test_a_camera_reset_lets_a_replaced_camera_count_frame_seq_from_zero_once():
    store, registry = MemoryStore(), CameraRegistry()
    _r, emitter, pipe = _pipeline(store=store, registry=registry)
    asyncio.run(pipe.process([ev("old1", 500, 0, True, 0)]))
    asyncio.run(pipe.process([ev("new1", 1, 0, False, 1)]))  # replaced camera, no reset yet: refused
    assert [r.event.error_class for r in emitter.sent if r.kind == "deadletter"] == ["out_of_order_frame"]
    assert registry.apply(b"*reset:cam-1", CameraReset(kind="camera_reset", camera_id="cam-1", reset_id="r1").to_json())
    asyncio.run(pipe.process([ev("new2", 2, 0, False, 2), ev("new2", 3, 1, True, 3)]))
    assert "new2" in _verdicts(emitter)
    # applied once: a restarted worker reading the same reset record does not forget the new history
    _r2, emitter2, pipe2 = _pipeline(store=store, registry=registry)
    asyncio.run(pipe2.process([ev("new2", 3, 1, True, 4), ev("new3", 4, 0, True, 5)]))
    assert [r.event.error_class for r in emitter2.sent if r.kind == "deadletter"] == ["duplicate_frame"]
    assert "new3" in _verdicts(emitter2)


def test_a_renamed_camera_keeps_its_limits_and_camera_promotion():
    registry = CameraRegistry()
    registry.apply(b"cam-old", CameraConfig(line_id="l7", fail_severity=0.5).to_json())
    runner, emitter, pipe = _pipeline(registry=registry)
    runner.selection.apply(b"*camera:cam-old", Promotion("v9", "/models/v9", 1, scope="*camera:cam-old").to_json(), 0)
    assert registry.apply(b"*alias:cam-new",
                          CameraAlias(kind="camera_alias", camera_id="cam-new", alias_of="cam-old").to_json())
    asyncio.run(pipe.process([ev("p1", 1, 0, False, 0, cam="cam-new"), ev("p1", 2, 1, True, 1, cam="cam-new")]))
    (verdict,) = [r.event for r in emitter.sent if r.kind == "parts"]
    assert (verdict.camera_id, verdict.line_id, verdict.model_version) == ("cam-new", "l7", "v9")
    assert verdict.verdict == "FAIL"  # the fake's severity 4 is past the old camera's fail_severity 0.5
    registry.apply(b"*alias:cam-new", None)
    assert registry.get("cam-new") is None and registry.alias_of("cam-new") is None
