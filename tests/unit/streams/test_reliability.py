"""Worker-side reliability (issue 12: findings 1, 2, 3, 4, 5, 8, 9) with fakes: no Kafka, no model."""
from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from schemas.events import DeadLetter, FrameEvent, PartInspected
from streams.inspection.agents import handle_timeout_requests, partition_caught_up
from streams.inspection.cameras import CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.intake import IntakeLimits, Rejected, dead_letter, decode_frame, expected_partition
from streams.inspection.pipeline import InspectPipeline, ModelUnavailable, is_model_failure
from streams.kafka.records import SourceRecord
from streams.settings import ModelSettings, PlantSettings, Settings, TrackingSettings, WorkerSettings
from streams.tracking.table import idle_parts
from streams.tracking.tracker import CameraState, PartTracker
from streams.tracking.types import FrameMeta

from ..fakes import FakeInspector, ListEmitter, MemoryStore, kinds

CODEC = FrameEvent.codec()
NOW = 1_790_000_000_000  # worker clock of these tests (2026-09-21)


def png(x: int | None = 100, fill: int = 100) -> bytes:
    img = np.full((64, 128), fill, np.uint8)
    if x is not None:
        img[20:30, max(0, x):max(0, x) + 10] = 250
    return cv2.imencode(".png", img)[1].tobytes()


def frame(cam="cam-1", part="p1", seq=0, idx=0, last=False, image=None, ts=None, **kw) -> FrameEvent:
    return FrameEvent(camera_id=cam, line_id="l1", part_id=part, frame_seq=seq,
                      capture_ts=ts if ts is not None else NOW - 60_000 + seq * 100, encoding="PNG", width=128,
                      height=64, channels=1, image=image if image is not None else png(100 - 10 * idx),
                      frame_index=idx, last_frame=last, **kw)


def value(ev: FrameEvent) -> bytes:
    return CODEC.encode(ev.to_avro())


def event(val, key=b"cam-1", offset=0, partition=0, topic="frames"):
    return SourceRecord(topic, partition, offset, key, val)


def make(inspector=None, emitter=None, **worker):
    worker = {"inference_backoff_s": 0.01, "inference_backoff_max_s": 0.02, **worker}
    settings = Settings(plant=PlantSettings(timezone="UTC"), worker=WorkerSettings(**worker))
    store = MemoryStore()
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=inspector or FakeInspector())
    pipe = InspectPipeline(settings, runner, CameraRegistry(), store, emitter if emitter is not None else ListEmitter(),
                           clock=lambda: NOW / 1000)
    return pipe, store


# ----------------------------------------------------------------------- #2 absurd capture_ts


@pytest.mark.parametrize("ts, hint", [
    (-5000, "negative"),
    (1_790_000_000, "seconds"),
    (1_790_000_000_000_000, "microseconds"),
    (1_790_000_000_000_000_000, "microseconds or nanoseconds"),
    (NOW + 3 * 86_400_000, "ahead"),
    (NOW - 20 * 365 * 86_400_000, "days old"),
])
def test_absurd_capture_ts_is_rejected_at_intake(ts, hint):
    got = decode_frame(value(frame(ts=ts)), b"cam-1", CODEC, IntakeLimits(), now_ms=NOW)
    assert isinstance(got, Rejected) and got.error_class == "bad_timestamp" and hint in got.reason, got


def test_capture_ts_window_is_configurable():
    limits = IntakeLimits.from_settings(WorkerSettings(capture_ts_max_future_s=10, capture_ts_max_age_days=1))
    ok = decode_frame(value(frame(ts=NOW + 5_000)), b"cam-1", CODEC, limits, now_ms=NOW)
    assert isinstance(ok, FrameEvent)
    ahead = decode_frame(value(frame(ts=NOW + 20_000)), b"cam-1", CODEC, limits, now_ms=NOW)
    old = decode_frame(value(frame(ts=NOW - 2 * 86_400_000)), b"cam-1", CODEC, limits, now_ms=NOW)
    assert ahead.error_class == old.error_class == "bad_timestamp"


def test_microsecond_frame_is_dead_lettered_and_the_parts_around_it_close():
    pipe, store = make()
    evs = [event(value(frame(seq=0, idx=0)), offset=0),
           event(value(frame(seq=1, idx=1, ts=1_790_000_000_000_000)), offset=1),
           event(value(frame(seq=2, idx=1, last=True)), offset=2)]
    asyncio.run(pipe.process(evs))
    assert kinds(pipe.emitter.sent) == [("deadletter", "bad_timestamp"), ("defects", None), ("parts", "LAST_FRAME")]
    assert pipe.emitter.sent[-1].event.frames == 2


def test_part_close_survives_any_calendar_error(tracking_settings):
    """A state saved before intake validated capture_ts (microseconds) must not crash the close."""
    tracker = PartTracker(tracking_settings)
    state = CameraState("cam-1")
    for i, ts in enumerate((1_790_000_000_000_000, 1_790_000_000_000_100)):
        meta = FrameMeta("cam-1", "l1", "p1", i, ts, 128, 64, frame_index=i)
        assert state.admit(meta) is None
        state.observe(tracker, meta, [], model_version="m", run_id="r", plant=PlantSettings(timezone="UTC"))
    out = state.close_if_idle(tracker, "p1", 1, run_id="r", plant=PlantSettings(timezone="UTC"))
    assert out is not None and out.part.shift_name == "unscheduled" and out.part.shift_start >= 0
    PartInspected.codec().encode(out.part.to_avro())  # still a valid event


# ----------------------------------------------------------------------- #3 dead letters sized


def test_dead_letter_of_a_large_frame_keeps_a_pointer_not_the_bytes():
    big = np.random.default_rng(0).integers(0, 256, 2 * 1024 * 1024, dtype=np.uint8).tobytes()
    dl = dead_letter(Rejected("bad_image", "corrupt"), topic="frames", partition=3, offset=77, value=big, key=b"c",
                     max_original_bytes=256 * 1024)
    assert dl.original == b"" and not dl.original_kept
    assert dl.original_size == len(big) and dl.original_sha256 == hashlib.sha256(big).hexdigest()
    assert (dl.topic, dl.partition, dl.offset) == ("frames", 3, 77)
    assert len(DeadLetter.codec().encode(dl.to_avro())) < 4096
    small = dead_letter(Rejected("decode_error", "x"), topic="frames", partition=0, offset=1, value=b"junk", key=None)
    assert small.original == b"junk" and small.original_kept and small.original_size == 4


def test_pipeline_dead_letters_a_2mb_corrupt_frame_within_the_producer_limit():
    emitter = ListEmitter(max_record_bytes=1_000_000)
    pipe, _ = make(emitter=emitter)
    corrupt = b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024)
    asyncio.run(pipe.process([event(value(frame(seq=0, image=corrupt)), offset=0),
                              event(value(frame(seq=1, idx=0, last=True)), offset=1)]))
    assert kinds(emitter.sent) == [("deadletter", "bad_image"), ("defects", None), ("parts", "LAST_FRAME")]
    assert emitter.sent[0].event.original_size > 2 * 1024 * 1024


def test_deadletter_limit_must_fit_the_producer_request():
    with pytest.raises(ValueError, match="does not fit"):
        WorkerSettings(deadletter_original_max_bytes=2_000_000, producer_max_request_bytes=1_048_576)


def test_old_dead_letters_and_verdicts_stay_readable():
    from schemas.codec import AvroCodec

    old = AvroCodec("DeadLetter.v1").encode({"schema_version": 1, "topic": "frames", "partition": 0, "offset": 5,
                                             "key": None, "original": b"x", "reason": "r", "error_class": "c",
                                             "camera_id": None, "failed_at": NOW})
    got = DeadLetter.from_avro(DeadLetter.codec().decode(old))
    assert got.original == b"x" and got.original_kept and got.original_size is None
    rec = PartInspected(event_id="e", camera_id="c", line_id="l", part_id="p", verdict="PASS", defects_total=0,
                        frames=1, first_frame_ts=NOW, last_frame_ts=NOW, closed_reason="TIMEOUT", model_version="m",
                        run_id="r", shift_name="s", shift_start=NOW).to_avro()
    rec["schema_version"] = 1
    old_part = AvroCodec("PartInspected.v1").encode(rec)
    assert PartInspected.codec().decode(old_part)["closed_reason"] == "TIMEOUT"


# ----------------------------------------------------------------------- #4 keys and partitions


def test_keyless_frame_is_rejected():
    got = decode_frame(value(frame()), None, CODEC, IntakeLimits(), now_ms=NOW)
    assert isinstance(got, Rejected) and got.error_class == "missing_key"
    assert decode_frame(value(frame()), b"", CODEC, IntakeLimits(), now_ms=NOW).error_class == "missing_key"


def test_frame_on_another_partition_than_its_key_is_rejected():
    limits = IntakeLimits(partitions=4)
    home = expected_partition(b"cam-1", 4)
    assert home == 3  # Kafka's default partitioner (murmur2), as Faust and the Java client place the key
    ok = decode_frame(value(frame()), b"cam-1", CODEC, limits, partition=home, now_ms=NOW)
    assert isinstance(ok, FrameEvent)
    bad = decode_frame(value(frame()), b"cam-1", CODEC, limits, partition=(home + 1) % 4, now_ms=NOW)
    assert bad.error_class == "wrong_partition" and f"partition {home} of 4" in bad.reason


def test_pipeline_keeps_a_camera_on_its_partition():
    pipe, store = make()
    pipe.enforce_partitions(4)
    home = pipe.camera_partition("cam-1")
    asyncio.run(pipe.process([event(value(frame(seq=0)), partition=(home + 1) % 4, offset=0),
                              event(value(frame(seq=1)), key=None, partition=home, offset=0),
                              event(value(frame(seq=2)), partition=home, offset=1)]))
    assert kinds(pipe.emitter.sent) == [("deadletter", "wrong_partition"), ("deadletter", "missing_key")]
    assert store.data["cam-1"]["part"]["seqs"] == [2]


# ----------------------------------------------------------------------- #5 model failures


def test_temporary_model_failure_is_retried_not_dead_lettered():
    insp = FakeInspector(fail_next=3)  # CUDA OOM on the batch and on two retries
    pipe, _ = make(inspector=insp)
    asyncio.run(pipe.process([event(value(frame(seq=0, idx=0, last=True)), offset=0)]))
    assert kinds(pipe.emitter.sent) == [("defects", None), ("parts", "LAST_FRAME")]
    assert not pipe.deadletters


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory"), KeyError("model-v7"),
                                   RuntimeError("something in the model broke")])
def test_persistent_model_failure_stops_the_worker_and_dead_letters_nothing(error):
    insp = FakeInspector(fail_next=10_000, error=error)
    pipe, store = make(inspector=insp, inference_retries=2)
    with pytest.raises(ModelUnavailable):
        asyncio.run(pipe.process([event(value(frame(seq=0)), offset=0), event(value(frame(seq=1)), offset=1)]))
    assert pipe.emitter.sent == [] and store.data == {}  # nothing acked-worthy: the batch is re-delivered
    assert insp.calls >= 3


def test_input_the_model_can_never_process_is_dead_lettered():
    pipe, _ = make()
    asyncio.run(pipe.process([event(value(frame(seq=0, image=png(None, fill=255))), offset=0),
                              event(value(frame(seq=1, idx=0, last=True)), offset=1)]))
    assert kinds(pipe.emitter.sent) == [("deadletter", "inference_error"), ("defects", None), ("parts", "LAST_FRAME")]


def test_model_failure_classes():
    assert is_model_failure(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert is_model_failure(MemoryError())
    # judged by the probe instead: an evicted version fails it (test above), a poisonous frame does not
    assert not is_model_failure(KeyError("v2"))
    assert not is_model_failure(ValueError("operands could not be broadcast"))


# ----------------------------------------------------------------------- #8 timeout close acked only when done


class TimeoutStream:
    def __init__(self, events):
        self.events = events

    async def __aiter__(self):
        for e in self.events:
            yield e


def _open_part(store, pipe):
    asyncio.run(pipe.process([event(value(frame(seq=0, idx=0)), offset=0)]))
    # a Faust event of the part-timeouts topic: deserialized key and value, and the raw message
    return SimpleNamespace(key=b"cam-1", value={"part_id": "p1", "last_seq": 0},
                           message=SimpleNamespace(topic="part-timeouts", partition=0, offset=0, key=b"cam-1",
                                                   value=b'{"part_id": "p1", "last_seq": 0}', timestamp=NOW / 1000))


def test_failed_timeout_close_is_not_acked_and_stops_the_worker():
    pipe, store = make()
    req = _open_part(store, pipe)
    pipe.emitter.fail = True
    acked, crashed = [], []

    async def ack(e):
        acked.append(e)

    async def crash(exc):
        crashed.append(exc)

    asyncio.run(handle_timeout_requests(pipe, TimeoutStream([req, req]).__aiter__(), ack, crash))
    assert acked == [] and len(crashed) == 1 and isinstance(crashed[0], ConnectionError)
    assert store.data["cam-1"]["part"]["part_id"] == "p1"  # still open: the re-delivered request closes it
    pipe.emitter.fail = False
    asyncio.run(handle_timeout_requests(pipe, TimeoutStream([req]).__aiter__(), ack, crash))
    assert acked == [req] and kinds(pipe.emitter.sent)[-1] == ("parts", "TIMEOUT")


# ----------------------------------------------------------------------- #9 frames per part capped


def test_camera_stuck_on_one_part_is_closed_at_the_frame_cap():
    pipe, store = make()
    pipe.tracker = PartTracker(TrackingSettings(max_frames_per_part=3))
    asyncio.run(pipe.process([event(value(frame(seq=i, idx=i)), offset=i) for i in range(5)]))
    assert sorted(kinds(pipe.emitter.sent), key=str) == [("deadletter", "part_frame_limit"),
                                                         ("deadletter", "part_frame_limit"),
                                                         ("defects", None), ("parts", "MAX_FRAMES")]
    part = next(r.event for r in pipe.emitter.sent if r.kind == "parts")
    assert part.frames == 3
    PartInspected.codec().encode(part.to_avro())
    assert store.data["cam-1"]["part"] is None
    asyncio.run(pipe.process([event(value(frame(part="p2", seq=5, idx=0, last=True)), offset=5)]))
    assert kinds(pipe.emitter.sent)[-1] == ("parts", "LAST_FRAME")


# ----------------------------------------------------------------------- #1 idleness judged on the stream


def _table_with_open_part(touched_ms):
    st = CameraState("cam-1")
    meta = FrameMeta("cam-1", "l1", "p1", 0, NOW, 128, 64)
    st.admit(meta)
    st.observe(PartTracker(TrackingSettings()), meta, [], model_version="m", run_id="r",
               plant=PlantSettings(timezone="UTC"), now_ms=touched_ms)
    return [(b"cam-1", st.to_dict())]


def test_part_with_a_backlog_on_its_partition_never_times_out():
    items = _table_with_open_part(touched_ms=NOW - 3_600_000)  # last frame processed an hour ago (a restart)
    assert idle_parts(items, NOW, 30.0, caught_up=lambda cam: False) == []
    assert [p.part_id for p in idle_parts(items, NOW, 30.0, caught_up=lambda cam: True)] == ["p1"]
    assert idle_parts(_table_with_open_part(NOW - 5_000), NOW, 30.0, caught_up=lambda cam: True) == []


def test_a_broker_outage_never_counts_as_the_cameras_silence():
    """The part's last frame came 60 s ago, but the broker was back only 10 s ago (cameras could not
    publish meanwhile): not idle until 30 s after the broker answered again."""
    items = _table_with_open_part(touched_ms=NOW - 60_000)
    up = lambda cam: True  # noqa: E731
    assert idle_parts(items, NOW, 30.0, up, observed_since=lambda cam: None) == []  # broker not answering now
    assert idle_parts(items, NOW, 30.0, up, observed_since=lambda cam: NOW - 10_000) == []
    assert [p.part_id for p in idle_parts(items, NOW, 30.0, up, observed_since=lambda cam: NOW - 30_000)] == ["p1"]


def test_broker_watch_counts_from_the_first_answer_after_an_outage():
    from types import SimpleNamespace

    from streams.inspection.agents import BrokerWatch, probe_frames_partitions

    class Consumer:
        down = False

        def assignment(self):
            return [SimpleNamespace(topic="frames", partition=0), SimpleNamespace(topic="frames", partition=1),
                    SimpleNamespace(topic="parts", partition=0)]

        async def highwaters(self, *tps):
            if self.down:
                raise ConnectionError("broker down")
            return [(tp, 10) for tp in tps]

    pipeline, watch, consumer = SimpleNamespace(frames_topic="frames"), BrokerWatch(), Consumer()
    assert asyncio.run(probe_frames_partitions(consumer, pipeline, watch, 1_000, timeout_s=1))
    assert watch.since == {0: 1_000, 1: 1_000}
    assert asyncio.run(probe_frames_partitions(consumer, pipeline, watch, 2_000, timeout_s=1))
    assert watch.since == {0: 1_000, 1: 1_000}  # continuous: the count goes on
    consumer.down = True
    assert not asyncio.run(probe_frames_partitions(consumer, pipeline, watch, 3_000, timeout_s=1))
    assert watch.since == {}
    consumer.down = False
    assert asyncio.run(probe_frames_partitions(consumer, pipeline, watch, 9_000, timeout_s=1))
    assert watch.since == {0: 9_000, 1: 9_000}  # counted again from the first answer
    watch.answered([1], 9_500)  # partition 0 revoked in a rebalance
    assert watch.since == {1: 9_000}


class FakeConsumer:
    def __init__(self, hw, committed=None):
        from faust.types import TP

        self.hw = hw
        self._committed_offset = {TP("frames", 1): committed} if committed is not None else {}

    def highwater(self, tp):
        return self.hw


def test_partition_is_caught_up_only_when_every_frame_up_to_the_high_watermark_is_processed():
    pipe, _ = make()
    assert not partition_caught_up(FakeConsumer(hw=None), pipe, 1)  # nothing fetched since assignment
    assert not partition_caught_up(FakeConsumer(hw=50, committed=40), pipe, 1)  # backlog of 10
    assert partition_caught_up(FakeConsumer(hw=50, committed=50), pipe, 1)
    pipe.processed_next[1] = 45
    assert not partition_caught_up(FakeConsumer(hw=50, committed=40), pipe, 1)
    pipe.processed_next[1] = 50
    assert partition_caught_up(FakeConsumer(hw=50, committed=40), pipe, 1)


# ----------------------------------------------------------------------- issue 17 #8: idleness on a monotonic clock


def test_a_wall_clock_step_neither_cuts_a_part_short_nor_holds_it_open():
    """NTP (or an operator) steps the worker's wall clock an hour forward, then back: the part's
    idleness is measured on the monotonic clock, so it times out exactly `part_timeout_s` after
    its last frame, not at once (forward step) and not an hour late (backward step)."""
    from streams.clock import FakeClock

    fc = FakeClock(wall=NOW / 1000, mono=5_000.0, epoch="this-process")
    settings = Settings(plant=PlantSettings(timezone="UTC"))
    runner = InferenceRunner(ModelSettings(device="cpu"), inspector=FakeInspector())
    store = MemoryStore()
    pipe = InspectPipeline(settings, runner, CameraRegistry(), store, ListEmitter(),
                           clock=fc, monotonic=fc.monotonic, clock_epoch=fc.epoch)
    asyncio.run(pipe.process([event(value(frame(part="p1", seq=0)), offset=0)]))
    watched_since = pipe.mono_ms() - 600_000  # the broker has answered for ten minutes

    def idle():
        return [p.part_id for p in idle_parts(store.data.items(), pipe.mono_ms(), 30.0, lambda cam: True,
                                              lambda cam: watched_since, epoch=pipe.clock_epoch)]

    fc.step(3_600)  # wall clock one hour ahead
    fc.advance(5)
    assert idle() == []  # 5 s of silence, not 3605 s
    fc.step(-7_200)  # and one hour behind where it started
    fc.advance(26)
    assert idle() == ["p1"]  # 31 s of silence: timed out on time


def test_a_part_stamped_on_another_process_clock_waits_for_this_process_to_watch():
    """A restored part's stamp comes from a predecessor's monotonic clock (here far ahead of ours):
    it is not compared; the part is idle once this process has watched its partition for the
    timeout (`observed_since`) with no frame of it."""
    foreign = _table_with_open_part(touched_ms=NOW + 10**9)
    foreign[0][1]["part"]["touched_epoch"] = "predecessor"
    up = lambda cam: True  # noqa: E731
    assert idle_parts(foreign, NOW, 30.0, up, observed_since=lambda cam: NOW - 10_000, epoch="this-process") == []
    assert [p.part_id for p in idle_parts(foreign, NOW, 30.0, up, observed_since=lambda cam: NOW - 30_000,
                                          epoch="this-process")] == ["p1"]
