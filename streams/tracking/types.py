"""Types the tracker shares with intake and the pipeline: a frame's metadata, a part's policy
snapshot, a sequence-guard rejection, and what closing a part emits. No logic, so that intake
reads them without importing the tracker."""
from __future__ import annotations

from typing import NamedTuple

from schemas.events import DefectEvent, PartInspected


class FrameMeta(NamedTuple):
    """What the tracker needs to know about one frame (everything but the pixels)."""

    camera_id: str
    line_id: str
    part_id: str
    frame_seq: int
    capture_ts: int  # epoch ms
    width: int
    height: int
    frame_index: int = 0
    last_frame: bool = False
    speed_px_s: float | None = None  # conveyor_speed_mm_s * pixels_per_mm, when both are known


class PartPolicy(NamedTuple):
    """Per-part settings snapshot taken when the part opens (camera overrides applied)."""

    line_id: str | None = None  # overrides the frame's line id
    roi: tuple[int, int, int, int] | None = None  # detections whose centre is outside are ignored
    min_confidence: float | None = None
    fail_severity: float | None = None
    frames_per_part: int | None = None


class FrameRejection(NamedTuple):
    """A frame the sequence guard refuses; goes to the dead-letter topic."""

    error_class: str  # duplicate_frame | out_of_order_frame | late_frame
    reason: str


class PartOutcome(NamedTuple):
    """What closing one part emits: one verdict and one event per confirmed defect; `tracks` every
    track's summary at close (confirmed or not: `streams.tracking.tracker.TrackSummary`), for review sampling."""

    part: PartInspected
    defects: list[DefectEvent]
    tracks: tuple = ()
