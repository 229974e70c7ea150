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


# ----------------------------------------------------------------------- decompression bombs (issue 17, #9)
def _chunk(ctype: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def png_bomb(w: int, h: int) -> bytes:
    """A 1-bit PNG that inflates to w x h pixels (~100 KiB for 28000 x 28000, 784 MB decoded)."""
    import struct
    import zlib

    row = b"\x00" * (1 + (w + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def jpeg_with_size(w: int, h: int, jpeg: bytes | None = None) -> bytes:
    """A real 32x64 JPEG whose SOF0 is edited to claim w x h (a 600-byte file, gigabytes decoded)."""
    import struct

    jpeg = jpeg or cv2.imencode(".jpg", np.full((32, 64), 128, np.uint8))[1].tobytes()
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:]


@pytest.fixture
def no_decoder(monkeypatch):
    """The calls that reached OpenCV's decoder (each also raises, as a decoder running out of memory would)."""
    import streams.inspection.intake as intake

    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise MemoryError("cv2.imdecode was called on bytes the headers should have refused")

    monkeypatch.setattr(intake.cv2, "imdecode", refuse)
    yield calls
    assert calls == [], "bytes reached cv2.imdecode"


@pytest.mark.parametrize("encoding, image", [
    ("PNG", png_bomb(28000, 28000)),
    ("JPEG", jpeg_with_size(30000, 30000)),
    ("JPEG", jpeg_with_size(64, 33)),  # one row more than the header: refused, not decoded
])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(no_decoder, encoding, image):
    """Header 64x32 (inside max_pixels), image bytes that inflate to far more: refused from the
    image's own headers, before any decoder allocates."""
    out = decode_image(frame(encoding=encoding, image=image))
    assert isinstance(out, Rejected) and out.error_class == "bad_image" and "not decoded" in out.reason


def _other_formats():
    img = np.full((32, 64), 128, np.uint8)
    out = []
    for ext in (".tiff", ".webp", ".bmp", ".pgm", ".pbm", ".ppm", ".jp2", ".sr", ".ras", ".hdr", ".exr", ".pfm",
                ".avif", ".gif"):
        try:
            ok, buf = cv2.imencode(ext, img if ext not in (".hdr", ".exr", ".pfm") else img.astype(np.float32))
        except cv2.error:
            continue
        if ok:
            out.append(pytest.param(buf.tobytes(), id=ext))
    return out


@pytest.mark.parametrize("encoding", ["PNG", "JPEG"])
@pytest.mark.parametrize("image", _other_formats())
def test_formats_the_product_does_not_accept_never_reach_a_decoder(no_decoder, encoding, image):
    """OpenCV sniffs the format from the bytes: a TIFF or WebP (any size it likes) sent as PNG/JPEG
    would be decoded by a decoder no size check saw. Only the format `encoding` names is decoded."""
    out = decode_image(frame(encoding=encoding, image=image))
    assert isinstance(out, Rejected) and out.error_class == "bad_image"


def _apng() -> bytes:
    png = cv2.imencode(".png", np.full((32, 64), 128, np.uint8))[1].tobytes()
    i = png.index(b"IDAT") - 4
    return png[:i] + _chunk(b"acTL", bytes(8)) + png[i:]


def _second_ihdr() -> bytes:
    import struct

    png = cv2.imencode(".png", np.full((32, 64), 128, np.uint8))[1].tobytes()
    i = png.index(b"IDAT") - 4
    return png[:i] + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 32, 8, 0, 0, 0, 0)) + png[i:]


def _jpeg_two_sofs() -> bytes:
    jpeg = cv2.imencode(".jpg", np.full((32, 64), 128, np.uint8))[1].tobytes()
    i = jpeg.index(b"\xff\xc0")
    j = jpeg.index(b"\xff", i + 2)
    sof = jpeg[i:j]
    return jpeg[:j] + jpeg_with_size(9000, 9000, sof + b"")[:len(sof)] + jpeg[j:]


def _jpeg_sof(marker: int) -> bytes:
    jpeg = cv2.imencode(".jpg", np.full((32, 64), 128, np.uint8))[1].tobytes()
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 1] + bytes([marker]) + jpeg[i + 2:]


def _jpeg_many_scans() -> bytes:
    jpeg = cv2.imencode(".jpg", np.full((32, 64), 128, np.uint8))[1].tobytes()
    i = jpeg.index(b"\xff\xda")
    body = jpeg[i:-2]
    return jpeg[:i] + body * 101 + b"\xff\xd9"


@pytest.mark.parametrize("encoding, image, says", [
    ("PNG", _apng(), "animated"),
    ("PNG", _second_ihdr(), "second IHDR"),
    ("JPEG", _jpeg_two_sofs(), "different sizes"),
    ("JPEG", _jpeg_sof(0xC3), "SOF3"),  # lossless
    ("JPEG", _jpeg_sof(0xC9), "SOF9"),  # arithmetic coding
    ("JPEG", _jpeg_many_scans(), "scans"),
    ("JPEG", jpeg_with_size(64, 0), "DNL"),
    ("PNG", b"\x89PNG\r\n\x1a\n\x00\x00", "IHDR"),
    ("PNG", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00", "truncated"),
])
def test_every_frame_header_in_the_file_is_checked(no_decoder, encoding, image, says):
    out = decode_image(frame(encoding=encoding, image=image))
    assert isinstance(out, Rejected) and out.error_class == "bad_image" and says in out.reason


@pytest.mark.parametrize("encoding, image", [
    ("JPEG", cv2.imencode(".jpg", np.full((32, 64), 128, np.uint8))[1].tobytes()),
    ("JPEG", cv2.imencode(".jpg", np.full((32, 64), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()),
    ("PNG", cv2.imencode(".png", np.full((32, 64, 3), 128, np.uint8))[1].tobytes()),
    ("PNG", cv2.imencode(".png", np.full((32, 64), 128, np.uint16))[1].tobytes()),  # 16-bit grey
])
def test_ordinary_camera_images_still_decode(encoding, image):
    out = decode_image(frame(encoding=encoding, image=image))
    assert isinstance(out, np.ndarray) and out.shape[:2] == (32, 64)
