"""Test doubles for replay/compare unit tests: a kafka-python-like consumer over lists, frames of
simulated-looking parts, and a migrated chdb database (current ClickHouse). The fake Inspector is
the shared one of `tests/unit/fakes.py`."""
from __future__ import annotations

from collections import namedtuple
from typing import Any

import cv2
import numpy as np
import pytest

from schemas.events import FrameEvent
from sinks.migrations import migrate
from sinks.sql import ChdbExecutor

TP = namedtuple("TP", "topic partition")
Rec = namedtuple("Rec", "topic partition offset key value timestamp")
OAT = namedtuple("OAT", "offset timestamp")
CODEC = FrameEvent.codec()


class FakeConsumer:
    """Enough of kafka-python's KafkaConsumer (no group) for the replay: records per partition."""

    def __init__(self, topics: dict[str, dict[int, list[tuple[bytes | None, bytes | None, int]]]],
                 log_start: dict[tuple[str, int], int] | None = None):
        # topic -> partition -> [(key, value, timestamp)]; offsets start at log_start (retention)
        self.topics = topics
        self.log_start = log_start or {}
        self.assigned: list[TP] = []
        self.pos: dict[TP, int] = {}
        self.paused: set[TP] = set()
        self.polls = 0

    def _records(self, tp) -> list[Rec]:
        start = self.log_start.get((tp.topic, tp.partition), 0)
        rows = self.topics[tp.topic][tp.partition]
        return [Rec(tp.topic, tp.partition, start + i, k, v, ts) for i, (k, v, ts) in enumerate(rows)]

    def partitions_for_topic(self, topic: str):
        return set(self.topics[topic]) if topic in self.topics else None

    def beginning_offsets(self, tps):
        return {tp: self.log_start.get((tp.topic, tp.partition), 0) for tp in tps}

    def end_offsets(self, tps):
        return {tp: self.log_start.get((tp.topic, tp.partition), 0) + len(self.topics[tp.topic][tp.partition])
                for tp in tps}

    def offsets_for_times(self, query):
        out = {}
        for tp, ts in query.items():
            hit = next((r for r in self._records(tp) if r.timestamp >= ts), None)
            out[tp] = OAT(hit.offset, hit.timestamp) if hit else None
        return out

    def assign(self, tps):
        self.assigned = [TP(t.topic, t.partition) for t in tps]
        self.paused.clear()

    def seek(self, tp, offset):
        self.pos[TP(tp.topic, tp.partition)] = offset

    def position(self, tp):
        return self.pos.get(TP(tp.topic, tp.partition), 0)

    def pause(self, *tps):
        self.paused.update(TP(t.topic, t.partition) for t in tps)

    def poll(self, timeout_ms=0, max_records=None):
        self.polls += 1
        out = {}
        budget = max_records or 10_000
        for tp in self.assigned:
            if tp in self.paused or budget <= 0:
                continue
            recs = [r for r in self._records(tp) if r.offset >= self.pos.get(tp, 0)][:budget]
            if recs:
                out[tp] = recs
                self.pos[tp] = recs[-1].offset + 1
                budget -= len(recs)
        return out

    def close(self):
        pass


def frame(cam: str, part: str, seq: int, idx: int, last: bool, x: int | None, width: int = 10,
          bright: int = 250) -> bytes:
    img = np.full((64, 128), 100, np.uint8)
    if x is not None:
        img[20:30, x:x + width] = bright
    ev = FrameEvent(camera_id=cam, line_id="line-1", part_id=part, frame_seq=seq, capture_ts=seq, encoding="PNG",
                    width=128, height=64, channels=1, image=cv2.imencode(".png", img)[1].tobytes(),
                    frame_index=idx, last_frame=last, conveyor_speed_mm_s=100.0, pixels_per_mm=1.0)
    return CODEC.encode(ev.to_avro())


T0 = 1_763_700_000_000


def part_frames(cam: str, start_ms: int, *, frames: int = 3, defect: bool = True, width: int = 10,
                bright: int = 250) -> list[tuple[bytes, bytes, int]]:
    """(key, value, record timestamp) of one part; the defect moves 10 px left per 100 ms frame."""
    part = f"{cam}-{start_ms}"
    out = []
    for i in range(frames):
        seq = start_ms + 100 * i
        x = 80 - 10 * i if defect else None
        out.append((cam.encode(), frame(cam, part, seq, i, i == frames - 1, x, width, bright), seq))
    return out


@pytest.fixture
def chdb(tmp_path) -> Any:
    ex = ChdbExecutor(str(tmp_path / "chdb"))
    migrate(ex)
    yield ex
    ex.close()
