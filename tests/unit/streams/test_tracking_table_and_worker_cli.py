"""Tracking-table glue (state round trip, idle-part scan) and the `worker` command's wiring."""
from __future__ import annotations

from streams.cli import build_parser
from streams.settings import PlantSettings, TrackingSettings
from streams.tracking.table import OpenPart, TrackingTable
from streams.tracking.tracker import CameraState, PartTracker
from streams.tracking.types import FrameMeta


def _table() -> TrackingTable:
    """A TrackingTable over a plain dict (the Faust table is exercised in the integration tests)."""
    t = TrackingTable.__new__(TrackingTable)
    t.table = {}
    return t


def _meta(part: str, seq: int, ts: int) -> FrameMeta:
    return FrameMeta("cam-1", "line-1", part, seq, ts, 256, 128, frame_index=0)


def test_state_round_trips_and_idle_parts_are_found():
    table = _table()
    assert table.load("cam-1").part is None  # a new camera starts empty
    state = CameraState("cam-1")
    state.observe(PartTracker(TrackingSettings()), _meta("p-1", 10, 1_000), [], model_version="m",
                  run_id="production", plant=PlantSettings(timezone="UTC"), now_ms=1_000)
    table.table[b"cam-1"] = state.to_dict()  # what save() writes under the frame's event
    loaded = table.load("cam-1")
    assert loaded.part is not None and loaded.part.part_id == "p-1"
    assert table.idle_parts(now_ms=2_000, timeout_s=30) == []
    assert table.idle_parts(now_ms=40_000, timeout_s=30) == [OpenPart("cam-1", "p-1", 10, 1_000)]


def test_worker_command_is_registered_with_help():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["worker"]  # noqa: SLF001
    assert "faust" in sub.description.lower()
    args = parser.parse_args(["worker", "--loglevel", "warning", "--app-id", "plant-7"])
    assert args.func.__module__ == "streams.commands.worker" and args.app_id == "plant-7"
