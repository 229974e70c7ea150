"""The agent's batch logic (streams.inspection.agents.InspectPipeline) with fakes: no Kafka, no model."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from schemas.events import FrameEvent
from streams.inspection.cameras import CameraConfig, CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.pipeline import InspectPipeline
from streams.kafka.records import SourceRecord
from streams.settings import ModelSettings, PlantSettings, Settings

from ..fakes import FakeInspector, ListEmitter, MemoryStore, kinds

CODEC = FrameEvent.codec()


def png(x: int | None, fill: int = 100) -> bytes:
    img = np.full((64, 128), fill, np.uint8)
    if x is not None:
        img[20:30, max(0, x):max(0, x) + 10] = 250
    return cv2.imencode(".png", img)[1].tobytes()


def frame_value(cam="cam-1", part="p1", seq=0, idx=0, last=False, image=None, x=100) -> bytes:
    ev = FrameEvent(camera_id=cam, line_id="l1", part_id=part, frame_seq=seq, capture_ts=1_700_000_000_000 + seq * 100,
                    encoding="PNG", width=128, height=64, channels=1, image=image if image is not None else png(x),
                    frame_index=idx, last_frame=last, conveyor_speed_mm_s=100.0, pixels_per_mm=1.0)
    return CODEC.encode(ev.to_avro())


def event(value, key=b"cam-1", offset=0):
    return SourceRecord("frames", 0, offset, key, value)


def make(emitter=None, registry=None, **kw):
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    store = MemoryStore()
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=FakeInspector())
    pipe = InspectPipeline(settings, runner, registry if registry is not None else CameraRegistry(), store,
                           emitter if emitter is not None else ListEmitter(), **kw)
    return pipe, store


def test_batch_tracks_and_emits_on_last_frame():
    pipe, store = make()
    evs = [event(frame_value(seq=i, idx=i, last=i == 2, x=100 - 10 * i), offset=i) for i in range(3)]
    asyncio.run(pipe.process(evs))
    sent = pipe.emitter.sent
    assert kinds(sent) == [("defects", None), ("parts", "LAST_FRAME")]
    part = sent[-1].event
    assert part.frames == 3 and part.model_version == "fake-1" and part.defects_total == 1
    assert sent[0].event.frames_seen == 3
    assert store.data["cam-1"]["part"] is None and store.data["cam-1"]["last_seq"] == 2


def test_a_record_delivered_twice_in_one_batch_is_processed_once_and_not_dead_lettered():
    pipe, store = make()
    evs = [event(frame_value(seq=i, idx=i, last=i == 2, x=100 - 10 * i), offset=i) for i in range(3)]
    asyncio.run(pipe.process([evs[0], evs[1], evs[1], evs[2]]))  # offset 1 re-delivered by the consumer
    assert kinds(pipe.emitter.sent) == [("defects", None), ("parts", "LAST_FRAME")]
    assert pipe.emitter.sent[-1].event.frames == 3 and not pipe.deadletters and pipe.redelivered == 1
    assert store.data["cam-1"]["read_to"] == [0, 3]


def test_bad_input_goes_to_deadletter_and_the_rest_is_processed():
    pipe, _ = make()
    evs = [
        event(b"garbage", offset=0),
        event(frame_value(seq=1, image=b"\x89PNG broken"), offset=1),
        event(frame_value(seq=2, idx=0), offset=2),
        event(frame_value(seq=2, idx=0), offset=3),  # duplicate
        event(frame_value(seq=0, idx=1), offset=4),  # out of order
        event(frame_value(seq=3, idx=1, image=png(None, fill=255)), offset=5),  # model raises on it
        event(frame_value(seq=4, idx=2, last=True), offset=6),
    ]
    asyncio.run(pipe.process(evs))
    assert kinds(pipe.emitter.sent) == [
        ("deadletter", "decode_error"),
        ("deadletter", "duplicate_frame"),
        ("deadletter", "out_of_order_frame"),
        ("deadletter", "bad_image"),
        ("deadletter", "inference_error"),
        ("defects", None),
        ("parts", "LAST_FRAME"),
    ]
    assert pipe.deadletters == {"decode_error": 1, "duplicate_frame": 1, "out_of_order_frame": 1, "bad_image": 1,
                                "inference_error": 1}
    dl = pipe.emitter.sent[0].event
    assert dl.original == b"garbage" and dl.offset == 0 and dl.topic == "frames"


def test_failed_send_saves_no_state_so_the_batch_can_be_redelivered():
    pipe, store = make(emitter=ListEmitter(fail=True))
    evs = [event(frame_value(seq=0, idx=0, last=True), offset=0)]
    with pytest.raises(ConnectionError):
        asyncio.run(pipe.process(evs))
    assert store.saves == 0
    pipe.emitter = ListEmitter()
    asyncio.run(pipe.process(evs))  # redelivery: processed, not a duplicate
    assert kinds(pipe.emitter.sent)[-1] == ("parts", "LAST_FRAME")


def test_timeout_close_and_camera_config_from_next_part():
    reg = CameraRegistry()
    pipe, store = make(registry=reg)
    asyncio.run(pipe.process([event(frame_value(part="A", seq=0))]))
    reg.apply(b"cam-1", CameraConfig(line_id="line-7").to_json())
    asyncio.run(pipe.process([event(frame_value(part="A", seq=1, idx=1))]))
    assert asyncio.run(pipe.close_idle(event(None), "cam-1", "A", 0)) is None  # stale
    out = asyncio.run(pipe.close_idle(event(None), "cam-1", "A", 1))
    assert out.part.closed_reason == "TIMEOUT" and out.part.line_id == "l1"  # config applies from the next part
    asyncio.run(pipe.process([event(frame_value(part="B", seq=2, last=True))]))
    assert pipe.emitter.sent[-1].event.line_id == "line-7"


def test_the_pipeline_reads_its_injected_clock():
    now_s = 1_790_000_000.5
    pipe, store = make(clock=lambda: now_s)
    asyncio.run(pipe.process([event(b"garbage", offset=0), event(frame_value(part="A", seq=0), offset=1)]))
    assert pipe.now_ms() == 1_790_000_000_500
    assert pipe.emitter.sent[0].event.failed_at == 1_790_000_000_500  # the dead letter's stamp
    assert store.data["cam-1"]["part"]["touched_ms"] != 1_790_000_000_500  # idleness is timed on the monotonic clock


def test_the_parts_last_touched_stamp_is_the_injected_monotonic_clock():
    from streams.clock import FakeClock

    fc = FakeClock(wall=1_790_000_000.5, mono=42.25, epoch="test-epoch")
    pipe, store = make(clock=fc, monotonic=fc.monotonic, clock_epoch=fc.epoch)
    asyncio.run(pipe.process([event(frame_value(part="A", seq=0))]))
    part = store.data["cam-1"]["part"]
    assert (part["touched_ms"], part["touched_epoch"]) == (42_250, "test-epoch")  # what the part-timeout timer compares
    assert pipe.now_ms() == 1_790_000_000_500 and pipe.mono_ms() == 42_250


def test_metrics_count_frames_dead_letters_by_reason_parts_and_batch_latency():
    from streams.metrics import parse, total

    pipe, _ = make()
    evs = [
        event(b"garbage", offset=0),
        event(frame_value(seq=1, idx=0), offset=1),
        event(frame_value(seq=1, idx=0), offset=2),  # duplicate
        event(frame_value(seq=2, idx=1, last=True), offset=3),
    ]
    asyncio.run(pipe.process(evs))
    from prometheus_client import generate_latest

    samples = parse(generate_latest(pipe.metrics.registry).decode())
    assert total(samples, "defectstream_frames_total") == 4
    assert total(samples, "defectstream_deadletters_total", reason="decode_error") == 1
    assert total(samples, "defectstream_deadletters_total", reason="duplicate_frame") == 1
    assert total(samples, "defectstream_deadletters_total") == 2
    assert total(samples, "defectstream_parts_closed_total", reason="LAST_FRAME") == 1
    assert total(samples, "defectstream_batch_seconds_count", stage="batch") == 1
    assert total(samples, "defectstream_batch_seconds_count", stage="inference") == 1
    # a second pipeline has its own registry: nothing collides, nothing is shared
    other, _ = make()
    assert total(parse(generate_latest(other.metrics.registry).decode()), "defectstream_frames_total") == 0


def test_worker_gauges_lag_per_partition_and_open_parts():
    from streams.inspection.agents import update_worker_gauges
    from streams.metrics import parse, total

    pipe, store = make()
    asyncio.run(pipe.process([event(frame_value(part="A", seq=0), offset=4)]))  # part A stays open
    from faust.types import TP as TPx

    class Consumer:
        def assignment(self):
            return {TPx("frames", 0), TPx("frames", 1), TPx("other", 0)}

        def highwater(self, tp):
            return {0: 9, 1: None}[tp.partition]  # partition 1: no fetch yet, left out

        @property
        def _committed_offset(self):
            return {}

    table = SimpleNamespace(table=SimpleNamespace(items=lambda: list(store.data.items()) + [(b"cam-2", {"part": None})]))
    update_worker_gauges(pipe, Consumer(), table)
    from prometheus_client import generate_latest

    samples = parse(generate_latest(pipe.metrics.registry).decode())
    assert total(samples, "defectstream_consumer_lag", topic="frames", partition="0") == 4  # 9 - (4 + 1)
    assert total(samples, "defectstream_consumer_lag", partition="1") is None
    assert total(samples, "defectstream_open_parts") == 1


class VotingInspector(FakeInspector):
    """FakeInspector with a sequence vote that calls every track 'crack' and records what it was given."""

    def __init__(self) -> None:
        super().__init__(crack_width=1000)  # its frame-level class is always 'scratch'
        self.votes: list[tuple[dict, dict]] = []

    def vote_track(self, frames, boxes):
        self.votes.append((dict(frames), dict(boxes)))
        return {"scratch": 0.1, "crack": 0.9}


def test_a_model_with_a_sequence_vote_classes_the_track_from_the_frames_it_was_seen_on():
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    insp = VotingInspector()
    pipe = InspectPipeline(settings, InferenceRunner(ModelSettings(device="cpu"), inspector=insp), CameraRegistry(),
                           MemoryStore(), ListEmitter())
    evs = [event(frame_value(seq=i, idx=i, last=i == 2, x=100 - 10 * i), offset=i) for i in range(3)]
    asyncio.run(pipe.process(evs[:2]))  # two batches: the frames are held across them
    assert pipe.vote_frames.held_frames() == 2
    asyncio.run(pipe.process(evs[2:]))
    defect = pipe.emitter.sent[0].event
    assert defect.defect_class == "crack" and defect.confidence == pytest.approx(0.9)
    assert defect.class_votes == {"scratch": 0.1, "crack": 0.9}
    probe, (frames, boxes) = insp.votes  # has_sequence_vote's probe first, then the track
    assert probe[0][0].shape == (16, 16)
    assert sorted(frames) == sorted(boxes) == [0, 1, 2]
    assert all(f.shape == (64, 128) and f[25, 100 - 10 * i + 5] == 250 for i, f in frames.items())
    assert pipe.vote_frames.held_frames() == 0  # the part closed: nothing kept


def test_a_timeout_close_votes_too_and_a_vote_that_fails_keeps_the_trackers_class():
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    insp = VotingInspector()
    pipe = InspectPipeline(settings, InferenceRunner(ModelSettings(device="cpu"), inspector=insp), CameraRegistry(),
                           MemoryStore(), ListEmitter())
    asyncio.run(pipe.process([event(frame_value(part="A", seq=i, idx=i, x=100 - 10 * i), offset=i)
                              for i in range(2)]))
    out = asyncio.run(pipe.close_idle(event(None), "cam-1", "A", 1))
    assert out.part.closed_reason == "TIMEOUT" and out.defects[0].defect_class == "crack"

    def broken(frames, boxes):
        if frames and len(frames[next(iter(frames))]) > 16:  # the probe's 16x16 frame passes
            raise RuntimeError("voter unwell")
        return {"crack": 1.0}

    insp.vote_track = broken
    asyncio.run(pipe.process([event(frame_value(part="B", seq=10 + i, idx=i, last=i == 1, x=100 - 10 * i),
                                    offset=10 + i) for i in range(2)]))
    assert pipe.emitter.sent[-2].event.defect_class == "scratch"  # the tracker's own vote
    assert pipe.emitter.sent[-1].event.closed_reason == "LAST_FRAME"
