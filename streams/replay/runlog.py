"""The run log of replays: one logical row per run in `model_runs`, updated in place.

A `RunRecord` says what a replay is (model, range, topic, cameras) and how far it got (offsets,
tracker states, range bookkeeping, counters); `RunLog` writes it (JSON in `note`) with strictly
increasing versions, so ReplacingMergeTree keeps the newest; `load_run_record` reads it back to
resume a run.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sinks.sql import Executor, render
from streams.clock import Clock, wall_clock

RUN_KIND = "replay"

STATUS_RUNNING = "running"
STATUS_INTERRUPTED = "interrupted"
STATUS_FAILED = "failed"
STATUS_DONE = "done"


@dataclass
class RunRecord:
    """One replay run: what it is (model, range) and how far it got; stored as JSON in `note`."""

    run_id: str
    model_version: str
    model_path: str | None
    model_hashes: dict[str, str]
    from_ms: int
    until_ms: int
    frames_topic: str
    cameras: list[str] | None
    started_at: int
    status: str = STATUS_RUNNING
    finished_at: int | None = None
    frames_read: int = 0
    frames_skipped: dict[str, int] = field(default_factory=dict)
    parts: int = 0
    parts_fail: int = 0
    defects: int = 0
    deadletters: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    plan: dict[str, list[int]] = field(default_factory=dict)  # partition -> [start, stop, end]
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> next offset to read
    gate: dict[str, Any] = field(default_factory=dict)
    states: dict[str, dict] = field(default_factory=dict)  # camera -> CameraState dict
    updated_at: int = 0

    def note(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_note(cls, note: str) -> "RunRecord":
        d = json.loads(note)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def row(self, version: int) -> tuple:
        """`model_runs` row (MODEL_RUN_COLUMNS); recorded_at = start, so updates replace one key."""
        return (self.run_id, self.model_version, RUN_KIND, self.from_ms, self.until_ms, self.note(),
                self.started_at, version)

    def same_job(self, other: "RunRecord") -> list[str]:
        """What differs between two records of the same run id (model, range, topic, cameras)."""
        diffs = []
        for name in ("model_version", "from_ms", "until_ms", "frames_topic"):
            if getattr(self, name) != getattr(other, name):
                diffs.append(f"{name} {getattr(other, name)!r} (stored) vs {getattr(self, name)!r}")
        if sorted(self.cameras or []) != sorted(other.cameras or []):
            diffs.append(f"cameras {other.cameras!r} (stored) vs {self.cameras!r}")
        return diffs


def run_record_sql(run_id: str) -> str:
    """Rendered SQL: the latest note of each replay record of `run_id` (newest version wins)."""
    return render(
        """
SELECT model_version, recorded_at, argMax(note, version) AS last_note, max(version) AS v
FROM model_runs
WHERE run_id = {run} AND kind = {kind}
GROUP BY model_version, recorded_at
ORDER BY v DESC""",
        {"run": run_id, "kind": RUN_KIND},
    )


def load_run_record(ex: Executor, run_id: str) -> RunRecord | None:
    """The stored record of a replay run, or None when the run id is new."""
    rows = ex.query(run_record_sql(run_id))
    if not rows:
        return None
    return RunRecord.from_note(rows[0][2])


class RunLog:
    """Writes record updates with strictly increasing versions."""

    def __init__(self, ex: Executor, clock: Clock = wall_clock):
        self.ex = ex
        self.clock = clock
        self._last = 0

    def write(self, rec: RunRecord) -> None:
        from sinks.clickhouse import MODEL_RUN_COLUMNS

        v = max(int(self.clock() * 1000), self._last + 1)
        self._last = v
        rec.updated_at = v
        self.ex.insert("model_runs", MODEL_RUN_COLUMNS, [rec.row(v)])
