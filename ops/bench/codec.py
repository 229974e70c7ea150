"""Benchmark: `avro` vs `fastavro` encoding/decoding a 1600x256 FrameEvent, and image decode; prints JSON.

Run: .venv/bin/python ops/bench/codec.py [--iterations N] [--encoding raw|png] [--sizes 256x1600,256x256]
         [--decode-iterations N] [--out out/bench/codec.json]

`image_decode` times what the worker does per frame after the Avro decode: JPEG (quality 90, as the simulator
writes), PNG and RAW bytes of a synthetic grey frame back to a uint8 array (cv2.imdecode / np.frombuffer), per
frame size, in microseconds and MPix/s, plus the Avro decode of the whole FrameEvent carrying that image.
The worker's own decode lives in streams/ (not imported here: it is being moved); this mirrors it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import avro.io
import avro.schema
import numpy as np

from schemas.codec import AvroCodec, _strip_logical_types

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out


def _frame_record(encoding: str) -> dict:
    rng = np.random.default_rng(0)
    img = (rng.normal(128, 20, size=(256, 1600))).clip(0, 255).astype(np.uint8)
    if encoding == "png":
        import cv2

        data = cv2.imencode(".png", img)[1].tobytes()
    else:
        data = img.tobytes()
    return dict(
        camera_id="cam-01", line_id="line-1", part_id="part-000123", frame_seq=42, frame_index=3,
        last_frame=False, capture_ts=1_795_000_000_000, encoding=encoding.upper(), width=1600,
        height=256, channels=1, image=data, exposure_us=120.0, conveyor_speed_mm_s=250.0,
        pixels_per_mm=4.0, schema_version=2,
    )


def _time(fn, n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _image_decode(sizes: list[tuple[int, int]], iterations: int) -> list[dict]:
    """Decode cost of a synthetic grey frame per encoding and size (plus its FrameEvent's Avro decode)."""
    import cv2

    from models.data.synthetic import render_sample

    codec = AvroCodec("FrameEvent", framing="raw")
    rows = []
    for h, w in sizes:
        img = render_sample(12345, (h, w), defect_prob=1.0).image
        encoded = {"JPEG": cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
                   "PNG": cv2.imencode(".png", img)[1].tobytes(), "RAW": img.tobytes()}
        for enc, data in encoded.items():
            rec = dict(_frame_record("raw"), encoding=enc, width=w, height=h, image=data)
            msg = codec.encode(rec)
            if enc == "RAW":
                fn = lambda: np.frombuffer(data, np.uint8).reshape(h, w).copy()  # noqa: E731  (the worker keeps a copy)
            else:
                fn = lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # noqa: E731
            out = fn()
            assert out.shape[:2] == (h, w)
            if enc != "JPEG":
                assert np.array_equal(out.reshape(h, w), img), "lossless encodings must round-trip"
            dt = _time(fn, iterations)
            avro_dt = _time(lambda: codec.decode(msg), iterations)
            rows.append({"frame": [h, w], "encoding": enc, "image_bytes": len(data), "event_bytes": len(msg),
                         "image_decode_us": round(dt * 1e6, 1), "image_decode_mpix_per_s": round(h * w / dt / 1e6, 1),
                         "avro_decode_us": round(avro_dt * 1e6, 1),
                         "frames_per_s_one_core": round(1.0 / (dt + avro_dt), 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--encoding", choices=["raw", "png"], default="raw")
    ap.add_argument("--sizes", default="256x1600,256x256", help="HxW,... for the image decode")
    ap.add_argument("--decode-iterations", type=int, default=200)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    rec = _frame_record(args.encoding)

    codec = AvroCodec("FrameEvent", framing="raw")
    fa_bytes = codec.encode(rec)
    fa_enc = _time(lambda: codec.encode(rec), args.iterations)
    fa_dec = _time(lambda: codec.decode(fa_bytes), args.iterations)

    schema = avro.schema.parse(json.dumps(_strip_logical_types(codec.entry.raw)))
    writer = avro.io.DatumWriter(schema)
    reader = avro.io.DatumReader(schema, schema)

    def av_encode() -> bytes:
        buf = io.BytesIO()
        writer.write(rec, avro.io.BinaryEncoder(buf))
        return buf.getvalue()

    av_bytes = av_encode()
    assert av_bytes == fa_bytes, "the two libraries must produce identical Avro binary"
    av_enc = _time(av_encode, args.iterations)
    av_dec = _time(lambda: reader.read(avro.io.BinaryDecoder(io.BytesIO(av_bytes))), args.iterations)

    sizes = [tuple(int(v) for v in part.lower().split("x")) for part in args.sizes.split(",") if part]
    cpu_free = os.path.exists(os.path.join(os.path.dirname(__file__), "..", "..", "runs", ".cpu-free"))
    result = {
        "benchmark": "codec_frame_event", "cpu_free_marker": cpu_free,
        "frame": "1600x256 grey", "image_encoding": args.encoding, "event_bytes": len(fa_bytes),
        "iterations": args.iterations, "python": platform.python_version(),
        "fastavro": {"encode_us": round(fa_enc * 1e6, 1), "decode_us": round(fa_dec * 1e6, 1)},
        "avro": {"encode_us": round(av_enc * 1e6, 1), "decode_us": round(av_dec * 1e6, 1)},
        "speedup_fastavro": {"encode": round(av_enc / fa_enc, 2), "decode": round(av_dec / fa_dec, 2)},
        "image_decode": _image_decode(sizes, args.decode_iterations),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
