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
    schema_version: int = 1


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
    schema_version: int = 2


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
