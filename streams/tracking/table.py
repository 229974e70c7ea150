"""The tracking table: Faust Table camera id -> CameraState dict (changelog in Kafka, rocksdict).

Co-partitioned with `frames` (same partition count, key = camera id), so the worker that owns a
camera's partition owns its state; after a restart or a rebalance the state is restored from the
changelog and open parts continue; an open part times out only once its camera's partition has
no unprocessed frame left (the `caught_up` gate of `idle_parts`, see `streams.inspection.agents`).
The frames partition of a camera is the one its key hashes to (frames read elsewhere are
dead-lettered), so the table entry, the frames and the timeout requests share it. When a part closes, the camera's value is reset to the
sequence guard alone (a few hundred bytes).
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, NamedTuple

# Faust keeps the event being processed in this context variable; table writes use its
# partition. A micro-batch mixes cameras (and partitions), so each camera's write runs under one
# of that camera's own events (see `event_context`).
from faust.streams import _current_event

from streams.kafka.records import SourceRecord
from streams.settings import Settings
from streams.tracking.tracker import CameraState


class OpenPart(NamedTuple):
    """An open part as the inactivity timer sees it."""

    camera_id: str
    part_id: str
    last_seq: int
    touched_ms: int


@contextmanager
def event_context(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event (table writes go to its partition)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class _SourceEvent:
    """What Faust's table reads of the current event (`.message.topic`, `.message.partition`),
    for a `SourceRecord` (weak-referenceable, as Faust holds the current event by weakref)."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, source: SourceRecord):
        self.message = source


class TrackingTable:
    """Load/save per-camera tracker state in a Faust table."""

    def __init__(self, app: Any, settings: Settings, name: str = "tracking"):
        options = {"driver": "rocksdict"} if settings.worker.store.startswith("rocksdb") else None
        self.table = app.Table(
            name,
            default=None,
            partitions=settings.kafka.partitions,
            key_type=bytes,  # raw camera id bytes, hashed like the frames' keys
            options=options,
        )

    def load(self, camera_id: str) -> CameraState:
        raw = self.table.get(camera_id.encode())
        return CameraState.from_dict(raw) if raw else CameraState(camera_id)

    def save(self, state: CameraState, source: SourceRecord) -> None:
        """Store `state` under the partition of `source` (a frame or timeout request of that camera)."""
        event = _SourceEvent(source)  # held here: the context keeps only a weak reference
        with event_context(event):
            self.table[state.camera_id.encode()] = state.to_dict()

    def idle_parts(self, now_ms: int, timeout_s: float, caught_up: Callable[[str], bool] | None = None,
                   observed_since: Callable[[str], int | None] | None = None,
                   epoch: str | None = None) -> list[OpenPart]:
        """Open parts (in the locally held partitions) with no frame for `timeout_s`.

        `caught_up(camera_id)`: whether every frame of the camera's partition has been processed;
        parts of cameras for which it is False are never idle (their frames may wait in the
        backlog). `observed_since(camera_id)`: since when (ms) the worker has seen the camera's
        partition through a broker that answers, without a break (None: not now); a part is idle
        only after `timeout_s` of that too, so a broker outage, during which cameras cannot publish,
        never counts as the camera's silence. None: no such gates. `now_ms` and `observed_since` are
        monotonic readings on the clock named `epoch` (see `CameraState.idle_part`)."""
        return idle_parts(self.table.items(), now_ms, timeout_s, caught_up, observed_since, epoch)


def idle_parts(items: Iterable[tuple[Any, Any]], now_ms: int, timeout_s: float,
               caught_up: Callable[[str], bool] | None = None,
               observed_since: Callable[[str], int | None] | None = None,
               epoch: str | None = None) -> list[OpenPart]:
    """The idle open parts among table `items` (key, CameraState dict); see `TrackingTable.idle_parts`."""
    out = []
    for _key, raw in list(items):
        if not raw or not raw.get("part"):
            continue
        state = CameraState.from_dict(raw)
        if state.part is None or (caught_up is not None and not caught_up(state.camera_id)):
            continue
        if observed_since is not None:
            since = observed_since(state.camera_id)
            if since is None or now_ms - since < timeout_s * 1000:
                continue
        if state.idle_part(now_ms, timeout_s, epoch) is not None:
            p = state.part
            out.append(OpenPart(state.camera_id, p.part_id, p.seqs[-1], p.touched_ms))
    return out
