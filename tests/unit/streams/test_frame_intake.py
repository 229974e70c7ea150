"""Dead-letter classification of bad `frames` input (streams.inspection.intake) and the camera registry."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from schemas.events import FrameEvent
from streams.inspection.cameras import CameraConfig, CameraRegistry
from streams.inspection.intake import IntakeLimits, Rejected, dead_letter, decode_frame, decode_image, frame_meta
from streams.tracking.types import PartPolicy

CODEC = FrameEvent.codec()
LIMITS = IntakeLimits(max_image_bytes=200_000, max_pixels=1024 * 1024)


def frame(**kw) -> FrameEvent:
    img = np.full((32, 64), 128, np.uint8)
    ok, png = cv2.imencode(".png", img)
    base = dict(camera_id="cam-1", line_id="l1", part_id="p1", frame_seq=7, capture_ts=1_700_000_000_000,
                encoding="PNG", width=64, height=32, channels=1, image=png.tobytes(),
                conveyor_speed_mm_s=100.0, pixels_per_mm=4.0)
    base.update(kw)
    return FrameEvent(**base)


def test_good_frame_decodes_with_meta():
    ev = decode_frame(CODEC.encode(frame().to_avro()), b"cam-1", CODEC, LIMITS)
    assert isinstance(ev, FrameEvent)
    img = decode_image(ev)
    assert isinstance(img, np.ndarray) and img.shape == (32, 64)
    m = frame_meta(ev)
    assert m.speed_px_s == 400.0 and m.frame_seq == 7 and m.width == 64


@pytest.mark.parametrize(
    "value, error_class",
    [
        (b"", "decode_error"),
        (b"\x00\x01", "decode_error"),
        (b"not avro at all, just text", "decode_error"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown_schema"),
    ],
)
def test_undecodable_bytes_are_classified(value, error_class):
    rej = decode_frame(value, b"cam-1", CODEC, LIMITS)
    assert isinstance(rej, Rejected) and rej.error_class == error_class and rej.reason


def test_other_event_type_is_unknown_schema():
    from schemas.events import DeadLetter

    other = DeadLetter.codec().encode(DeadLetter("t", 0, 0, b"", "r", "c", 0).to_avro())
    rej = decode_frame(other, None, CODEC, LIMITS)
    assert isinstance(rej, Rejected) and rej.error_class == "unknown_schema"


def test_truncated_record_is_decode_error():
    good = CODEC.encode(frame().to_avro())
    rej = decode_frame(good[:-40], b"cam-1", CODEC, LIMITS)
    assert isinstance(rej, Rejected) and rej.error_class == "decode_error"


@pytest.mark.parametrize(
    "kw, key, error_class",
    [
        ({"image": b"\x89PNG garbage"}, b"cam-1", None),  # header fine, pixels checked later
        ({"channels": 2}, b"cam-1", "bad_image"),
        ({"width": 0}, b"cam-1", "bad_image"),
        ({"image": b"x" * 300_000}, b"cam-1", "oversized_image"),
        ({"width": 4096, "height": 4096}, b"cam-1", "oversized_image"),
        ({}, b"cam-2", "key_mismatch"),
        ({"part_id": ""}, b"cam-1", "invalid_frame"),
    ],
)
def test_header_checks(kw, key, error_class):
    out = decode_frame(CODEC.encode(frame(**kw).to_avro()), key, CODEC, LIMITS)
    if error_class is None:
        assert isinstance(out, FrameEvent)
    else:
        assert isinstance(out, Rejected) and out.error_class == error_class
        assert out.camera_id in (None, "cam-1")


@pytest.mark.parametrize(
    "kw",
    [
        {"image": b"\x89PNG garbage"},
        {"encoding": "JPEG", "image": b"\xff\xd8\xff not a jpeg"},
        {"width": 65},  # decodes, but not to the size the header says
        {"encoding": "RAW", "image": b"\x00" * 10},
    ],
)
def test_corrupt_images_are_bad_image(kw):
    out = decode_image(frame(**kw))
    assert isinstance(out, Rejected) and out.error_class == "bad_image"


def test_raw_image_decodes():
    img = np.arange(32 * 64, dtype=np.uint8).reshape(32, 64)
    out = decode_image(frame(encoding="RAW", image=img.tobytes()))
    assert isinstance(out, np.ndarray) and np.array_equal(out, img)


def test_dead_letter_keeps_the_original():
    dl = dead_letter(Rejected("bad_image", "nope", "cam-1"), topic="frames", partition=2, offset=9,
                     value=b"abc", key=b"cam-1", now_ms=5)
    assert (dl.original, dl.error_class, dl.reason, dl.camera_id, dl.failed_at) == (b"abc", "bad_image", "nope", "cam-1", 5)
    from schemas.events import DeadLetter

    assert DeadLetter.codec().decode(DeadLetter.codec().encode(dl.to_avro()))["offset"] == 9


def test_camera_registry_applies_and_removes():
    reg = CameraRegistry()
    assert reg.policy("cam-9") == PartPolicy()
    assert reg.apply(b"cam-9", CameraConfig(line_id="l9", roi=(0, 0, 100, 100), frames_per_part=5).to_json())
    assert reg.policy("cam-9") == PartPolicy(line_id="l9", roi=(0, 0, 100, 100), frames_per_part=5)
    assert not reg.apply(b"cam-9", b"{not json")
    assert not reg.apply(b"cam-9", json.dumps({"min_confidence": 7}).encode())
    assert reg.get("cam-9").line_id == "l9"  # bad records leave the last good config
    assert reg.apply(b"cam-9", None) and reg.get("cam-9") is None
