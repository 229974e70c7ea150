"""Plant shift calendar: which shift a timestamp falls in, in the plant's timezone.

Shifts are wall-clock intervals (`start` inclusive, `end` exclusive) that may cross midnight
(a night shift 22:00–06:00 belongs to the day it starts on). Daylight-saving changes are handled
by resolving wall-clock starts in the plant timezone, so a shift on a DST day is an hour shorter
or longer, as on the shop floor.
"""
from __future__ import annotations

import datetime as dt
from typing import NamedTuple
from zoneinfo import ZoneInfo

from streams.settings import PlantSettings, Shift


class ShiftSlot(NamedTuple):
    """One concrete occurrence of a shift."""

    name: str
    start_ms: int  # UTC epoch ms of the shift's start
    end_ms: int  # UTC epoch ms of its end (exclusive)
    date: dt.date  # plant-local date the shift starts on


def _minutes(t: dt.time) -> int:
    return t.hour * 60 + t.minute


def _occurrence(shift: Shift, day: dt.date, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, shift.start, tzinfo=tz)
    end_day = day + dt.timedelta(days=1) if _minutes(shift.end) <= _minutes(shift.start) else day
    end = dt.datetime.combine(end_day, shift.end, tzinfo=tz)
    return start, end


def shift_at(ts_ms: int, plant: PlantSettings) -> ShiftSlot:
    """The shift that contains `ts_ms`.

    Raises:
        LookupError: the calendar has a gap at that time (no shift covers it); the message names
            the local time so the calendar can be fixed.
    """
    tz = ZoneInfo(plant.timezone)
    when = dt.datetime.fromtimestamp(ts_ms / 1000.0, tz=dt.timezone.utc)
    local_day = when.astimezone(tz).date()
    # A shift containing `when` started on the local day or, when it crosses midnight, the day before.
    for day in (local_day, local_day - dt.timedelta(days=1)):
        for shift in plant.shifts:
            start, end = _occurrence(shift, day, tz)
            if start <= when < end:
                return ShiftSlot(shift.name, int(start.timestamp() * 1000), int(end.timestamp() * 1000), day)
    raise LookupError(f"no shift of the calendar covers {when.astimezone(tz).isoformat()} ({plant.timezone})")
