"""Frame intake: decode a `frames` message and its image, or say why it goes to dead-letter.

Pure functions (no Faust): errors are data. Every failure becomes a :class:`Rejected` with a
machine-readable ``error_class`` (the DeadLetter schema's field) and a human-readable reason;
nothing here raises on bad input (the fuzz test `tests/unit/streams/test_intake_fuzz.py` holds
this to > 10 000 malformed events).

Guarantees of :func:`decode_frame` on an accepted frame:

* the message has a key and the key is the camera id (``missing_key`` / ``key_mismatch``);
* when the pipeline enforces partitions, the frame arrived on the partition its key hashes to
  with Kafka's default partitioner (murmur2 of the key modulo the partition count), the
  partition of the camera's tracking state (``wrong_partition``, see below);
* ``capture_ts`` is epoch milliseconds inside the sanity window (not before 2000-01-01, not
  older than ``capture_ts_max_age_days``, not more than ``capture_ts_max_future_s`` ahead of the
  worker's clock): seconds, microseconds, nanoseconds and negative values are refused
  (``bad_timestamp``), so the shift calendar and ClickHouse's unsigned columns only see real
  times;
* header sizes are positive and inside the limits, channels are 1 or 3.

Partitioning (finding 4 of issue 12). A camera's frames, its tracking-table entry and its
part-timeout requests must live on one partition, or two workers track one camera, order is lost
and timeouts read the wrong state. Faust writes the table to the partition of the frame being
processed and sends timeout requests with Kafka's default partitioner, so the one partition that
works is murmur2(camera id) mod N. Frames found elsewhere (a keyless producer, librdkafka's
``consistent_random`` CRC32, sarama's FNV, a hand-picked partition) are dead-lettered as
``wrong_partition`` with the partition they should have used, rather than re-routed: a camera
whose frames were spread over partitions by its producer has already lost their order (Kafka
orders only within a partition), so forwarding them would feed the tracker frames out of order
and the sequence guard would drop them anyway, while doubling large frames on the broker. A
misconfigured producer shows on its first frame, with the fix in the reason.

:func:`dead_letter` bounds the record's size: the original value is kept up to
``deadletter_original_max_bytes``; a larger one is left out and referenced by its
topic/partition/offset, size and SHA-256, so a dead letter always fits the producer's
``max.request.size`` whatever ``max_image_bytes`` allows on `frames`.
"""
from __future__ import annotations

import hashlib
import math
import re
import struct
import time
from typing import NamedTuple

import cv2
import numpy as np

from schemas.codec import AvroCodec, DecodeError
from schemas.events import DeadLetter, FrameEvent
from streams.tracking.types import FrameMeta

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


CAPTURE_TS_FLOOR_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything earlier is a unit error, not a frame


class IntakeLimits(NamedTuple):
    """Input limits (from WorkerSettings)."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_future_ms: int = 86_400_000
    max_age_ms: int = 3650 * 86_400_000
    partitions: int | None = None  # enforce murmur2(key) % partitions == the frame's partition when set

    @classmethod
    def from_settings(cls, worker: object, partitions: int | None = None) -> "IntakeLimits":
        """Limits from a `streams.settings.WorkerSettings`."""
        return cls(
            max_image_bytes=worker.max_image_bytes,  # type: ignore[attr-defined]
            max_pixels=worker.max_pixels,  # type: ignore[attr-defined]
            max_future_ms=int(worker.capture_ts_max_future_s * 1000),  # type: ignore[attr-defined]
            max_age_ms=int(worker.capture_ts_max_age_days * 86_400_000),  # type: ignore[attr-defined]
            partitions=partitions,
        )


def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, kafka-python, aiokafka, Faust) gives `key`."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def check_capture_ts(ts: int, now_ms: int, limits: IntakeLimits) -> str | None:
    """Why `ts` (claimed epoch ms) is not a plausible capture time, or None."""
    if ts < CAPTURE_TS_FLOOR_MS:
        hint = " (negative)" if ts < 0 else " (seconds instead of milliseconds?)" if 0 < ts < 10_000_000_000 else ""
        return f"capture_ts {ts} is before 2000-01-01{hint}"
    if ts > now_ms + limits.max_future_ms:
        hint = " (microseconds or nanoseconds instead of milliseconds?)" if ts > 1_000 * CAPTURE_TS_FLOOR_MS else ""
        return f"capture_ts {ts} is more than {limits.max_future_ms / 1000:.0f}s ahead of the worker clock {now_ms}{hint}"
    if ts < now_ms - limits.max_age_ms:
        return f"capture_ts {ts} is more than {limits.max_age_ms / 86_400_000:.0f} days old (worker clock {now_ms})"
    return None


def decode_frame(value: bytes | None, key: bytes | None, codec: AvroCodec, limits: IntakeLimits, *,
                 partition: int | None = None, now_ms: int | None = None) -> FrameEvent | Rejected:
    """Decode and sanity-check a `frames` message (header fields only, not the pixels).

    Args:
        value, key: the message as read.
        partition: the partition it was read from (checked when `limits.partitions` is set).
        now_ms: the worker clock for the capture_ts window (default: now).
    Returns:
        The event, or a :class:`Rejected` saying why it can never be processed. Never raises.
    """
    try:
        ev = FrameEvent.from_avro(codec.decode(value))
    except DecodeError as exc:
        return Rejected(_DECODE_CLASSES.get(exc.reason, "decode_error"), str(exc))
    except Exception as exc:  # noqa: BLE001 - bytes that fit the schema but not the event type
        return Rejected("decode_error", f"{type(exc).__name__}: {exc}")
    cam = ev.camera_id
    if not cam:
        return Rejected("invalid_frame", "empty camera_id")
    if not key:
        return Rejected("missing_key", f"message has no key; a camera producer must key every frame by its camera id "
                                       f"({cam!r})", cam)
    if key.decode("utf-8", "replace") != cam:
        return Rejected("key_mismatch", f"message key {key!r} is not the camera id {cam!r}", cam)
    if limits.partitions and partition is not None:
        want = expected_partition(key, limits.partitions)
        if partition != want:
            return Rejected("wrong_partition", f"camera {cam!r} belongs on partition {want} of {limits.partitions} "
                                               f"(murmur2 of its key, Kafka's default partitioner), read from "
                                               f"partition {partition}: use the default partitioner", cam)
    if not ev.part_id:
        return Rejected("invalid_frame", "empty part_id", cam)
    if ev.frame_seq < 0 or ev.frame_index < 0:
        return Rejected("invalid_frame", f"frame_seq {ev.frame_seq}, frame_index {ev.frame_index}: must be >= 0", cam)
    for name in ("conveyor_speed_mm_s", "pixels_per_mm", "exposure_us"):
        v = getattr(ev, name)
        if v is not None and not math.isfinite(v):
            return Rejected("invalid_frame", f"{name} is {v}", cam)
    why = check_capture_ts(int(ev.capture_ts), now_ms if now_ms is not None else int(time.time() * 1000), limits)
    if why is not None:
        return Rejected("bad_timestamp", why, cam)
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Baseline, extended and progressive Huffman JPEG (SOF0-2): what cameras send. Lossless, hierarchical
# and arithmetic-coded frames (SOF3, SOF5-7, SOF9-11, SOF13-15) are refused, not decoded.
_JPEG_SOF_ACCEPTED = {0xC0, 0xC1, 0xC2}
_JPEG_SOF_ALL = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC are not frames
JPEG_MAX_SCANS = 100  # a progressive JPEG has ~10; each scan re-reads the whole coefficient buffer
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # the first marker after entropy-coded data


def image_size(data: bytes, encoding: str) -> tuple[int, int] | str:
    """(width, height) of an encoded PNG or JPEG image, read from its own headers without decoding.

    Returns why the bytes are refused instead: not the format `encoding` names (a TIFF, WebP, BMP,
    … that OpenCV would sniff and decode whatever the header says), a second IHDR or an animated
    PNG, a JPEG with no frame header, several frame headers of different sizes, an unsupported JPEG
    process, a height left to a DNL marker, or more than `JPEG_MAX_SCANS` scans. Every frame header
    the file holds is read (all chunks of a PNG, all markers of a JPEG, past its scans), so a
    decoder never meets a size this did not see. Linear in len(data); never raises.
    """
    try:
        if encoding == "PNG":
            return _png_size(data)
        if encoding == "JPEG":
            return _jpeg_size(data)
    except (IndexError, struct.error) as exc:  # truncated header
        return f"{encoding} header truncated ({exc})"
    return f"no header parser for encoding {encoding!r}"


def _png_size(data: bytes) -> tuple[int, int] | str:
    if not data.startswith(PNG_SIGNATURE):
        return "not a PNG (no PNG signature)"
    pos, size = len(PNG_SIGNATURE), None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IHDR":
            if size is not None:
                return "PNG has a second IHDR chunk"
            if pos != len(PNG_SIGNATURE) or length != 13:
                return "PNG IHDR is not the first chunk or not 13 bytes"
            size = struct.unpack_from(">II", data, pos + 8)
        elif size is None:
            return "PNG does not start with IHDR"
        elif ctype in (b"acTL", b"fcTL", b"fdAT"):
            return "animated PNG (APNG) is not accepted"
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if size is None:
        return "PNG has no IHDR chunk"
    return size


def _jpeg_size(data: bytes) -> tuple[int, int] | str:
    if not data.startswith(b"\xff\xd8"):
        return "not a JPEG (no SOI marker)"
    pos, sizes, scans = 2, set(), 0
    n = len(data)
    while pos < n:
        if data[pos] != 0xFF:
            return f"JPEG marker expected at byte {pos}"
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            continue
        if marker == 0xD8:
            return "JPEG has a second SOI marker outside a segment"
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return f"JPEG segment of length {length}"
        if marker in _JPEG_SOF_ALL:
            if marker not in _JPEG_SOF_ACCEPTED:
                return f"JPEG process SOF{marker - 0xC0} is not accepted (baseline, extended, progressive only)"
            precision, h, w = struct.unpack_from(">BHH", data, pos + 2)
            if precision != 8:
                return f"JPEG sample precision {precision} bits is not accepted"
            if h == 0:
                return "JPEG height is defined by a DNL marker (not accepted)"
            sizes.add((w, h))
        pos += length
        if marker == 0xDA:  # SOS: skip the entropy-coded data to the next marker
            scans += 1
            if scans > JPEG_MAX_SCANS:
                return f"JPEG has more than {JPEG_MAX_SCANS} scans"
            m = _JPEG_SCAN_END.search(data, pos)
            pos = m.start() if m else n
    if not sizes:
        return "JPEG has no frame header (SOF)"
    if len(sizes) > 1:
        return f"JPEG has frame headers of different sizes {sorted(sizes)}"
    return sizes.pop()


def decode_image(ev: FrameEvent) -> np.ndarray | Rejected:
    """The frame's pixels as uint8 (H, W) grey or (H, W, 3); checks they match the header.

    Decompression bombs: a PNG or JPEG is decoded only after its own headers (`image_size`, every
    IHDR/SOF it holds) say it has exactly the header's width x height, which `decode_frame` bounded
    by `max_pixels`; so what the decoder allocates is known before it runs, and a small file that
    claims a huge image is refused in microseconds. The bytes must also be the format `encoding`
    names: OpenCV sniffs the format from the content, so a TIFF, WebP, BMP, … sent as "PNG" would
    otherwise reach a decoder this never checked.
    """
    try:
        if ev.encoding != "RAW":
            size = image_size(ev.image, ev.encoding)
            if isinstance(size, str):
                return Rejected("bad_image", size, ev.camera_id)
            if size != (ev.width, ev.height):
                return Rejected("bad_image", f"{ev.encoding} headers say {size[0]}x{size[1]}, frame header says "
                                             f"{ev.width}x{ev.height}; not decoded", ev.camera_id)
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
        if not (math.isfinite(speed) and abs(speed) < 1e7):  # no conveyor moves 10 km/s; estimate from images
            speed = None
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


MAX_DEADLETTER_KEY_BYTES = 1024
MAX_REASON_CHARS = 2000


def dead_letter(
    rej: Rejected, *, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
    now_ms: int | None = None, max_original_bytes: int = 256 * 1024,
) -> DeadLetter:
    """The dead-letter record for a rejected message.

    The original value is kept when it is at most `max_original_bytes`; otherwise `original` is
    empty, `original_kept` false, and `topic`/`partition`/`offset` with `original_size` and
    `original_sha256` identify it. Keys longer than 1 KiB and reasons longer than 2000 characters
    are cut, so the record's size is bounded by `max_original_bytes` plus a few KiB.
    """
    value = value or b""
    kept = len(value) <= max_original_bytes
    reason = rej.reason if len(rej.reason) <= MAX_REASON_CHARS else rej.reason[:MAX_REASON_CHARS] + "…"
    camera = rej.camera_id if rej.camera_id is None or len(rej.camera_id) <= 256 else rej.camera_id[:256]
    return DeadLetter(
        topic=topic,
        partition=partition,
        offset=offset,
        original=value if kept else b"",
        reason=reason,
        error_class=rej.error_class,
        failed_at=now_ms if now_ms is not None else int(time.time() * 1000),
        key=key[:MAX_DEADLETTER_KEY_BYTES] if key is not None else None,
        camera_id=camera,
        original_kept=kept,
        original_size=len(value),
        original_sha256=hashlib.sha256(value).hexdigest(),
    )
