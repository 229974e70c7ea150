"""Frame intake: decode a `frames` message and its image, or say why it goes to dead-letter.

Pure functions (no Faust): errors are data. Every failure becomes a :class:`Rejected` with a
machine-readable ``error_class`` (the DeadLetter schema's field) and a human-readable reason;
nothing here raises on bad input.
"""
from __future__ import annotations

import time
from typing import NamedTuple

import cv2
import numpy as np

from schemas.codec import AvroCodec, DecodeError
from schemas.events import DeadLetter, FrameEvent
from streams.tracking import FrameMeta

# DecodeError.reason -> DeadLetter.error_class
_DECODE_CLASSES = {
    "unknown_schema": "unknown_schema",
    "empty": "decode_error",
    "too_short": "decode_error",
    "bad_magic": "decode_error",
    "corrupt": "decode_error",
    "trailing_bytes": "decode_error",
}


class Rejected(NamedTuple):
    """Why a message could not be processed."""

    error_class: str  # decode_error | unknown_schema | invalid_frame | bad_image | oversized_image | ...
    reason: str
    camera_id: str | None = None


class IntakeLimits(NamedTuple):
    """Input limits (from WorkerSettings)."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096


def decode_frame(value: bytes | None, key: bytes | None, codec: AvroCodec, limits: IntakeLimits) -> FrameEvent | Rejected:
    """Decode and sanity-check a `frames` message (header fields only, not the pixels)."""
    try:
        ev = FrameEvent.from_avro(codec.decode(value))
    except DecodeError as exc:
        return Rejected(_DECODE_CLASSES.get(exc.reason, "decode_error"), str(exc))
    cam = ev.camera_id
    if not cam:
        return Rejected("invalid_frame", "empty camera_id")
    if key is not None and key.decode("utf-8", "replace") != cam:
        return Rejected("key_mismatch", f"message key {key!r} is not the camera id {cam!r}", cam)
    if not ev.part_id:
        return Rejected("invalid_frame", "empty part_id", cam)
    if ev.channels not in (1, 3):
        return Rejected("bad_image", f"channels={ev.channels}, expected 1 or 3", cam)
    if ev.width <= 0 or ev.height <= 0:
        return Rejected("bad_image", f"size {ev.width}x{ev.height}", cam)
    if len(ev.image) > limits.max_image_bytes or ev.width * ev.height > limits.max_pixels:
        return Rejected(
            "oversized_image",
            f"{len(ev.image)} bytes, {ev.width}x{ev.height} px; limits {limits.max_image_bytes} bytes, {limits.max_pixels} px",
            cam,
        )
    return ev


def decode_image(ev: FrameEvent) -> np.ndarray | Rejected:
    """The frame's pixels as uint8 (H, W) grey or (H, W, 3); checks they match the header."""
    try:
        if ev.encoding == "RAW":
            want = ev.width * ev.height * ev.channels
            if len(ev.image) != want:
                return Rejected("bad_image", f"RAW image has {len(ev.image)} bytes, header says {want}", ev.camera_id)
            arr = np.frombuffer(ev.image, np.uint8).reshape(ev.height, ev.width, ev.channels)
            return arr[:, :, 0] if ev.channels == 1 else arr
        flag = cv2.IMREAD_GRAYSCALE if ev.channels == 1 else cv2.IMREAD_COLOR
        img = cv2.imdecode(np.frombuffer(ev.image, np.uint8), flag)
    except Exception as exc:  # cv2.error and friends: the bytes are not an image
        return Rejected("bad_image", f"{ev.encoding} decode failed: {type(exc).__name__}: {exc}", ev.camera_id)
    if img is None:
        return Rejected("bad_image", f"{ev.encoding} bytes do not decode to an image", ev.camera_id)
    if img.shape[0] != ev.height or img.shape[1] != ev.width:
        return Rejected(
            "bad_image", f"decoded {img.shape[1]}x{img.shape[0]}, header says {ev.width}x{ev.height}", ev.camera_id
        )
    return img


def frame_meta(ev: FrameEvent) -> FrameMeta:
    """The tracker's view of a frame event."""
    speed = None
    if ev.conveyor_speed_mm_s is not None and ev.pixels_per_mm is not None:
        speed = float(ev.conveyor_speed_mm_s) * float(ev.pixels_per_mm)
    return FrameMeta(
        camera_id=ev.camera_id,
        line_id=ev.line_id,
        part_id=ev.part_id,
        frame_seq=int(ev.frame_seq),
        capture_ts=int(ev.capture_ts),
        width=int(ev.width),
        height=int(ev.height),
        frame_index=int(ev.frame_index),
        last_frame=bool(ev.last_frame),
        speed_px_s=speed,
    )


def dead_letter(
    rej: Rejected, *, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None, now_ms: int | None = None
) -> DeadLetter:
    """The dead-letter record for a rejected message, keeping the original bytes."""
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        original=value or b"",
        reason=rej.reason,
        error_class=rej.error_class,
        failed_at=now_ms if now_ms is not None else int(time.time() * 1000),
        key=key,
        camera_id=rej.camera_id,
    )
