"""Property-based fuzzing of the decode + intake path (issue 12, bad input): no Kafka, no model.

Malformed `frames` messages — undecodable bytes, truncated Avro, other schemas, corrupt / empty /
oversized / wrong-channel / wrong-size images, absurd timestamps, missing or wrong keys, frames on
the wrong partition, non-finite numbers, byte mutations of valid frames — and batches that mix
them with valid frames, duplicates and out-of-order frames go through `InspectPipeline.process`
with the fake Inspector. Properties: no exception escapes; every message that is bad becomes
exactly one dead letter with an error class and a reason; valid frames are never dead-lettered;
every dead letter fits the producer's request limit.

Volume (derandomized, so the same every run): 6 000 single malformed messages + 1 500 batches of
4–12 messages (about 12 000 messages, about 8 400 of them malformed, mutated, duplicate or out of
order) — about 14 000 bad messages in all; about 30 s on one core.
"""
from __future__ import annotations

import asyncio
import math
import struct
import time

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import DeadLetter, DefectEvent, FrameEvent
from streams.inspection.cameras import CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.intake import expected_partition
from streams.inspection.pipeline import InspectPipeline
from streams.kafka.records import SourceRecord
from streams.settings import ModelSettings, PlantSettings, Settings, WorkerSettings

from ..fakes import FakeInspector, ListEmitter, MemoryStore

CODEC = FrameEvent.codec()
PARTITIONS = 4
MAX_IMAGE = 20_000
MAX_ORIGINAL = 2048
DL_LIMIT = MAX_ORIGINAL + 16_384  # what the settings validator reserves per dead letter
NOW_SAFE_TS = 1_780_000_000_000  # 2026-05-28: inside the window of any clock from 2026 to 2035
FUZZ = settings(max_examples=6000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
FUZZ_BATCHES = settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

_GOOD_PNG = cv2.imencode(".png", np.full((16, 32), 100, np.uint8))[1].tobytes()
_GOOD_PNG3 = cv2.imencode(".png", np.full((16, 32, 3), 100, np.uint8))[1].tobytes()


_SETTINGS = Settings(plant=PlantSettings(timezone="UTC"),
                     worker=WorkerSettings(max_image_bytes=MAX_IMAGE, max_pixels=4096 * 64,
                                           deadletter_original_max_bytes=MAX_ORIGINAL))
_RUNNER = InferenceRunner(ModelSettings(device="cpu"), inspector=FakeInspector("fuzz-1", detects=False))


def pipeline() -> InspectPipeline:
    pipe = InspectPipeline(_SETTINGS, _RUNNER, CameraRegistry(), MemoryStore(), ListEmitter())
    pipe.enforce_partitions(PARTITIONS)
    return pipe


def home(cam: str) -> int:
    return expected_partition(cam.encode(), PARTITIONS)


def fields(cam="cam-f", part="p-1", seq=1000, **kw) -> dict:
    base = dict(camera_id=cam, line_id="l1", part_id=part, frame_seq=seq, capture_ts=NOW_SAFE_TS + seq,
                encoding="PNG", width=32, height=16, channels=1, image=_GOOD_PNG, frame_index=0, last_frame=False)
    base.update(kw)
    return base


def encode(**kw) -> bytes:
    return CODEC.encode(FrameEvent(**fields(**kw)).to_avro())


# A malformed message: (value, key, partition or None for its camera's, error classes it may get).
Bad = tuple[bytes | None, bytes | None, int | None, frozenset[str]]
DECODE = frozenset({"decode_error", "unknown_schema"})

absurd_ts = st.one_of(
    st.integers(-(2**63), 946_684_799_999),  # negative, seconds, before 2000
    st.integers(1_000_000_000_000_000, 2**63 - 1),  # micro- and nanoseconds, far future
    st.integers(int(time.time() * 1000) + 2 * 86_400_000, 10**14),  # days to millennia ahead of the clock
)


@st.composite
def bad_message(draw) -> Bad:
    kind = draw(st.sampled_from([
        "bytes", "truncated", "other_schema", "fingerprint", "corrupt_image", "empty_image", "oversized_image",
        "channels", "header_size", "raw_size", "timestamp", "no_key", "wrong_key", "wrong_partition",
        "empty_ids", "negative_seq", "non_finite", "huge_dims",
    ]))
    seq = draw(st.integers(1000, 10**9))
    if kind == "bytes":
        return draw(st.binary(max_size=300)), b"cam-f", None, DECODE
    if kind == "truncated":
        v = encode(seq=seq)
        return v[:draw(st.integers(0, len(v) - 1))], b"cam-f", None, DECODE
    if kind == "other_schema":
        d = DefectEvent(event_id="e", camera_id="cam-f", line_id="l", part_id="p", track_id=1, defect_class="c",
                        severity=1.0, severity_max=1.0, confidence=0.5, bbox={"x0": 0, "y0": 0, "x1": 1, "y1": 1},
                        best_frame_seq=1, area_px=1, frames_seen=1, frames_total=1, first_frame_ts=1,
                        last_frame_ts=1, model_version="m", run_id="r")
        other = draw(st.sampled_from([DefectEvent, DeadLetter]))
        if other is DeadLetter:
            d = DeadLetter(topic="t", partition=0, offset=0, original=b"", reason="r", error_class="c", failed_at=1)
        return other.codec().encode(d.to_avro()), b"cam-f", None, frozenset({"unknown_schema"})
    if kind == "fingerprint":
        v = encode(seq=seq)
        fp = draw(st.integers(0, 2**64 - 1))
        return v[:2] + struct.pack("<Q", fp) + v[10:], b"cam-f", None, DECODE
    if kind == "corrupt_image":
        magic = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b""]))
        img = magic + draw(st.binary(min_size=0, max_size=400))
        return encode(seq=seq, image=img, encoding=draw(st.sampled_from(["PNG", "JPEG"]))), b"cam-f", None, \
            frozenset({"bad_image"})
    if kind == "empty_image":
        return encode(seq=seq, image=b"", encoding=draw(st.sampled_from(["PNG", "JPEG", "RAW"]))), b"cam-f", None, \
            frozenset({"bad_image"})
    if kind == "oversized_image":
        n = draw(st.integers(MAX_IMAGE + 1, 3 * MAX_IMAGE))
        return encode(seq=seq, image=b"\x89PNG" + bytes(n)), b"cam-f", None, frozenset({"oversized_image"})
    if kind == "channels":
        ch = draw(st.integers(-(2**31), 2**31 - 1).filter(lambda c: c not in (1, 3)))
        return encode(seq=seq, channels=ch), b"cam-f", None, frozenset({"bad_image"})
    if kind == "header_size":
        w = draw(st.integers(1, 64).filter(lambda w: w != 32))
        h = draw(st.integers(1, 64))
        img = draw(st.sampled_from([_GOOD_PNG, _GOOD_PNG3]))
        return encode(seq=seq, width=w, height=h, image=img, channels=draw(st.sampled_from([1, 3]))), b"cam-f", \
            None, frozenset({"bad_image"})
    if kind == "raw_size":
        n = draw(st.integers(0, 2000).filter(lambda n: n != 32 * 16))
        return encode(seq=seq, encoding="RAW", image=bytes(n)), b"cam-f", None, frozenset({"bad_image"})
    if kind == "timestamp":
        return encode(seq=seq, capture_ts=draw(absurd_ts)), b"cam-f", None, frozenset({"bad_timestamp"})
    if kind == "no_key":
        return encode(seq=seq), draw(st.sampled_from([None, b""])), home("cam-f"), frozenset({"missing_key"})
    if kind == "wrong_key":
        key = draw(st.binary(min_size=1, max_size=20).filter(lambda k: k != b"cam-f"))
        return encode(seq=seq), key, home("cam-f"), frozenset({"key_mismatch"})
    if kind == "wrong_partition":
        p = draw(st.integers(0, PARTITIONS - 1).filter(lambda p: p != home("cam-f")))
        return encode(seq=seq), b"cam-f", p, frozenset({"wrong_partition"})
    if kind == "empty_ids":
        which = draw(st.sampled_from(["camera_id", "part_id"]))
        key = b"cam-f" if which == "part_id" else draw(st.sampled_from([b"cam-f", None]))
        return encode(seq=seq, **{which: ""}), key, home("cam-f"), frozenset({"invalid_frame"})
    if kind == "negative_seq":
        return encode(seq=draw(st.integers(-(2**63), -1))), b"cam-f", None, frozenset({"invalid_frame"})
    if kind == "non_finite":
        name = draw(st.sampled_from(["conveyor_speed_mm_s", "pixels_per_mm", "exposure_us"]))
        return encode(seq=seq, **{name: draw(st.sampled_from([math.nan, math.inf, -math.inf]))}), b"cam-f", \
            None, frozenset({"invalid_frame"})
    # huge_dims: header claims more pixels than allowed
    w = draw(st.integers(4097, 2**31 - 1))
    return encode(seq=seq, width=w, height=draw(st.integers(64, 2**31 - 1))), b"cam-f", None, \
        frozenset({"oversized_image"})


def message(value, key, partition, offset):
    return SourceRecord("frames", partition, offset, key, value)


def check_dead_letter(dl: DeadLetter, value: bytes | None) -> None:
    assert dl.error_class and dl.reason
    assert len(DeadLetter.codec().encode(dl.to_avro())) <= DL_LIMIT
    assert dl.original_size == len(value or b"")
    assert dl.original == (value or b"") if dl.original_kept else dl.original == b""


@FUZZ
@given(bad_message())
def test_every_malformed_message_becomes_one_dead_letter(bad: Bad):
    value, key, partition, classes = bad
    pipe = pipeline()
    p = home("cam-f") if partition is None else partition
    asyncio.run(pipe.process([message(value, key, p, 7)]))  # must not raise
    sent = pipe.emitter.sent
    assert len(sent) == 1 and sent[0].kind == "deadletter", sent
    dl = sent[0].event
    assert dl.error_class in classes, (dl.error_class, dl.reason)
    assert dl.offset == 7 and dl.partition == p
    check_dead_letter(dl, value)


@st.composite
def mixed_batch(draw):
    """Valid frames of cam-f interleaved with malformed ones, duplicates and out-of-order frames.

    Returns [(value, key, partition, expected classes or None for a valid frame, or 'any')]."""
    n = draw(st.integers(4, 12))
    out = []
    valid: list[bytes] = []
    seq = 1000
    part = 1
    for i in range(n):
        kind = "valid" if i == 0 else draw(st.sampled_from(["valid", "bad", "duplicate", "out_of_order", "mutated"]))
        if kind == "valid" or (kind == "duplicate" and not valid):
            seq += 1
            if draw(st.booleans()) and draw(st.booleans()):
                part += 1  # the next part starts (NEXT_PART)
            v = encode(seq=seq, part=f"p-{part}", frame_index=i)
            valid.append(v)
            out.append((v, b"cam-f", home("cam-f"), None))
        elif kind == "bad":
            value, key, partition, classes = draw(bad_message())
            if "bad_image" in classes or "oversized_image" in classes:
                seq += 1  # admitted by the sequence guard before the image is looked at: keep seqs unique
                value = _with_seq(value, seq)
            out.append((value, key, home("cam-f") if partition is None else partition, classes))
        elif kind == "duplicate":
            out.append((draw(st.sampled_from(valid)), b"cam-f", home("cam-f"), frozenset({"duplicate_frame"})))
        elif kind == "out_of_order":
            out.append((encode(seq=draw(st.integers(0, 999)), part=f"p-{part}"), b"cam-f", home("cam-f"),
                        frozenset({"out_of_order_frame"})))
        else:  # a valid frame with bytes flipped: anything may come of it, except an exception (another
            # camera, so that a flip that makes a valid frame of another part does not close cam-f's part)
            seq += 1
            v = bytearray(encode(cam="cam-m", seq=seq, part=f"p-{part}"))
            for _ in range(draw(st.integers(1, 4))):
                v[draw(st.integers(0, len(v) - 1))] = draw(st.integers(0, 255))
            out.append((bytes(v), b"cam-m", home("cam-m"), "any"))
    return out


def _with_seq(value: bytes | None, seq: int) -> bytes | None:
    try:
        rec = CODEC.decode(value)
    except Exception:  # noqa: BLE001 - not a decodable frame: no seq to set
        return value
    rec["frame_seq"] = seq
    rec["capture_ts"] = NOW_SAFE_TS + seq
    return CODEC.encode(rec)


@FUZZ_BATCHES
@given(mixed_batch())
def test_mixed_batches_dead_letter_exactly_the_bad_frames(batch):
    pipe = pipeline()
    events = [message(v, k, p, off) for off, (v, k, p, _c) in enumerate(batch)]
    asyncio.run(pipe.process(events))  # must not raise
    dead = {(r.event.partition, r.event.offset): r.event for r in pipe.emitter.sent if r.kind == "deadletter"}
    assert len(dead) == sum(1 for r in pipe.emitter.sent if r.kind == "deadletter")  # one per message
    for off, (value, _key, p, classes) in enumerate(batch):
        dl = dead.get((p, off))
        if classes is None:
            assert dl is None, (off, dl.error_class, dl.reason)
        elif classes == "any":
            if dl is not None:
                check_dead_letter(dl, value)
        else:
            assert dl is not None and dl.error_class in classes, (off, classes, dl and (dl.error_class, dl.reason))
            check_dead_letter(dl, value)
    for r in pipe.emitter.sent:  # whatever was emitted is a valid event of its schema
        type(r.event).codec().encode(r.event.to_avro())
