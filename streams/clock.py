"""The one clock type of the streaming layer: wall-clock seconds since the epoch, injectable.

`InspectPipeline`, the part-timeout timer, `Monitor`, `Replayer` (and its emitter and run log)
take a `clock`; tests pass a fake one (``lambda: 1_790_000_000.0``) instead of patching `time`.
"""
from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], float]
"""Returns wall-clock time in seconds since the epoch (like `time.time`)."""


def wall_clock() -> float:
    """The real wall clock (`time.time`, looked up at each call)."""
    return time.time()


def now_ms(clock: Clock = wall_clock) -> int:
    """`clock`'s time in epoch milliseconds."""
    return int(clock() * 1000)
