"""A promotion on the `cameras` topic switches the model at each camera's next part boundary."""
from __future__ import annotations

import asyncio

import cv2
import numpy as np

from schemas.events import FrameEvent
from streams.inspection.cameras import CameraConfig, CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.model_selection import Promotion
from streams.inspection.pipeline import InspectPipeline
from streams.kafka.records import SourceRecord
from streams.settings import ModelSettings, PlantSettings, Settings

from ..fakes import FakeInspector, ListEmitter, MemoryStore

CODEC = FrameEvent.codec()


def ev(part, seq, idx, last, off, cam="cam-1", line="l1"):
    img = np.full((64, 128), 100, np.uint8)
    img[20:30, 80 - 10 * idx:90 - 10 * idx] = 250
    fe = FrameEvent(camera_id=cam, line_id=line, part_id=part, frame_seq=seq, capture_ts=1_700_000_000_000 + seq * 100,
                    encoding="PNG", width=128, height=64, channels=1, image=cv2.imencode(".png", img)[1].tobytes(),
                    frame_index=idx, last_frame=last, conveyor_speed_mm_s=100.0, pixels_per_mm=1.0)
    return SourceRecord("frames", 0, off, cam.encode(), CODEC.encode(fe.to_avro()))


def _pipeline(load=lambda path: FakeInspector(path.rsplit("/", 1)[-1]), registry: CameraRegistry | None = None):
    """(runner, emitter, pipeline) on a v1 Inspector; a promoted model path loads as `load(path)`."""
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=FakeInspector("v1"))
    runner._load_path = load
    emitter = ListEmitter()
    pipe = InspectPipeline(settings, runner, registry if registry is not None else CameraRegistry(), MemoryStore(),
                           emitter)
    return runner, emitter, pipe


def _part_versions(emitter: ListEmitter) -> dict[str, str]:
    """part id -> the model version of its verdict, over every verdict sent."""
    return {r.event.part_id: r.event.model_version for r in emitter.sent if r.kind == "parts"}


def test_promotion_applies_from_the_next_part():
    runner, emitter, pipe = _pipeline()
    asyncio.run(pipe.process([ev("p1", 1, 0, False, 0)]))
    runner.selection.apply(b"*", Promotion("v2", "/models/v2", 1).to_json())  # arrives mid-part
    asyncio.run(pipe.process([ev("p1", 2, 1, False, 1), ev("p1", 3, 2, True, 2), ev("p2", 4, 0, False, 3)]))
    asyncio.run(pipe.process([ev("p2", 5, 1, True, 4)]))
    parts = _part_versions(emitter)
    assert parts == {"p1": "v1", "p2": "v2"}
    assert set(runner.versions) == {"v1", "v2"}


def _part(cam, part, seq0, off0, frames=2, line="l1"):
    return [ev(part, seq0 + i, i, i == frames - 1, off0 + i, cam, line) for i in range(frames)]


def test_scoped_promotions_per_camera_and_line_and_clearing():
    loaded = []
    registry = CameraRegistry()
    registry.apply(b"cam-4", CameraConfig(line_id="l2").to_json())  # its frames say l1; its config moves it to l2
    runner, emitter, pipe = _pipeline(lambda path: loaded.append(path) or FakeInspector(path.rsplit("/", 1)[-1]),
                                      registry)

    def run(*events):
        asyncio.run(pipe.process(list(events)))

    run(ev("a1", 1, 0, False, 0, "cam-1"))  # cam-1 opens a1 on v1
    sel = runner.selection
    sel.apply(b"*camera:cam-1", Promotion("seg", "/models/seg", 1, scope="*camera:cam-1").to_json())
    sel.apply(b"*line:l2", Promotion("lineB", "/models/lineB", 1).to_json())
    run(ev("a1", 2, 1, True, 1, "cam-1"), *_part("cam-1", "a2", 10, 2), *_part("cam-2", "b1", 20, 4),
        *_part("cam-4", "d1", 30, 6), *_part("cam-3", "c1", 40, 8, line="l2"))
    # clear the camera scope and promote the plant: cam-1 falls back at its next part
    sel.apply(b"*camera:cam-1", None)
    sel.apply(b"*", Promotion("plantC", "/models/plantC", 2).to_json())
    run(*_part("cam-1", "a3", 50, 10), *_part("cam-2", "b2", 60, 12), *_part("cam-4", "d2", 70, 14))
    parts = _part_versions(emitter)
    assert parts == {"a1": "v1", "a2": "seg", "b1": "v1", "d1": "lineB", "c1": "lineB",
                     "a3": "plantC", "b2": "plantC", "d2": "lineB"}
    defects = {r.event.part_id: r.event.model_version for r in emitter.sent if r.kind == "defects"}
    assert all(parts[p] == v for p, v in defects.items()) and defects
    assert sorted(loaded) == ["/models/lineB", "/models/plantC", "/models/seg"]  # each loaded once
    assert {"v1", "lineB", "plantC"} <= set(runner.versions)


def test_a_model_an_open_part_needs_is_not_evicted_by_other_cameras_batches():
    runner, emitter, pipe = _pipeline()
    asyncio.run(runner.ensure_loaded())
    runner.pool.max_loaded = 1  # only the default beyond what is needed
    sel = runner.selection
    sel.apply(b"*camera:cam-1", Promotion("v2", "/models/v2", 1).to_json())
    asyncio.run(pipe.process([ev("a1", 1, 0, False, 0, "cam-1")]))  # a1 opens on v2
    sel.apply(b"*camera:cam-1", None)
    sel.apply(b"*", Promotion("v3", "/models/v3", 2).to_json())
    asyncio.run(pipe.process(_part("cam-2", "b1", 10, 1)))  # a batch without cam-1 loads v3
    assert {"v2", "v3"} <= set(runner.versions)
    asyncio.run(pipe.process([ev("a1", 2, 1, True, 3, "cam-1")] + _part("cam-1", "a2", 20, 4)))
    parts = _part_versions(emitter)
    assert parts == {"a1": "v2", "b1": "v3", "a2": "v3"}
    assert not [r for r in emitter.sent if r.kind == "deadletter"]
    asyncio.run(pipe.process(_part("cam-2", "b2", 30, 6)))  # no part needs v2 any more: evicted
    assert "v2" not in runner.versions and "v3" in runner.versions


def test_a_batch_waits_until_the_cameras_topic_is_read():
    runner, emitter, pipe = _pipeline()

    async def scenario():
        pipe.cameras_ready = asyncio.Event()
        batch = asyncio.create_task(pipe.process(_part("cam-1", "a1", 1, 0)))
        await asyncio.sleep(0.05)
        assert not batch.done() and not emitter.sent  # a restarted worker does not run ahead of its promotions
        runner.selection.apply(b"*camera:cam-1", Promotion("v2", "/models/v2", 1).to_json())
        pipe.cameras_ready.set()
        await batch
        # a topic that cannot be read holds a batch at most `cameras_wait_s`
        pipe.cameras_ready, pipe.cameras_wait_s = asyncio.Event(), 0.05
        await pipe.process(_part("cam-2", "b1", 10, 2))

    asyncio.run(scenario())
    parts = _part_versions(emitter)
    assert parts == {"a1": "v2", "b1": "v1"} and pipe.cameras_ready.is_set()
