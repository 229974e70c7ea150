"""Benchmark: `avro` vs `fastavro` encoding/decoding a 1600x256 FrameEvent; prints JSON.

Run: .venv/bin/python ops/bench/codec.py [--iterations N] [--encoding raw|png]
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import time

import avro.io
import avro.schema
import numpy as np

from schemas.codec import AvroCodec, _strip_logical_types


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--encoding", choices=["raw", "png"], default="raw")
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

    print(json.dumps({
        "benchmark": "codec_frame_event",
        "frame": "1600x256 grey", "image_encoding": args.encoding, "event_bytes": len(fa_bytes),
        "iterations": args.iterations, "python": platform.python_version(),
        "fastavro": {"encode_us": round(fa_enc * 1e6, 1), "decode_us": round(fa_dec * 1e6, 1)},
        "avro": {"encode_us": round(av_enc * 1e6, 1), "decode_us": round(av_dec * 1e6, 1)},
        "speedup_fastavro": {"encode": round(av_enc / fa_enc, 2), "decode": round(av_dec / fa_dec, 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
