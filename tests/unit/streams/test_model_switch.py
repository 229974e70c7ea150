"""A promotion on the `cameras` topic switches the model at each camera's next part boundary."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import cv2
import numpy as np

from models.types import BBox, Detection
from schemas.events import FrameEvent
from streams.camera_registry import CameraRegistry
from streams.inference import InferenceRunner
from streams.inspect_agent import InspectPipeline
from streams.model_selection import Promotion
from streams.settings import ModelSettings, PlantSettings, Settings
from streams.tracking import CameraState

CODEC = FrameEvent.codec()


class Insp:
    def __init__(self, version):
        self.model_version = version

    def inspect(self, frames):
        out = []
        for f in frames:
            ys, xs = np.nonzero(f > 200)
            b = BBox(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            out.append([Detection(b, np.ones((b.height, b.width), bool), "scratch", 0.9, 4.0, 5.0, b.area)])
        return out


class Store:
    def __init__(self):
        self.data = {}

    def load(self, cam):
        return CameraState.from_dict(self.data[cam]) if cam in self.data else CameraState(cam)

    def save(self, state, event):
        self.data[state.camera_id] = state.to_dict()


class Emitter:
    def __init__(self):
        self.sent = []

    async def send_all(self, records):
        self.sent.extend(records)


def ev(part, seq, idx, last, off):
    img = np.full((64, 128), 100, np.uint8)
    img[20:30, 80 - 10 * idx:90 - 10 * idx] = 250
    fe = FrameEvent(camera_id="cam-1", line_id="l1", part_id=part, frame_seq=seq, capture_ts=1_700_000_000_000 + seq * 100,
                    encoding="PNG", width=128, height=64, channels=1, image=cv2.imencode(".png", img)[1].tobytes(),
                    frame_index=idx, last_frame=last, conveyor_speed_mm_s=100.0, pixels_per_mm=1.0)
    return SimpleNamespace(message=SimpleNamespace(topic="frames", partition=0, offset=off, key=b"cam-1",
                                                   value=CODEC.encode(fe.to_avro())))


def test_promotion_applies_from_the_next_part():
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=Insp("v1"))
    runner._load_path = lambda path: Insp("v2")  # what Inspector.load(path) would return
    emitter = Emitter()
    pipe = InspectPipeline(settings, runner, CameraRegistry(), Store(), emitter)
    asyncio.run(pipe.process([ev("p1", 1, 0, False, 0)]))
    runner.selection.apply(b"*", Promotion("v2", "/models/v2", 1).to_json())  # arrives mid-part
    asyncio.run(pipe.process([ev("p1", 2, 1, False, 1), ev("p1", 3, 2, True, 2), ev("p2", 4, 0, False, 3)]))
    asyncio.run(pipe.process([ev("p2", 5, 1, True, 4)]))
    parts = {r[2].part_id: r[2].model_version for r in emitter.sent if r[0] == "parts"}
    assert parts == {"p1": "v1", "p2": "v2"}
    assert set(runner.versions) == {"v1", "v2"}
