"""Typed records at the border between Kafka (Faust, kafka-python) and the inspection pipeline.

`SourceRecord` is what `streams.inspection.pipeline.InspectPipeline` reads of an input message:
the Faust agent converts each Faust event to one (`streams.inspection.agents.source_record`),
the replayer builds them from kafka-python records. `OutRecord` is what the pipeline hands its
`Emitter`: one DefectEvent, PartInspected or DeadLetter and the key it goes out under.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from schemas.events import Event

OutKind = Literal["defects", "parts", "deadletter", "review_frames", "review_queue"]
OUT_KINDS: frozenset[str] = frozenset(get_args(OutKind))


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One message as read from a topic (raw key and value bytes)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None  # record timestamp, epoch ms (None when the broker gave none)


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One output of the pipeline: `event` to topic/table `kind` (defects|parts|deadletter|review_frames|review_queue) under `key`."""

    kind: OutKind
    key: bytes | None
    event: Event

    def __post_init__(self) -> None:
        if self.kind not in OUT_KINDS:
            raise ValueError(f"unknown output kind {self.kind!r}; one of {sorted(OUT_KINDS)}")
