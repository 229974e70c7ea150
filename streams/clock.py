"""The clocks of the streaming layer: wall-clock seconds since the epoch and a monotonic reading, injectable.

`InspectPipeline`, the part-timeout timer, `Monitor`, `Replayer` (and its emitter and run log)
take a `clock`; tests pass a fake one (``lambda: 1_790_000_000.0`` or a `FakeClock`) instead of
patching `time`. Durations that decide something (a part's idleness, how long the broker has
answered) are measured on the monotonic clock, which a wall-clock step (NTP, an operator, a
VM resume) does not move; the wall clock only stamps records.
"""
from __future__ import annotations

import time
import uuid
from typing import Callable

Clock = Callable[[], float]
"""Returns wall-clock time in seconds since the epoch (like `time.time`), or, where a parameter
says monotonic, seconds on a clock that never goes back (like `time.monotonic`)."""

MONOTONIC_EPOCH = uuid.uuid4().hex
"""Names this process's monotonic clock: readings are only comparable with readings of the same
epoch (another process, host or boot has its own origin), so a stamp persisted with its epoch can
tell a successor that it is not its own."""


def wall_clock() -> float:
    """The real wall clock (`time.time`, looked up at each call)."""
    return time.time()


def monotonic_clock() -> float:
    """The real monotonic clock (`time.monotonic`, looked up at each call); origin: `MONOTONIC_EPOCH`."""
    return time.monotonic()


def now_ms(clock: Clock = wall_clock) -> int:
    """`clock`'s time in epoch milliseconds."""
    return int(clock() * 1000)


class FakeClock:
    """A wall clock and a monotonic clock for tests: `advance` moves both (time passes), `step`
    moves the wall clock alone (NTP or an operator sets the time; the monotonic clock does not move).

    Call it for the wall time; `monotonic` is the monotonic reading, `epoch` its origin's name.
    """

    def __init__(self, wall: float = 1_790_000_000.0, mono: float = 1_000.0, epoch: str = "fake-clock"):
        self.wall = wall
        self.mono = mono
        self.epoch = epoch

    def __call__(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go back; use step() for a wall-clock step")
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds
