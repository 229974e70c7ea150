"""Test doubles shared by the unit tests of the inspection pipeline and the replay: no Kafka, no model.

- `FakeInspector`: an `models.core.types.Inspector` that finds one defect per bright square;
- `MemoryStore`: the replay's in-memory `MemoryStateStore`, counting saves;
- `ListEmitter`: an `Emitter` that keeps what it is sent (or fails like a broker that is down);
- `kinds`: (kind, error class or closed reason) of emitted records, for compact assertions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from models.core.types import BBox, Detection
from streams.kafka.records import OutRecord, SourceRecord
from streams.replay.replayer import MemoryStateStore
from streams.tracking.tracker import CameraState


class FakeInspector:
    """One detection per bright square (pixels > `threshold`) on a frame, class 'scratch' (or 'crack'
    when the square is at least `crack_width` wide); `detects=False` finds nothing ever.

    An all-255 frame raises (a poisonous frame: bad input). `fail_next`: that many calls raise
    `error` first (a model that is unwell for a while). `calls` counts `inspect` calls.
    """

    device = "cpu"
    family = "fake"

    def __init__(self, version: str = "fake-1", *, threshold: int = 200, crack_width: int | None = None,
                 detects: bool = True, fail_next: int = 0, error: Exception | None = None):
        self.model_version = version
        self.class_names = ["scratch", "crack"] if crack_width is not None else ["scratch"]
        self.threshold = threshold
        self.crack_width = crack_width
        self.detects = detects
        self.fail_next = fail_next
        self.error = error or RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.calls = 0

    def inspect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise self.error
        if not self.detects:
            return [[] for _ in frames]
        out: list[list[Detection]] = []
        for f in frames:
            if f.min() == 255:
                raise RuntimeError("poisonous frame")
            ys, xs = np.nonzero(f > self.threshold)
            if len(xs) == 0:
                out.append([])
                continue
            b = BBox(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            cls = "crack" if self.crack_width is not None and b.width >= self.crack_width else "scratch"
            out.append([Detection(b, np.ones((b.height, b.width), bool), cls, 0.9, 4.0, 5.0, b.area)])
        return out

    def inspect_scored(self, frames: Sequence[np.ndarray]) -> tuple[list[list[Detection]], list[float]]:
        dets = self.inspect(frames)
        return dets, [max((d.confidence for d in ds), default=0.0) for ds in dets]


class MemoryStore(MemoryStateStore):
    """The replay's in-memory state store, counting `saves`."""

    def __init__(self, data: dict[str, dict] | None = None):
        super().__init__(data)
        self.saves = 0

    def save(self, state: CameraState, source: SourceRecord) -> None:
        self.saves += 1
        super().save(state, source)


class ListEmitter:
    """Keeps the records it is sent in `sent`, each encoded first (as the producer would); `fail`:
    raises like a broker that is down; `max_record_bytes`: refuses a larger record like the
    producer's max.request.size."""

    def __init__(self, fail: bool = False, max_record_bytes: int | None = None):
        self.sent: list[OutRecord] = []
        self.fail = fail
        self.max_record_bytes = max_record_bytes

    async def send_all(self, records: Sequence[OutRecord]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        for r in records:  # every record must encode (as the producer's serializer would)
            size = len(type(r.event).codec().encode(r.event.to_avro()))
            if self.max_record_bytes is not None and size > self.max_record_bytes:
                raise RuntimeError(f"MessageSizeTooLargeError: {r.kind} record of {size} bytes")
        self.sent.extend(records)


def kinds(records: Sequence[OutRecord]) -> list[tuple[str, str | None]]:
    """(kind, error class of a dead letter or closed reason of a part, else None) per record."""
    return [(r.kind, getattr(r.event, "error_class", None) or getattr(r.event, "closed_reason", None))
            for r in records]
