"""Typed event records mirroring the Avro schemas; `to_avro()` / `from_avro()` bridge to the codec.

Timestamps are epoch milliseconds (UTC) as ints, enums are their symbol strings.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from schemas.codec import AvroCodec, Framing

E = TypeVar("E", bound="Event")


def deterministic_id(*parts: object) -> str:
    """Stable 32-hex-char id from the given parts (same parts → same id, on every machine)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode())
    return h.hexdigest()[:32]


def emission_id_of(verdict: "PartInspected", defects: "list[DefectEvent]") -> str:
    """Id of one close of a part: the verdict's id and everything the close produced.

    The same part re-closed with the same result (a crash after emitting) gets the same id, so the
    re-emitted events are exact duplicates; a re-close that found another defect set (other batch
    boundaries after a crash, other track ids) gets another id, and its defects can be told apart
    from the first close's. Fields the close does not decide (ids of the emission itself,
    schema_version) are left out.
    """
    ds = sorted(
        (d.event_id, d.track_id, d.defect_class, round(float(d.severity), 3), round(float(d.confidence), 4),
         tuple(sorted(d.bbox.items())), d.best_frame_seq, d.area_px, d.frames_seen, d.frames_total)
        for d in defects
    )
    return deterministic_id(
        "emission", verdict.event_id, verdict.verdict, verdict.frames, verdict.first_frame_ts, verdict.last_frame_ts,
        verdict.closed_reason, verdict.defects_total, sorted(verdict.defect_counts.items()), verdict.shift_name,
        verdict.shift_start, ds,
    )


class Event:
    """Base of the typed events: each subclass names its Avro schema in `SCHEMA`."""

    SCHEMA: ClassVar[str]

    def to_avro(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_avro(cls: type[E], record: dict[str, Any]) -> E:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in record.items() if k in names})

    @classmethod
    def codec(cls, framing: Framing = "single_object") -> AvroCodec:
        return AvroCodec(cls.SCHEMA, framing)


@dataclass
class FrameEvent(Event):
    SCHEMA: ClassVar[str] = "FrameEvent"
    camera_id: str
    line_id: str
    part_id: str
    frame_seq: int
    capture_ts: int
    encoding: str  # JPEG | PNG | RAW
    width: int
    height: int
    channels: int
    image: bytes
    frame_index: int = 0
    last_frame: bool = False
    exposure_us: float | None = None
    conveyor_speed_mm_s: float | None = None
    pixels_per_mm: float | None = None
    schema_version: int = 2


@dataclass
class DefectEvent(Event):
    SCHEMA: ClassVar[str] = "DefectEvent"
    event_id: str
    camera_id: str
    line_id: str
    part_id: str
    track_id: int
    defect_class: str
    severity: float
    severity_max: float
    confidence: float
    bbox: dict[str, int]
    best_frame_seq: int
    area_px: int
    frames_seen: int
    frames_total: int
    first_frame_ts: int
    last_frame_ts: int
    model_version: str
    run_id: str
    class_votes: dict[str, float] = field(default_factory=dict)
    shift: str = ""  # its part's shift, stamped at close ('' before version 2)
    shift_start: int = 0  # UTC ms start of that shift (0 before version 2)
    emission_id: str = ""  # emission_id of the PartInspected it was emitted with ('' before version 2)
    schema_version: int = 2


@dataclass
class PartInspected(Event):
    SCHEMA: ClassVar[str] = "PartInspected"
    event_id: str
    camera_id: str
    line_id: str
    part_id: str
    verdict: str  # PASS | FAIL
    defects_total: int
    frames: int
    first_frame_ts: int
    last_frame_ts: int
    closed_reason: str  # LAST_FRAME | NEXT_PART | TIMEOUT
    model_version: str
    run_id: str
    shift_name: str
    shift_start: int
    defect_counts: dict[str, int] = field(default_factory=dict)
    shift: str = ""  # = shift_name (the name DefectEvent uses); filled from shift_name when left empty
    emission_id: str = ""  # id of this close of the part, see `emission_id_of()` ('' before version 3)
    # the model the part opened with when it finished on another (its model was gone); '' otherwise / before v4
    opened_model_version: str = ""
    schema_version: int = 4

    def __post_init__(self) -> None:
        # a verdict written before version 3 decodes with shift '' but has its shift in shift_name
        if not self.shift:
            self.shift = self.shift_name
        elif not self.shift_name:
            self.shift_name = self.shift


@dataclass
class Alert(Event):
    SCHEMA: ClassVar[str] = "Alert"
    alert_id: str
    kind: str  # SPIKE | RECOVERY
    line_id: str
    metric: str
    rate: float
    center: float
    limit: float
    rule: str
    inspected: int
    defective: int
    window_start: int
    window_end: int
    created_at: int
    message: str
    camera_id: str | None = None
    defect_class: str | None = None
    schema_version: int = 1


@dataclass
class DeadLetter(Event):
    SCHEMA: ClassVar[str] = "DeadLetter"
    topic: str
    partition: int
    offset: int
    original: bytes
    reason: str
    error_class: str
    failed_at: int
    key: bytes | None = None
    camera_id: str | None = None
    original_kept: bool = True  # False: `original` left out for its size (see size and sha256)
    original_size: int | None = None
    original_sha256: str | None = None
    schema_version: int = 2


@dataclass
class ReviewFrame(Event):
    """A sampled production frame kept for review (the durable store), with the model's detections."""

    SCHEMA: ClassVar[str] = "ReviewFrame"
    frame_id: str
    camera_id: str
    line_id: str
    part_id: str
    frame_seq: int
    capture_ts: int
    encoding: str
    width: int
    height: int
    channels: int
    image: bytes
    model_version: str
    run_id: str
    sampled_at: int
    frame_index: int = 0
    det_class: list[str] = field(default_factory=list)
    det_confidence: list[float] = field(default_factory=list)
    det_x0: list[int] = field(default_factory=list)
    det_y0: list[int] = field(default_factory=list)
    det_x1: list[int] = field(default_factory=list)
    det_y1: list[int] = field(default_factory=list)
    schema_version: int = 1


def review_frame_id(camera_id: str, part_id: str, frame_seq: int) -> str:
    """Id of a sampled frame: the same frame sampled again (a re-delivery) has the same id."""
    return deterministic_id("frame", camera_id, part_id, frame_seq)


@dataclass
class ReviewCandidate(Event):
    """One entry of the review queue: which frame, why (`reason`), and the detection in question."""

    SCHEMA: ClassVar[str] = "ReviewCandidate"
    candidate_id: str
    frame_id: str
    reason: str
    score: float
    camera_id: str
    line_id: str
    part_id: str
    frame_seq: int
    capture_ts: int
    model_version: str
    run_id: str
    created_at: int
    defect_class: str = ""
    confidence: float = 0.0
    bbox_x0: int = 0
    bbox_y0: int = 0
    bbox_x1: int = 0
    bbox_y1: int = 0
    note: str = ""
    schema_version: int = 1
