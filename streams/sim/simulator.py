"""Camera simulator: synthetic part sequences → JPEG/PNG → Avro FrameEvents on `frames`, plus ground truth.

Each simulated camera produces `parts_per_minute` parts of `frames_per_part` frames, rendered by
`models.data.synthetic.render_part_sequence` (deterministic by seed). Timestamps follow a simulated
clock that starts at `start_time` and advances by the simulated rate, so `--time-scale 600`
produces ten minutes of a line per wall-clock second (multi-shift runs in minutes); the wall
clock only paces publishing. Frames of all cameras are interleaved in capture-time order.

Conventions of the simulated cameras: key = camera id; `frame_seq` = capture time in ms (camera
wide, strictly increasing, and unique across simulator runs with different start times);
`part_id` = `<camera>-<capture ms of the part's first frame>`; the last frame of a part carries
`last_frame=true`; `conveyor_speed_mm_s` and `pixels_per_mm` give the part's motion.
"""
from __future__ import annotations

import heapq
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

import cv2
import numpy as np

from schemas.events import FrameEvent
from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)

PIXELS_PER_MM = 4.0


@dataclass
class SimulationConfig:
    """What to simulate. `parts` (total over all cameras) or `duration_s` (simulated) bounds the run."""

    cameras: int = 1
    parts_per_minute: float = 30.0  # per camera
    frames_per_part: int = 6
    defect_rate: float = 0.5
    parts: int | None = None
    duration_s: float | None = None
    seed: int = 0
    encoding: Literal["jpeg", "png"] = "png"
    ground_truth: Path | None = None
    line: str = "line-1"
    camera_prefix: str = "cam"
    first_camera: int = 1  # cameras are <prefix>-<first_camera>..; another run can add new ones
    start_time_ms: int | None = None  # simulated clock start (UTC ms); None = now
    time_scale: float = 1.0  # simulated seconds per wall second; 0 = as fast as possible
    frame_shape: tuple[int, int] = (256, 512)
    jpeg_quality: int = 92
    progress: bool = True
    # render and encode every frame before the first is sent, then publish the stored bytes on the schedule
    # (capture_ts and the ground truth moved to the wall clock of the send): the publisher then costs next to no
    # CPU, so a benchmark on the same cores measures the system, not the camera stand-in
    pre_encode: bool = False


@dataclass
class GroundTruthPart:
    """Ground truth of one simulated part (one JSONL line)."""

    camera_id: str
    line_id: str
    part_id: str
    seed: int
    family: str
    frames: int
    frame_seqs: list[int]
    capture_ts: list[int]
    speed_px_per_frame: float
    defects: list[dict[str, Any]]  # {defect_id, defect_class, boxes: {frame index: [x0, y0, x1, y1]}}
    nuisance_boxes: dict[str, list[list[int]]]  # frame index -> boxes
    width: int = 512
    height: int = 256

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "GroundTruthPart":
        return cls(**json.loads(line))


@dataclass
class SimulationReport:
    """What the simulator sent."""

    cameras: list[str] = field(default_factory=list)
    parts: int = 0
    frames: int = 0
    bytes: int = 0
    defects: int = 0
    defects_by_class: dict[str, int] = field(default_factory=dict)
    sim_start_ms: int = 0
    sim_end_ms: int = 0
    wall_s: float = 0.0
    ground_truth: str | None = None
    topic: str = ""

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def gt_defects(seq: Any) -> list[dict[str, Any]]:
    """A PartSequence's defects as JSON-able dicts (frame index keys are strings).

    A generator flag ``borderline`` (an imprint that takes the other class's look in some frames) is kept when
    the generator provides it, so scoring can report imprint accuracy with and without them.
    """
    out = []
    for d in seq.defects:
        rec: dict[str, Any] = {"defect_id": d.defect_id, "defect_class": d.defect_class,
                               "boxes": {str(k): list(map(int, b)) for k, b in d.boxes.items()}}
        if getattr(d, "borderline", None) is not None:
            rec["borderline"] = bool(d.borderline)
        out.append(rec)
    return out


def gt_nuisances(seq: Any) -> dict[str, list[list[int]]]:
    return {str(k): [list(map(int, b)) for b in v] for k, v in seq.nuisance_boxes.items()}


def part_seed(seed: int, camera_index: int, part_index: int) -> int:
    """Seed of one part: same run seed, camera and part number → same part."""
    return (seed * 1_000_003 + camera_index * 10_007 + part_index) & 0x7FFFFFFF


def _encode(img: np.ndarray, encoding: str, quality: int) -> bytes:
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {img.shape} frame as {encoding}")
    return buf.tobytes()


def generate(cfg: SimulationConfig) -> Iterator[tuple[FrameEvent, GroundTruthPart | None]]:
    """Frame events in capture-time order; a part's ground truth comes with its last frame."""
    from models.data.synthetic import render_part_sequence

    if cfg.parts is None and cfg.duration_s is None:
        raise ValueError("give parts or duration_s")
    start = cfg.start_time_ms if cfg.start_time_ms is not None else int(time.time() * 1000)
    period_ms = 60_000.0 / cfg.parts_per_minute
    frame_ms = period_ms / cfg.frames_per_part
    n_cams = cfg.cameras
    end_ms = start + cfg.duration_s * 1000 if cfg.duration_s is not None else float("inf")
    # heap of (part start ms, camera index, part index); cameras are staggered within a period
    heap = [(start + c * period_ms / n_cams, c, 0) for c in range(n_cams)]
    heapq.heapify(heap)
    started = 0
    # frames of parts in flight: (capture ms, camera, part index, frame index)
    pending: list[tuple[float, int, int, int]] = []
    seqs: dict[tuple[int, int], Any] = {}
    while heap or pending:
        next_part = heap[0][0] if heap else float("inf")
        if pending and pending[0][0] <= next_part:
            t, c, j, i = heapq.heappop(pending)
            yield from _emit_frame(cfg, seqs, t, c, j, i, frame_ms)
            continue
        if not heap:
            break
        t0, c, j = heapq.heappop(heap)
        if t0 >= end_ms or (cfg.parts is not None and started >= cfg.parts):
            heap.clear()
            continue
        started += 1
        cam = f"{cfg.camera_prefix}-{cfg.first_camera + c}"
        ps = part_seed(cfg.seed, cfg.first_camera + c, j)
        seq = render_part_sequence(ps, n_frames=cfg.frames_per_part, frame_shape=cfg.frame_shape,
                                   defect_rate=cfg.defect_rate)
        ts = [int(round(t0 + i * frame_ms)) for i in range(cfg.frames_per_part)]
        seqs[(c, j)] = (cam, ps, seq, ts)
        for i in range(cfg.frames_per_part):
            heapq.heappush(pending, (t0 + i * frame_ms, c, j, i))
        heapq.heappush(heap, (t0 + period_ms, c, j + 1))


def _emit_frame(cfg: SimulationConfig, seqs: dict, t: float, c: int, j: int, i: int,
                frame_ms: float) -> Iterator[tuple[FrameEvent, GroundTruthPart | None]]:
    cam, ps, seq, ts = seqs[(c, j)]
    part_id = f"{cam}-{ts[0]}"
    img = seq.frames[i]
    last = i == cfg.frames_per_part - 1
    speed_mm_s = seq.speed_px_per_frame / PIXELS_PER_MM / (frame_ms / 1000.0)
    ev = FrameEvent(
        camera_id=cam, line_id=cfg.line, part_id=part_id, frame_seq=ts[i], capture_ts=ts[i],
        encoding="JPEG" if cfg.encoding == "jpeg" else "PNG", width=img.shape[1], height=img.shape[0],
        channels=1 if img.ndim == 2 else img.shape[2], image=_encode(img, cfg.encoding, cfg.jpeg_quality),
        frame_index=i, last_frame=last, conveyor_speed_mm_s=speed_mm_s, pixels_per_mm=PIXELS_PER_MM,
    )
    gt = None
    if last:
        gt = GroundTruthPart(
            camera_id=cam, line_id=cfg.line, part_id=part_id, seed=ps, family=seq.family,
            frames=cfg.frames_per_part, frame_seqs=list(ts), capture_ts=list(ts),
            speed_px_per_frame=float(seq.speed_px_per_frame),
            defects=gt_defects(seq),
            nuisance_boxes=gt_nuisances(seq),
            width=img.shape[1], height=img.shape[0],
        )
        del seqs[(c, j)]
    yield ev, gt


def simulate(settings: Settings, cfg: SimulationConfig,
             send: Callable[[bytes, bytes], None] | None = None) -> SimulationReport:
    """Publish the simulated frames to `settings.kafka.topics.frames` (or call `send(key, value)`).

    Uses kafka-python with acks=all and idempotence; returns after every frame was acknowledged.
    Rate-limited so that simulated time runs `time_scale` times faster than the wall clock.
    Raises the producer's error when a frame cannot be delivered.
    """
    codec = FrameEvent.codec(clients.framing(settings.kafka))
    producer = None
    if send is None:
        from streams.kafka.topics import ensure_topics

        ensure_topics(settings)
        producer = clients.producer(
            settings.kafka, acks="all", enable_idempotence=True, linger_ms=5, max_request_size=16 * 1024 * 1024,
        )
        topic = settings.kafka.topics.frames
        futures: list[Any] = []

        def send(key: bytes, value: bytes) -> None:
            futures.append(producer.send(topic, key=key, value=value))
            if len(futures) >= 256:
                for f in futures:
                    f.get(timeout=60)
                futures.clear()

    report = SimulationReport(topic=settings.kafka.topics.frames)
    gt_file = open(cfg.ground_truth, "w") if cfg.ground_truth else None
    total = cfg.parts * cfg.frames_per_part if cfg.parts is not None else None
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="frame", desc="simulate", file=sys.stderr)
    cams: set[str] = set()
    try:
        frames: Iterable[tuple[FrameEvent, GroundTruthPart | None]] = generate(cfg)
        if cfg.pre_encode:
            frames = _rendered(frames, cfg, bar)
        wall0 = time.monotonic()
        wall0_epoch_ms = int(time.time() * 1000)
        sim0: int | None = None
        for ev, gt in frames:
            if sim0 is None:
                sim0 = ev.capture_ts
                report.sim_start_ms = sim0
            if cfg.time_scale > 0:
                due = (ev.capture_ts - sim0) / 1000.0 / cfg.time_scale
                lag = due - (time.monotonic() - wall0)
                if lag > 0:
                    time.sleep(lag)
            if cfg.pre_encode:
                ev, gt = _restamped(ev, gt, sim0, wall0_epoch_ms, cfg.time_scale)
            value = codec.encode(ev.to_avro())
            send(ev.camera_id.encode(), value)
            cams.add(ev.camera_id)
            report.frames += 1
            report.bytes += len(value)
            report.sim_end_ms = ev.capture_ts
            if gt is not None:
                report.parts += 1
                for d in gt.defects:
                    report.defects += 1
                    report.defects_by_class[d["defect_class"]] = report.defects_by_class.get(d["defect_class"], 0) + 1
                if gt_file:
                    gt_file.write(gt.to_json() + "\n")
            if bar is not None:
                bar.update(1)
        if producer is not None:
            producer.flush(timeout=60)
            for f in futures:
                f.get(timeout=60)
    finally:
        if bar is not None:
            bar.close()
        if gt_file:
            gt_file.close()
        if producer is not None:
            producer.close(timeout=10)
    report.wall_s = time.monotonic() - wall0
    report.cameras = sorted(cams)
    report.ground_truth = str(cfg.ground_truth) if cfg.ground_truth else None
    return report


def _rendered(frames: Iterable[tuple[FrameEvent, GroundTruthPart | None]], cfg: SimulationConfig,
              bar: Any) -> list[tuple[FrameEvent, GroundTruthPart | None]]:
    """Every frame rendered and image-encoded up front (`pre_encode`)."""
    if bar is not None:
        bar.set_description("simulate: rendering")
    out = []
    for item in frames:
        out.append(item)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.reset(total=len(out))
        bar.set_description("simulate: sending")
    return out


def _restamped(ev: FrameEvent, gt: GroundTruthPart | None, sim0: int, start_ms: int,
               time_scale: float) -> tuple[FrameEvent, GroundTruthPart | None]:
    """A pre-rendered frame (and its part's ground truth) stamped with the wall clock of its place in the schedule:
    `start_ms` (when sending began) + its simulated offset from the first frame / `time_scale`."""
    if time_scale <= 0:
        return ev, gt

    def wall(t: int) -> int:
        return start_ms + int(round((t - sim0) / time_scale))

    ev = replace(ev, capture_ts=wall(ev.capture_ts))
    if gt is not None:
        gt = replace(gt, capture_ts=[wall(t) for t in gt.capture_ts])
    return ev, gt


def read_ground_truth(path: str | Path) -> list[GroundTruthPart]:
    with open(path) as fh:
        return [GroundTruthPart.from_json(line) for line in fh if line.strip()]
