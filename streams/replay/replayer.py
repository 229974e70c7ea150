"""`defectstream replay`: a time range of `frames` through another model, stored under its own run id.

The replay reads the recorded frames of ``[--from, --until)`` (Kafka record timestamps) straight
from the partitions, with no consumer group at all: nothing is committed, so the production
worker's offsets, the production tables (rows carry the replay's ``run_id``) and the production
alerts (the monitor only reads ``run_id = 'production'``) are untouched, also while production runs.

The frames go through the production code path, :class:`streams.inspection.agents.InspectPipeline`
(decode → inspect → track → close), with an in-memory :class:`MemoryStateStore` and a
:class:`ClickHouseEmitter` that writes the DefectEvent/PartInspected rows directly into the
`defects`/`parts` tables through `sinks.clickhouse` (same row mapping as the sink). Direct writes,
not the `defects`/`parts` topics, because (1) consumers of those topics (scoring, downstream
systems) would see replay events mixed with production, (2) the replay could not know when its
rows are durable without waiting on the sink, and progress must only advance after they are.

Range semantics (what a part-wise comparison needs):
* start offsets come from ``offsets_for_times(--from)`` on every partition, stop offsets from
  ``offsets_for_times(--until)``; end offsets at start bound the run, so it always terminates;
* a camera's leading frames that continue a part begun before ``--from`` are skipped;
* a part still open at a partition's stop offset is read to its end (up to the end offset seen at
  start); what is still open then is closed as production does after inactivity (TIMEOUT).

Resumable: rows are buffered and flushed, then the progress (next offset per partition, tracker
state per camera, range bookkeeping, counters) is written to `model_runs` (one logical row per run,
updated in place through ReplacingMergeTree). ``--run-id`` of an unfinished run continues from its
last progress; ids are deterministic and, on a resumed run, rows whose ids are already stored are
not inserted again.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from models.core.types import Inspector
from schemas.events import Event, FrameEvent, PartInspected
from sinks.sql import Executor, quote, render
from streams.clock import Clock, now_ms, wall_clock
from streams.kafka.records import OutRecord, SourceRecord
from streams.replay.runlog import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    RunLog,
    RunRecord,
    load_run_record,
)
from streams.settings import Settings
from streams.tracking.tracker import CameraState

if TYPE_CHECKING:
    from schemas.codec import AvroCodec
    from streams.inspection.intake import IntakeLimits
    from streams.inspection.pipeline import InspectPipeline

log = logging.getLogger(__name__)

PRODUCTION_RUN = "production"


class ReplayError(RuntimeError):
    """The replay cannot start or continue (bad run id, range removed by retention, mismatch on resume)."""


class RangeRemovedError(ReplayError):
    """The start of the requested range is no longer in the topic (deleted by retention)."""


# --------------------------------------------------------------------------------------------
# Range planning (pure)
# --------------------------------------------------------------------------------------------
class OffsetAt(NamedTuple):
    """What `offsets_for_times` found on one partition: the first record at/after a time."""

    offset: int
    timestamp: int


class PartitionPlan(NamedTuple):
    """Offsets of one partition: read [start, stop); parts open at stop may be finished up to `end`."""

    start: int
    stop: int
    end: int


def plan_partitions(
    *,
    from_ms: int,
    at_from: dict[int, OffsetAt | None],
    at_until: dict[int, OffsetAt | None],
    beginning: dict[int, int],
    end: dict[int, int],
    allow_partial: bool = False,
) -> dict[int, PartitionPlan]:
    """Per-partition offsets of the range.

    Args:
        from_ms: the range start (record timestamp, epoch ms).
        at_from / at_until: `offsets_for_times` results for --from / --until (None: no record at or
            after that time, i.e. the range starts/ends at the end of the partition).
        beginning / end: earliest retained offset and end offset (high watermark) now.
        allow_partial: do not raise when retention removed the range's start.
    Raises:
        RangeRemovedError: on a partition whose log start was advanced by retention (earliest
            retained offset > 0) and whose first retained record is later than `from_ms`: frames
            of the range were deleted.
    """
    plans: dict[int, PartitionPlan] = {}
    removed: list[str] = []
    for p in sorted(end):
        hi = end[p]
        lo = beginning.get(p, 0)
        f = at_from.get(p)
        u = at_until.get(p)
        start = f.offset if f is not None else hi
        stop = u.offset if u is not None else hi
        if f is not None and lo > 0 and f.offset <= lo and f.timestamp > from_ms:
            removed.append(f"partition {p}: earliest retained frame at {_iso(f.timestamp)} (offset {lo})")
        start = max(start, lo)
        stop = max(min(stop, hi), start)
        plans[p] = PartitionPlan(start, stop, hi)
    if removed and not allow_partial:
        raise RangeRemovedError(
            f"the range start {_iso(from_ms)} was removed by retention ({'; '.join(removed)}); "
            "replay from a later --from, or pass --allow-partial to replay what is left"
        )
    return plans


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------
# Which frames of the range are fed to the pipeline (pure)
# --------------------------------------------------------------------------------------------
SKIP_CAMERA = "other_camera"
SKIP_PARTIAL = "part_before_range"
SKIP_AFTER = "after_range"


@dataclass
class RangeGate:
    """Decides per frame whether it belongs to the replay, keeping whole parts only.

    `started`: cameras whose first part in the range has begun (frames before it continue a part
    that started before --from). `open_part`: the part id of each camera's last admitted frame
    while that part is open. `partitions`: camera → partition it was read from.
    """

    stop: dict[int, int]
    cameras: frozenset[str] | None = None
    started: set[str] = field(default_factory=set)
    open_part: dict[str, str] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)

    def admit(self, partition: int, offset: int, camera_id: str, part_id: str, frame_index: int,
              last_frame: bool) -> str | None:
        """None when the frame is to be processed, else the reason it is skipped."""
        if self.cameras is not None and camera_id not in self.cameras:
            return SKIP_CAMERA
        self.partitions[camera_id] = partition
        if offset >= self.stop.get(partition, 0):
            if self.open_part.get(camera_id) != part_id:
                return SKIP_AFTER
        elif camera_id not in self.started:
            if frame_index != 0:
                return SKIP_PARTIAL
            self.started.add(camera_id)
        if last_frame:
            self.open_part.pop(camera_id, None)
        else:
            self.open_part[camera_id] = part_id
        return None

    def draining_done(self, partition: int) -> bool:
        """No camera of `partition` has a part left open (read past stop only while one has)."""
        return not any(self.partitions.get(c) == partition for c in self.open_part)

    def to_dict(self) -> dict[str, Any]:
        return {"started": sorted(self.started), "open_part": dict(self.open_part),
                "partitions": dict(self.partitions)}

    def restore(self, d: dict[str, Any]) -> None:
        self.started = set(d.get("started", []))
        self.open_part = dict(d.get("open_part", {}))
        self.partitions = {k: int(v) for k, v in d.get("partitions", {}).items()}


# --------------------------------------------------------------------------------------------
# The pipeline's StateStore and Emitter for a replay
# --------------------------------------------------------------------------------------------
class MemoryStateStore:
    """Tracker state per camera in a dict (the replay is the only reader); JSON-able snapshots."""

    def __init__(self, data: dict[str, dict] | None = None):
        self.data: dict[str, dict] = dict(data or {})

    def load(self, camera_id: str) -> CameraState:
        d = self.data.get(camera_id)
        return CameraState.from_dict(d) if d else CameraState(camera_id)

    def save(self, state: CameraState, source: SourceRecord) -> None:
        self.data[state.camera_id] = state.to_dict()

    def snapshot(self) -> dict[str, dict]:
        """A copy that later saves do not change (each save stores a fresh dict)."""
        return dict(self.data)

    def open_parts(self) -> list[tuple[str, str, int]]:
        """(camera, part id, last frame seq) of every open part."""
        out = []
        for cam, d in sorted(self.data.items()):
            part = d.get("part")
            if part and part.get("seqs"):
                out.append((cam, part["part_id"], int(part["seqs"][-1])))
        return out


@dataclass
class EmitCounts:
    parts: int = 0
    defects: int = 0
    fail: int = 0
    deadletters: dict[str, int] = field(default_factory=dict)
    skipped_existing: int = 0


def _review_id(ev: Any) -> str:
    return getattr(ev, "candidate_id", None) or ev.frame_id


class ClickHouseEmitter:
    """`Emitter` of the pipeline that stores defects/parts rows in ClickHouse (sinks.clickhouse rows).

    Records are held until `flush()`; `mark_complete()` (after a whole batch went through the
    pipeline) makes them flushable, so a flush never writes half a batch. Dead letters are counted
    per error class (not published: the production `deadletter` topic stays production's).
    With `skip_existing`, ids already stored for this run are not inserted again (resume).
    """

    def __init__(self, ex: Executor, settings: Settings, run_id: str, *, skip_existing: bool = False,
                 clock: Clock = wall_clock):
        from sinks.clickhouse import (DEFECT_COLUMNS, PART_COLUMNS, REVIEW_FRAME_COLUMNS, REVIEW_QUEUE_COLUMNS, defect_row,
                                      part_row, review_candidate_row, review_frame_row)

        self.ex = ex
        self.plant = settings.plant
        self.run_id = run_id
        self.skip_existing = skip_existing
        self.clock = clock
        self._cols = {"defects": DEFECT_COLUMNS, "parts": PART_COLUMNS, "review_frames": REVIEW_FRAME_COLUMNS,
                      "review_queue": REVIEW_QUEUE_COLUMNS}
        self._row = {"defects": defect_row, "parts": part_row,
                     "review_frames": lambda e, _plant, now: review_frame_row(e, now),
                     "review_queue": lambda e, _plant, now: review_candidate_row(e, now)}
        self._pending: list[tuple[str, Event]] = []
        self._ready: list[tuple[str, Event]] = []
        self.counts = EmitCounts()

    async def send_all(self, records: Sequence[OutRecord]) -> None:
        for r in records:
            if r.kind == "deadletter":
                cls = getattr(r.event, "error_class", "unknown")
                self.counts.deadletters[cls] = self.counts.deadletters.get(cls, 0) + 1
            elif r.kind in self._cols:
                self._pending.append((r.kind, r.event))
            else:  # pragma: no cover - OutRecord has no other kinds
                raise ValueError(f"unknown record kind {r.kind!r}")

    def mark_complete(self) -> None:
        self._ready.extend(self._pending)
        self._pending.clear()

    def discard_incomplete(self) -> None:
        self._pending.clear()

    @property
    def buffered(self) -> int:
        return len(self._ready)

    @property
    def parts_done(self) -> int:
        """Part verdicts of completed batches, flushed or not."""
        return self.counts.parts + sum(1 for kind, _ in self._ready if kind == "parts")

    def _existing(self, table: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        in_list = "(" + ", ".join(quote(i) for i in ids) + ")"  # a tuple: `IN [..]` is not IN on 18.16
        sql = render(f"SELECT DISTINCT event_id FROM {table} WHERE run_id = {{run}} AND event_id IN {in_list}",
                     {"run": self.run_id})
        return {r[0] for r in self.ex.query(sql)}

    def flush(self) -> int:
        """Insert the completed batches' rows (defects first, then the part verdicts); returns rows written.

        Raises whatever the executor raises; the rows stay buffered then.
        """
        if not self._ready:
            return 0
        now = int(self.clock() * 1000)
        written = 0
        for table in ("defects", "parts", "review_frames", "review_queue"):  # a part's verdict after its defects
            if table.startswith("review"):  # deterministic ids in tables that keep one row per id: no skip needed
                evs = list({_review_id(e): e for kind, e in self._ready if kind == table}.values())
                rows = [self._row[table](e, self.plant, now) for e in evs]
                if rows:
                    self.ex.insert(table, self._cols[table], rows)
                    written += len(rows)
                self._ready = [(kind, ev) for kind, ev in self._ready if kind != table]
                continue
            evs = list({e.event_id: e for kind, e in self._ready if kind == table}.values())  # type: ignore[attr-defined]
            if self.skip_existing:
                have = self._existing(table, [e.event_id for e in evs])  # type: ignore[attr-defined]
                self.counts.skipped_existing += len(have)
                evs = [e for e in evs if e.event_id not in have]  # type: ignore[attr-defined]
            rows = [self._row[table](e, self.plant, now) for e in evs]
            if rows:
                self.ex.insert(table, self._cols[table], rows)
                written += len(rows)
            # written: not again when a later table fails and the flush is retried
            done = [ev for kind, ev in self._ready if kind == table]
            self._ready = [(kind, ev) for kind, ev in self._ready if kind != table]
            if table == "parts":
                self.counts.parts += len(done)
                self.counts.fail += sum(1 for ev in done if isinstance(ev, PartInspected) and ev.verdict == "FAIL")
            else:
                self.counts.defects += len(done)
        return written


# --------------------------------------------------------------------------------------------
# The replay
# --------------------------------------------------------------------------------------------
class _Consistent(NamedTuple):
    """The progress at the last point where every admitted frame had gone through the pipeline
    (what a checkpoint stores once the rows up to there are flushed)."""

    offsets: dict[int, int]
    states: dict[str, dict]
    gate: dict[str, Any]
    frames_read: int
    skipped: dict[str, int]


@dataclass
class _Scan:
    """Where the replay's reading stands: next offset per partition, the gate, what was read and
    skipped, and the partitions still read (`active`, with their TopicPartitions `tps`)."""

    plans: dict[int, PartitionPlan]
    gate: RangeGate
    codec: AvroCodec
    limits: IntakeLimits
    offsets: dict[int, int]
    frames_read: int
    skipped: dict[str, int]
    active: list[int] = field(default_factory=list)
    tps: dict[int, Any] = field(default_factory=dict)

    def finished(self, p: int) -> bool:
        """Partition `p` is read: to its end, or past its stop with no part left open on it."""
        pl, o = self.plans[p], self.offsets[p]
        return o >= pl.end or (o >= pl.stop and self.gate.draining_done(p))

    def consistent(self, store: MemoryStateStore) -> _Consistent:
        return _Consistent(dict(self.offsets), store.snapshot(), self.gate.to_dict(), self.frames_read,
                           dict(self.skipped))


@dataclass
class ReplayRequest:
    """What to replay and where to store it."""

    run_id: str
    from_ms: int
    until_ms: int
    model_path: str | None
    cameras: list[str] | None = None
    frames_topic: str | None = None
    allow_partial: bool = False
    checkpoint_every_s: float = 5.0
    poll_records: int = 64
    progress: bool = True
    # queue a frame of each part whose verdict differs from production's for review (`DisagreementSampler`),
    # at most this many per run; 0: none
    queue_disagreements: int = 0


def validate_run_id(run_id: str) -> str:
    """A replay's run id: not `production`, non-empty, printable, at most 64 characters."""
    rid = run_id.strip()
    if not rid:
        raise ReplayError("--run-id must not be empty")
    if rid.lower() == PRODUCTION_RUN:
        raise ReplayError("--run-id production is reserved for the production workers; choose another id")
    if len(rid) > 64 or not rid.isprintable():
        raise ReplayError(f"--run-id {run_id!r}: use at most 64 printable characters")
    return rid


def _model_info(inspector: Inspector, path: str | None) -> tuple[str, dict[str, str]]:
    """(version, content hash per network) of any family's Inspector, gate included; {} for one without networks."""
    networks = getattr(inspector, "networks", None)
    hashes = {name: net.content_hash for name, net in networks().items()} if callable(networks) else {}
    return str(inspector.model_version), hashes


class Replayer:
    """One replay run (library entry point; the CLI and the tests call `run()`).

    Args:
        settings: all settings (Kafka, ClickHouse, plant, tracking, model batch size).
        request: what to replay.
        executor: ClickHouse executor (tables migrated).
        consumer: a kafka-python `KafkaConsumer` without group (built from settings when None).
        inspector: a loaded Inspector (loaded from `request.model_path` when None).
    """

    def __init__(self, settings: Settings, request: ReplayRequest, executor: Executor, *,
                 consumer: Any = None, inspector: Inspector | None = None, clock: Clock = wall_clock):
        self.request = request
        self.run_id = validate_run_id(request.run_id)
        if request.until_ms <= request.from_ms:
            raise ReplayError("--until must be after --from")
        self.settings = settings.model_copy(update={"run_id": self.run_id})
        self.topic = request.frames_topic or settings.kafka.topics.frames
        self.ex = executor
        self.clock = clock
        self._consumer = consumer
        self._inspector = inspector
        self.runlog = RunLog(executor, clock)
        self.record: RunRecord | None = None
        self._emitter: ClickHouseEmitter | None = None
        self._consistent: _Consistent | None = None  # progress of the last consistent point
        self._last_checkpoint = 0.0

    # -- setup -------------------------------------------------------------------------------
    def _consumer_or_new(self) -> Any:
        if self._consumer is None:
            from streams.kafka import clients

            self._consumer = clients.consumer(
                self.settings.kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
                client_id=f"defectstream-replay-{self.run_id}",
            )
        return self._consumer

    def _load_inspector(self) -> Inspector:
        if self._inspector is None:
            from models.loading import load_inspector
            from streams.inspection.inference import apply_flip_tta

            m = self.settings.model
            self._inspector = load_inspector(self.request.model_path, device=m.device, runtime=m.runtime,
                                             export_cache=m.export_cache, calibration=m.int8_calibration)
            apply_flip_tta(self._inspector, m.flip_tta)
        return self._inspector

    def _plan(self, consumer: Any) -> dict[int, PartitionPlan]:
        from streams.kafka.clients import import_kafka

        TopicPartition = import_kafka("kafka.structs").TopicPartition  # noqa: N806
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            raise ReplayError(f"topic {self.topic!r} does not exist or has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]

        def at(ts: int) -> dict[int, OffsetAt | None]:
            found = consumer.offsets_for_times({tp: ts for tp in tps})
            return {tp.partition: (OffsetAt(v.offset, v.timestamp) if v is not None else None)
                    for tp, v in found.items()}

        beginning = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()}
        end = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
        return plan_partitions(from_ms=self.request.from_ms, at_from=at(self.request.from_ms),
                               at_until=at(self.request.until_ms), beginning=beginning, end=end,
                               allow_partial=self.request.allow_partial)

    # -- run ---------------------------------------------------------------------------------
    def run(self) -> RunRecord:
        """Replay (or continue) the run; returns its final record.

        Raises:
            ReplayError: run id refused, range removed by retention, stored run differs.
            KeyboardInterrupt: after recording status `interrupted` with the last progress.
            Exception: anything else after recording status `failed` (best effort).
        """
        inspector = self._load_inspector()
        version, hashes = _model_info(inspector, self.request.model_path)
        req = self.request
        rec = RunRecord(
            run_id=self.run_id, model_version=version, model_path=req.model_path, model_hashes=hashes,
            from_ms=req.from_ms, until_ms=req.until_ms, frames_topic=self.topic,
            cameras=sorted(req.cameras) if req.cameras else None, started_at=int(self.clock() * 1000),
        )
        stored = load_run_record(self.ex, self.run_id)
        consumer = self._consumer_or_new()
        resumed = stored is not None
        if stored is not None:
            diffs = rec.same_job(stored)
            if diffs:
                raise ReplayError(f"run {self.run_id!r} exists with other settings: {'; '.join(diffs)}; "
                                  "use a new --run-id")
            if stored.status == STATUS_DONE:
                log.warning("run %s is already complete", self.run_id)
                self.record = stored
                return stored
            rec = stored
            rec.status, rec.error, rec.finished_at = STATUS_RUNNING, None, None
            plans = {int(p): PartitionPlan(*v) for p, v in rec.plan.items()}
            log.warning("resuming run %s at %s", self.run_id, rec.offsets)
        else:
            plans = self._plan(consumer)
            rec.plan = {str(p): list(v) for p, v in plans.items()}
            rec.offsets = {str(p): v.start for p, v in plans.items()}
        self.record = rec
        self.runlog.write(rec)
        try:
            asyncio.run(self._replay(consumer, inspector, plans, rec, resumed))
        except KeyboardInterrupt:
            self._finish(STATUS_INTERRUPTED, None)
            raise
        except BaseException as exc:
            self._finish(STATUS_FAILED, f"{type(exc).__name__}: {exc}")
            raise
        return rec

    def close(self) -> None:
        if self._consumer is not None and hasattr(self._consumer, "close"):
            self._consumer.close()

    # -- internals ---------------------------------------------------------------------------
    def _finish(self, status: str, error: str | None) -> None:
        """Record the last consistent progress with `status` (best effort when failing)."""
        rec = self.record
        if rec is None:
            return
        try:
            self._checkpoint()
        except Exception:  # noqa: BLE001 - `rec` still holds the previous checkpoint's progress
            log.exception("could not store the replay's last progress; it continues from the previous one")
        rec.status, rec.error, rec.finished_at = status, error, now_ms(self.clock)
        try:
            self.runlog.write(rec)
        except Exception:  # noqa: BLE001
            log.exception("could not record status %s of run %s", status, rec.run_id)

    def _checkpoint(self) -> None:
        """Flush completed rows, then store the progress they correspond to."""
        rec, em, done = self.record, self._emitter, self._consistent
        if rec is None or em is None or done is None:
            return
        em.flush()
        rec.offsets = {str(p): o for p, o in done.offsets.items()}
        rec.states = done.states
        rec.gate = done.gate
        rec.frames_read, rec.frames_skipped = done.frames_read, dict(done.skipped)
        rec.parts, rec.parts_fail, rec.defects = em.counts.parts, em.counts.fail, em.counts.defects
        rec.deadletters = dict(em.counts.deadletters)
        self.runlog.write(rec)
        self._last_checkpoint = time.monotonic()

    def _disagreements(self, rec: RunRecord) -> Any:
        """The sampler that queues parts whose verdict differs from production's (None unless asked for)."""
        if self.request.queue_disagreements <= 0:
            return None
        from streams.replay.queries import fetch_parts
        from streams.review.sampler import DisagreementSampler

        # production's verdicts of the parts this range can hold: the range is publish time, a part's
        # first_frame_ts capture time, so an hour either side (never the whole history of the cameras)
        slack = 3_600_000
        production = {(p.camera_id, p.part_id): p.verdict
                      for p in fetch_parts(self.ex, "production", self.settings.plant, cameras=rec.cameras or None,
                                           since_ms=rec.from_ms - slack, until_ms=rec.until_ms + slack)}
        return DisagreementSampler(production, run_id=self.run_id, limit=self.request.queue_disagreements,
                                   buffer_frames=self.settings.review.buffer_frames)

    async def _replay(self, consumer: Any, inspector: Inspector, plans: dict[int, PartitionPlan], rec: RunRecord,
                      resumed: bool) -> None:
        """Poll and admit frames, run them through the pipeline, checkpoint; then close what is still open."""
        from streams.inspection.cameras import CameraRegistry
        from streams.inspection.inference import InferenceRunner
        from streams.inspection.intake import IntakeLimits
        from streams.inspection.pipeline import InspectPipeline
        from streams.kafka import clients
        from streams.kafka.clients import import_kafka

        TopicPartition = import_kafka("kafka.structs").TopicPartition  # noqa: N806
        settings = self.settings
        store = MemoryStateStore(rec.states)
        emitter = ClickHouseEmitter(self.ex, settings, self.run_id, skip_existing=resumed, clock=self.clock)
        emitter.counts = EmitCounts(rec.parts, rec.defects, rec.parts_fail, dict(rec.deadletters))
        self._emitter = emitter
        registry = self._camera_registry(CameraRegistry())
        runner = InferenceRunner(settings.model, inspector=inspector)
        pipeline = InspectPipeline(settings, runner, registry, store, emitter, frames_topic=self.topic,
                                   clock=self.clock, sampler=self._disagreements(rec))
        gate = RangeGate({p: v.stop for p, v in plans.items()},
                         frozenset(rec.cameras) if rec.cameras else None)
        gate.restore(rec.gate)
        codec = FrameEvent.codec(clients.framing(settings.kafka))
        limits = IntakeLimits(settings.worker.max_image_bytes, settings.worker.max_pixels)
        scan = _Scan(plans, gate, codec, limits, {int(p): int(o) for p, o in rec.offsets.items()},
                     rec.frames_read, dict(rec.frames_skipped))
        self._consistent = scan.consistent(store)
        self._last_checkpoint = time.monotonic()
        scan.active = [p for p in sorted(plans) if not scan.finished(p)]
        scan.tps = {p: TopicPartition(self.topic, p) for p in scan.active}
        bar = self._bar(plans, scan.offsets)
        try:
            if scan.active:
                consumer.assign(list(scan.tps.values()))
                for p in scan.active:
                    consumer.seek(scan.tps[p], scan.offsets[p])
            while scan.active:
                batch = self._poll_admit(consumer, scan)
                for i in range(0, len(batch), runner.batch_size):
                    await pipeline.process(batch[i:i + runner.batch_size])
                scan.frames_read += len(batch)
                # the whole poll went through the pipeline: a consistent point
                self._consistent_point(scan, store, emitter)
                self._show_progress(bar, scan, emitter)
                self._pause_finished(consumer, scan)
                if time.monotonic() - self._last_checkpoint >= self.request.checkpoint_every_s:
                    self._checkpoint()
            await self._close_open_parts(pipeline, store, scan)
            self._consistent_point(scan, store, emitter)
            self._checkpoint()
            rec.status, rec.finished_at = STATUS_DONE, now_ms(self.clock)
            self.runlog.write(rec)
        except BaseException:
            emitter.discard_incomplete()
            raise
        finally:
            if bar is not None:
                bar.close()
            runner.close()

    # -- the replay's steps --------------------------------------------------------------------
    def _poll_admit(self, consumer: Any, scan: _Scan) -> list[SourceRecord]:
        """One poll: the records of the range the gate admits (bad input inside the range too, for
        the pipeline to dead-letter), in partition then offset order; the rest counted as skipped."""
        from streams.inspection.intake import Rejected, decode_frame

        polled = consumer.poll(timeout_ms=500, max_records=self.request.poll_records)
        if not polled:  # offsets without a record (transaction markers) never arrive: skip them
            for p in scan.active:
                pos = consumer.position(scan.tps[p])
                if pos is not None and scan.offsets[p] < pos == scan.plans[p].end:
                    scan.offsets[p] = pos
        batch: list[SourceRecord] = []
        for tp, records in sorted(polled.items(), key=lambda kv: kv[0].partition):
            p = tp.partition
            for r in records:
                if p not in scan.tps or r.offset < scan.offsets[p] or scan.finished(p):
                    continue
                scan.offsets[p] = r.offset + 1
                reason = None
                if r.offset < scan.plans[p].end:
                    frame = decode_frame(r.value, r.key, scan.codec, scan.limits, now_ms=now_ms(self.clock))
                    if isinstance(frame, Rejected):
                        # bad input inside the range: the pipeline dead-letters it
                        reason = None if r.offset < scan.plans[p].stop else SKIP_AFTER
                    else:
                        reason = scan.gate.admit(p, r.offset, frame.camera_id, frame.part_id,
                                                 int(frame.frame_index), bool(frame.last_frame))
                else:
                    reason = SKIP_AFTER
                if reason is None:
                    batch.append(SourceRecord(r.topic, p, r.offset, r.key, r.value, r.timestamp))
                else:
                    scan.skipped[reason] = scan.skipped.get(reason, 0) + 1
        return batch

    def _consistent_point(self, scan: _Scan, store: MemoryStateStore, emitter: ClickHouseEmitter) -> None:
        """Every admitted frame went through the pipeline: its rows become flushable, and this is
        the progress the next checkpoint stores."""
        emitter.mark_complete()
        self._consistent = scan.consistent(store)

    def _pause_finished(self, consumer: Any, scan: _Scan) -> None:
        """Stop reading the partitions whose range (and parts open at its stop) is read."""
        done = [p for p in scan.active if scan.finished(p)]
        if done:
            consumer.pause(*[scan.tps[p] for p in done])
            scan.active = [p for p in scan.active if p not in done]

    async def _close_open_parts(self, pipeline: InspectPipeline, store: MemoryStateStore, scan: _Scan) -> None:
        """Parts still open at the end of the data: closed as after inactivity (TIMEOUT)."""
        for cam, part_id, last_seq in store.open_parts():
            p = scan.gate.partitions.get(cam, 0)
            last = SourceRecord(self.topic, p, max(scan.offsets.get(p, 1) - 1, 0), cam.encode(), None, None)
            await pipeline.close_idle(last, cam, part_id, last_seq)
            scan.gate.open_part.pop(cam, None)

    @staticmethod
    def _show_progress(bar: Any, scan: _Scan, emitter: ClickHouseEmitter) -> None:
        if bar is not None:
            bar.set_postfix(parts=emitter.parts_done, refresh=False)
            bar.n = sum(min(scan.offsets[p], scan.plans[p].stop) - scan.plans[p].start for p in scan.plans)
            bar.refresh()

    def _camera_registry(self, registry: Any) -> Any:
        """Camera overrides as production sees them: the compacted `cameras` topic, read once."""
        consumer = self._consumer_or_new()
        try:
            parts = consumer.partitions_for_topic(self.settings.kafka.topics.cameras)
        except Exception:  # noqa: BLE001 - no cameras topic: defaults for every camera
            parts = None
        if not parts:
            return registry
        from streams.kafka.clients import import_kafka

        TopicPartition = import_kafka("kafka.structs").TopicPartition  # noqa: N806
        tps = [TopicPartition(self.settings.kafka.topics.cameras, p) for p in sorted(parts)]
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        todo = {tp for tp in tps if end[tp] > begin[tp]}
        if not todo:
            return registry
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, begin[tp])
        deadline = time.monotonic() + 30
        while todo and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    if r.offset < end[tp]:
                        registry.apply(r.key, r.value)
            todo = {tp for tp in todo if consumer.position(tp) < end[tp]}  # compaction leaves offset gaps
        consumer.assign([])
        return registry

    def _bar(self, plans: dict[int, PartitionPlan], offsets: dict[int, int]) -> Any:
        if not self.request.progress:
            return None
        from tqdm import tqdm

        total = sum(v.stop - v.start for v in plans.values())
        done = sum(min(offsets[p], plans[p].stop) - plans[p].start for p in plans)
        return tqdm(total=total, initial=done, unit="frame", desc=f"replay {self.run_id}", file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.5)
