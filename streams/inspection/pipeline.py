"""The inspection pipeline: decode → inspect → track → emit, one batch at a time, without Kafka.

`InspectPipeline` holds the per-batch logic against small interfaces (state store, emitter,
inference runner) so it is testable without Kafka and reused by replay; `streams.inspection.agents`
attaches it to the Faust app.

Delivery guarantee (at least once, never past work in flight): the agent consumes with
`stream.noack().noack_take(...)`, so Faust acks nothing by itself; a batch's events are acked
only after its DefectEvents/PartInspected/DeadLetters were delivered (awaited producer futures)
and the tracking state was written. The agent runs with concurrency 1 and acks in offset order,
so the committed offset never jumps over an unfinished message (faust-streaming #606). A batch
that fails for a reason other than bad input (broker, table, model) stops the worker instead of
letting Faust restart the actor past it. A crash before the ack re-delivers the batch; re-closing
a part re-emits the same deterministic ids, which sinks de-duplicate, and frames already folded
into a saved state are skipped: the state remembers the frames offset it has read up to, so a
re-delivered frame is told from a duplicate the camera sent again (a new offset, dead-lettered as
duplicate_frame).

Only input that can never be processed is dead-lettered (see `streams.inspection.intake`). A model
call that fails is judged by a probe: the same model on a blank frame of the same size. When
the probe passes the model is healthy and the frame is at fault (``inference_error``); when it
fails, or the error is one of
a sick device (CUDA out of memory or another CUDA error, MemoryError), the call is retried with
exponential backoff (`inference_retries`, `inference_backoff_s`) and then
:class:`ModelUnavailable` stops the worker, so the frames are re-delivered to its successor
instead of being lost. A part whose model version is no longer loaded never gets there: it finishes
on the camera's current model (`_version_for`, `streams.inspection.model_selection`).

Dead letters are bounded (`deadletter_original_max_bytes` of the original, else a pointer with
size and SHA-256) so that one never exceeds the producer's request limit.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Protocol, Sequence, TypeVar

import numpy as np

from models.core.types import Detection
from schemas.events import DeadLetter, FrameEvent
from streams.clock import MONOTONIC_EPOCH, Clock, monotonic_clock, wall_clock
from streams.inspection.cameras import CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.intake import (
    IntakeLimits,
    Rejected,
    dead_letter,
    decode_frame,
    decode_image,
    expected_partition,
    frame_meta,
)
from streams.kafka import clients
from streams.kafka.records import OutRecord, SourceRecord
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.tracking.tracker import CameraState, PartTracker, TrackVote
from streams.tracking.types import FrameMeta, PartOutcome

log = logging.getLogger(__name__)

T = TypeVar("T")
FrameResult = list[Detection] | Exception  # a frame's detections, or why the frame (not the model) failed


class StateStore(Protocol):
    def load(self, camera_id: str) -> CameraState: ...
    def save(self, state: CameraState, source: SourceRecord) -> None:
        """Store `state`; `source` is a record of that camera (its partition holds the state)."""
        ...


class Emitter(Protocol):
    async def send_all(self, records: Sequence[OutRecord]) -> None:
        """Send the records (kind defects|parts|deadletter); returns once all are acknowledged
        by the broker, raises if any failed."""
        ...


class ModelUnavailable(RuntimeError):
    """The model failed on healthy input after every retry: stop the worker (frames are re-delivered)."""


# Errors of a sick device, never of the input, even when a probe right after them passes (memory
# freed meanwhile). Anything else is judged by the probe: a model version that is not (or no
# longer) loaded fails the probe too (InspectorPool.get raises KeyError), a poisonous frame does not.
_MODEL_ERROR_TEXT = ("out of memory", "cuda error", "cudnn", "cublas", "device-side assert", "nccl")


def is_model_failure(exc: BaseException) -> bool:
    """True for errors of a sick device (CUDA out of memory or other CUDA errors, MemoryError)."""
    if isinstance(exc, (MemoryError, ModelUnavailable)):
        return True
    if type(exc).__name__ in ("OutOfMemoryError", "AcceleratorError", "CudaError"):
        return True
    text = str(exc).lower()
    return any(t in text for t in _MODEL_ERROR_TEXT)


def _decode_images(frames: Sequence[FrameEvent]) -> list[np.ndarray | Rejected]:
    return [decode_image(f) for f in frames]


class VoteFrames:
    """The frames of each camera's open part (and of the part its next frame closes), kept only for parts whose
    model has a sequence vote, so that the close can hand a track's frames to `Inspector.vote_track`.

    In memory only: after a restart the frames of a part already open are gone, and its tracks keep the tracker's
    own vote. At most two parts per camera are held, each at most `tracking.max_frames_per_part` frames.
    """

    def __init__(self) -> None:
        self._held: dict[str, dict[str, dict[int, np.ndarray]]] = {}  # camera -> part -> frame_seq -> frame

    def keep(self, meta: FrameMeta, image: np.ndarray) -> None:
        parts = self._held.setdefault(meta.camera_id, {})
        parts.setdefault(meta.part_id, {})[meta.frame_seq] = image

    def prune(self, camera_id: str, open_part: str | None) -> None:
        """Forget every held part of `camera_id` but `open_part`."""
        parts = self._held.get(camera_id)
        if parts:
            for pid in [p for p in parts if p != open_part]:
                del parts[pid]

    def vote(self, voter: Callable[[str], Any]) -> TrackVote:
        """The tracker's `TrackVote` over the held frames: the sequence vote of `voter(part's model version)` (an
        Inspector, or None when that model has no vote: the tracker's own vote stands)."""
        def vote(part: Any, summary: Any) -> Any:
            held = self._held.get(part.camera_id, {}).get(part.part_id, {})
            idx = [i for i in summary.boxes if i < len(part.seqs) and part.seqs[i] in held]
            inspector = voter(part.model_version) if idx else None
            if inspector is None:
                return None
            return inspector.vote_track({i: held[part.seqs[i]] for i in idx}, {i: summary.boxes[i] for i in idx})
        return vote

    def held_frames(self) -> int:
        return sum(len(f) for parts in self._held.values() for f in parts.values())


class InspectPipeline:
    """One micro-batch of `frames` records in, outputs sent and tracker state saved.

    `clock` (default: the wall clock) stamps the capture-time window and dead letters;
    `monotonic` (default: `time.monotonic`, its origin named `clock_epoch`) stamps the tracker's
    last-touched times, which the part-timeout timer compares with the same monotonic clock, so a
    wall-clock step never cuts a part short or holds it open.
    """

    def __init__(self, settings: Settings, runner: InferenceRunner, registry: CameraRegistry, store: StateStore,
                 emitter: Emitter, *, frames_topic: str | None = None, metrics: WorkerMetrics | None = None,
                 clock: Clock = wall_clock, monotonic: Clock = monotonic_clock, clock_epoch: str = MONOTONIC_EPOCH,
                 sampler: Any = None):
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.clock_epoch = clock_epoch
        self.metrics = metrics or WorkerMetrics()
        self.runner = runner
        if runner.on_load_failure is None:  # failed loads of promoted models, counted by version
            runner.on_load_failure = lambda f: self.metrics.model_load_failures.labels(
                model_version=f.model_version).inc()
        self.registry = registry
        self.store = store
        self.emitter = emitter
        self.tracker = PartTracker(settings.tracking)
        self.codec = FrameEvent.codec(clients.framing(settings.kafka))
        self.limits = IntakeLimits.from_settings(settings.worker)
        self.processed_next: dict[int, int] = {}  # frames partition -> offset after the last processed frame
        self.frames_topic = frames_topic or settings.kafka.topics.frames
        self.lock = asyncio.Lock()  # the batch and the timeout closer never interleave on a camera state
        self.deadletters: Counter[str] = Counter()
        self.parts_closed: Counter[str] = Counter()
        self.redelivered = 0  # frames re-delivered after a crash or rebalance, skipped (already in the state)
        self._version_warned: set[str] = set()
        self.open_part_versions: dict[str, str] = {}  # camera id -> model version of its open part
        # Set once the `cameras` topic has been read up to its end (wire_inspect); until then a
        # batch waits (at most `cameras_wait_s`), so a restarted worker knows the promotions and
        # camera configs before it opens or continues a part.
        self.cameras_ready: asyncio.Event | None = None
        self.cameras_wait_s = 15.0
        # Review sampling (`streams.review.sampler.ReviewSampler`; None: off, e.g. in replays): its
        # frames and candidates go out with the batch's other outputs, before the ack.
        self.sampler = sampler
        self.vote_frames = VoteFrames()  # frames of open parts whose model has a sequence vote
        self._vote = self.vote_frames.vote(self._voter)  # what the tracker calls at each close

    # -- helpers -----------------------------------------------------------------------------
    def now_ms(self) -> int:
        """The pipeline's clock in epoch milliseconds."""
        return int(self.clock() * 1000)

    def mono_ms(self) -> int:
        """The pipeline's monotonic clock in milliseconds (comparable only within `clock_epoch`)."""
        return int(self.monotonic() * 1000)

    def _voter(self, version: str) -> Any:
        """The Inspector of `version` if it has a sequence vote (None otherwise, or for a runner without votes)."""
        fn = getattr(self.runner, "voter", None)
        return fn(version) if fn is not None else None

    def _dead(self, msg: SourceRecord, rej: Rejected) -> OutRecord:
        self.deadletters[rej.error_class] += 1
        self.metrics.deadletters.labels(reason=rej.error_class).inc()
        log.warning("deadletter %s p%s@%s: %s %s", msg.topic, msg.partition, msg.offset, rej.error_class, rej.reason)
        dl: DeadLetter = dead_letter(rej, topic=msg.topic, partition=msg.partition, offset=msg.offset,
                                     value=msg.value, key=msg.key, now_ms=self.now_ms(),
                                     max_original_bytes=self.settings.worker.deadletter_original_max_bytes)
        return OutRecord("deadletter", dl.key, dl)

    def enforce_partitions(self, partitions: int) -> None:
        """Refuse frames read from another partition than their key's (see `streams.inspection.intake`)."""
        self.limits = self.limits._replace(partitions=partitions)

    def camera_partition(self, camera_id: str) -> int | None:
        """The frames partition holding `camera_id`'s frames and state (None when not enforced)."""
        n = self.limits.partitions
        return expected_partition(camera_id.encode(), n) if n else None

    def _review_outputs(self, samples: list[Any]) -> list[OutRecord]:
        """The sampler's ReviewFrame / ReviewCandidate records for `samples` (keyed by camera)."""
        if not samples:
            return []
        frames, cands = self.sampler.records(samples, self.now_ms())
        return ([OutRecord("review_frames", f.camera_id.encode(), f) for f in frames]
                + [OutRecord("review_queue", c.camera_id.encode(), c) for c in cands])

    def _sample_closed(self, outcomes: Sequence[PartOutcome]) -> list[Any]:
        if self.sampler is None:
            return []
        now = self.now_ms()
        return [s for o in outcomes for s in self.sampler.on_close(o.part, o.tracks, now)]

    def _outputs(self, outcomes: Sequence[PartOutcome]) -> list[OutRecord]:
        out: list[OutRecord] = []
        for o in outcomes:
            key = o.part.camera_id.encode()
            out.extend(OutRecord("defects", key, d) for d in o.defects)
            out.append(OutRecord("parts", key, o.part))
            self.parts_closed[o.part.closed_reason] += 1
            self.metrics.parts_closed.labels(reason=o.part.closed_reason).inc()
        return out

    def _check_model_version(self, camera_id: str, version: str) -> None:
        cfg = self.registry.get(camera_id)
        if cfg and cfg.model_version and cfg.model_version != version and camera_id not in self._version_warned:
            self._version_warned.add(camera_id)
            log.warning("camera %s expects model %s, the worker runs %s", camera_id, cfg.model_version, version)

    async def _retry_model(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """`call()` with exponential backoff on failure; ModelUnavailable after the last retry."""
        w = self.settings.worker
        delay = w.inference_backoff_s
        for attempt in range(w.inference_retries + 1):
            try:
                return await call()
            except Exception as exc:  # noqa: BLE001 - judged below
                last = exc
                if attempt == w.inference_retries:
                    break
                log.error("model failed on %s (attempt %d of %d), retrying in %.1fs: %r", what, attempt + 1,
                          w.inference_retries + 1, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, w.inference_backoff_max_s)
        raise ModelUnavailable(f"model failed on {what} after {w.inference_retries + 1} attempts: "
                               f"{type(last).__name__}: {last}") from last

    async def _model_healthy(self, img: np.ndarray, version: str | None) -> bool:
        """Does the model inspect a blank frame of `img`'s size and type? (Not the input's fault if not.)"""
        try:
            await self.runner.inspect([np.zeros_like(img)], version)
            return True
        except Exception as exc:  # noqa: BLE001
            log.error("model probe failed on a blank %s frame: %r", img.shape, exc)
            return False

    async def _inspect_one(self, img: np.ndarray, version: str | None) -> FrameResult:
        """One frame: its detections, or the exception when the frame (not the model) is at fault.
        Raises ModelUnavailable when the model stays unwell."""
        async def call() -> FrameResult:
            try:
                return (await self.runner.inspect([img], version))[0]
            except Exception as exc:  # noqa: BLE001
                if is_model_failure(exc) or not await self._model_healthy(img, version):
                    raise
                return exc  # the model works on a blank frame of this size: this input is poisonous
        return await self._retry_model(call, f"a frame (model {version})")

    async def _inspect(self, images: list[np.ndarray], version: str | None = None) -> list[FrameResult]:
        """Detections per image, or an exception for a frame the model can never process.

        When a batch fails, frames are retried one by one so that one poisonous frame goes to
        dead-letter; a failure of the model itself (see the module doc) is retried with backoff
        and then raises ModelUnavailable, which stops the worker: nothing is dead-lettered for it.
        """
        try:
            return list(await self.runner.inspect(images, version))
        except Exception as exc:  # noqa: BLE001 - isolate the bad frame below
            log.exception("inference failed on a batch of %d, retrying frame by frame: %r", len(images), exc)
        return [await self._inspect_one(img, version) for img in images]

    def _version_for(self, state: CameraState, meta: FrameMeta) -> str:
        """A part keeps the model it opened with; a new part takes the selected one (camera, pinned,
        line, plant promotion, default). The line is the one the part is reported under.

        An open part whose model is not loaded any more (its promotion was replaced before a restart
        or a rebalance, or the worker was redeployed with another ``MODEL__PATH``) finishes on the
        model a new part of the camera gets now: the part records the switch and its verdict says
        so (``model_version`` the current model, ``opened_model_version`` the first); the partition
        never stops for it."""
        open_part = (state.part.part_id, state.part.model_version) if state.part is not None else None
        cfg = self.registry.get(meta.camera_id)
        line = (cfg.line_id if cfg is not None and cfg.line_id else None) or meta.line_id
        version = self.runner.selection.version_for_frame(
            meta.part_id, open_part, cfg.model_version if cfg else None, self.runner.versions,
            camera_id=meta.camera_id, line_id=line, camera_alias=self.registry.alias_of(meta.camera_id))
        if state.part is not None and state.part.part_id == meta.part_id and version != state.part.model_version:
            log.warning("part %s of camera %s opened on model %s, which is no longer loaded; it finishes on %s",
                        meta.part_id, meta.camera_id, state.part.model_version, version)
            state.part.switch_model(version)
            self.metrics.parts_model_switched.inc()
        return version

    def _apply_reset(self, state: CameraState) -> None:
        """Apply the operator's latest sequence reset of the camera (`defectstream cameras reset`) once."""
        rid = self.registry.reset_id(state.camera_id)
        if rid is not None and state.reset_sequence(rid):
            log.warning("camera %s: frame_seq history cleared by reset %s (a replaced camera)", state.camera_id, rid)

    def _note_open_parts(self, states: dict[str, CameraState] | Sequence[CameraState]) -> None:
        """Remember which model each camera's open part runs (cameras of earlier batches too), so
        that no model an open part needs is evicted."""
        for state in (states.values() if isinstance(states, dict) else states):
            if state.part is not None:
                self.open_part_versions[state.camera_id] = state.part.model_version
            else:
                self.open_part_versions.pop(state.camera_id, None)

    async def _inspect_by_version(self, images: list[np.ndarray], versions: list[str]) -> list[FrameResult]:
        out: list[FrameResult] = [[] for _ in images]
        for v in dict.fromkeys(versions):
            idx = [i for i, x in enumerate(versions) if x == v]
            for i, dets in zip(idx, await self._inspect([images[i] for i in idx], v)):
                out[i] = dets
        return out

    # -- the batch ---------------------------------------------------------------------------
    async def process(self, records: Sequence[SourceRecord]) -> None:
        """decode → inspect → track → emit for one micro-batch (records in offset order)."""
        async with self.lock:
            started = time.perf_counter()
            await self._process(records)
            self.metrics.batch_seconds.labels(stage="batch").observe(time.perf_counter() - started)
            self.metrics.frames.inc(len(records))

    async def _await_cameras(self) -> None:
        if self.cameras_ready is None or self.cameras_ready.is_set():
            return
        try:
            await asyncio.wait_for(self.cameras_ready.wait(), self.cameras_wait_s)
        except asyncio.TimeoutError:
            log.warning("the cameras topic is not read after %.0fs; going on with what is known", self.cameras_wait_s)
            self.cameras_ready.set()

    async def _process(self, sources: Sequence[SourceRecord]) -> None:
        await self._await_cameras()
        await self.runner.ensure_loaded()
        records: list[OutRecord] = []
        states: dict[str, CameraState] = {}
        last_source: dict[str, SourceRecord] = {}
        # decode + sequence guard
        admitted: list[tuple[SourceRecord, FrameEvent, FrameMeta]] = []
        redelivered = 0
        in_batch: set[tuple[str, int, int]] = set()
        for ev in sources:
            where = (ev.topic, ev.partition, ev.offset)
            if where in in_batch:
                # The consumer delivered this record twice in one batch (after a seek during a
                # rebalance or restore): the first copy is handled here, the state is saved after.
                redelivered += 1
                continue
            in_batch.add(where)
            frame = decode_frame(ev.value, ev.key, self.codec, self.limits, partition=ev.partition,
                                 now_ms=self.now_ms())
            if isinstance(frame, Rejected):
                records.append(self._dead(ev, frame))
                continue
            meta = frame_meta(frame)
            state = states.get(meta.camera_id)
            if state is None:
                state = states[meta.camera_id] = self.store.load(meta.camera_id)
                self._apply_reset(state)
            last_source[meta.camera_id] = ev
            rej = state.admit(meta)
            if rej is not None:
                if ev.topic == self.frames_topic and state.was_read(ev.partition, ev.offset):
                    # Re-delivered (handled before a crash or rebalance, offset not committed): folded
                    # into this state or dead-lettered already; not bad input, so no dead letter now.
                    # Only a frame the guard refuses is skipped: after a recreated topic (offsets from
                    # 0 again) a new frame has a new sequence number and is processed.
                    redelivered += 1
                    continue
                records.append(self._dead(ev, Rejected(rej.error_class, rej.reason, meta.camera_id)))
                continue
            admitted.append((ev, frame, meta))
        if redelivered:
            self.redelivered += redelivered
            log.info("skipped %d re-delivered frames already in the tracking state", redelivered)
        # inspect (off the loop)
        images = await self.runner.run(_decode_images, [f for _, f, _ in admitted])
        ok: list[tuple[SourceRecord, FrameMeta, np.ndarray]] = []
        ok_frames: list[FrameEvent] = []
        for (ev, f, meta), img in zip(admitted, images):
            if isinstance(img, Rejected):
                records.append(self._dead(ev, img))
            else:
                ok.append((ev, meta, img))
                ok_frames.append(f)
        # model per frame (a promotion takes effect at each camera's next part), then inspect
        self._note_open_parts(states)
        await self.runner.refresh_models(sorted(set(self.open_part_versions.values())))
        self.metrics.promotions_not_loaded.set(len(self.runner.load_failures))
        versions = [self._version_for(states[meta.camera_id], meta) for _, meta, _ in ok]
        started = time.perf_counter()
        detections = await self._inspect_by_version([img for _, _, img in ok], versions)
        if ok:
            self.metrics.batch_seconds.labels(stage="inference").observe(time.perf_counter() - started)
        # track
        now = self.mono_ms()  # the parts' last-touched stamps: idleness is a duration
        outcomes: list[PartOutcome] = []
        samples: list[Any] = []
        for (ev, meta, _img), frame, dets, version in zip(ok, ok_frames, detections, versions):
            if isinstance(dets, Exception):
                records.append(self._dead(ev, Rejected("inference_error", f"{type(dets).__name__}: {dets}", meta.camera_id)))
                continue
            late = states[meta.camera_id].closed_rejection(meta)
            if late is not None:  # its part closed earlier in this batch (last frame, frame cap)
                records.append(self._dead(ev, Rejected(late.error_class, late.reason, meta.camera_id)))
                continue
            self._check_model_version(meta.camera_id, version)
            if self.sampler is not None:
                samples += self.sampler.on_frame(frame, dets, version, self.now_ms())
            state = states[meta.camera_id]
            if self._voter(version) is not None:  # this frame's model votes: hold the frame for the close
                self.vote_frames.keep(meta, _img)
            outcomes += state.observe(
                self.tracker, meta, dets, model_version=version, run_id=self.settings.run_id,
                plant=self.settings.plant, policy=self.registry.policy(meta.camera_id), now_ms=now,
                epoch=self.clock_epoch, vote=self._vote,
            )
            self.vote_frames.prune(meta.camera_id, state.part.part_id if state.part is not None else None)
        # emit, then persist the state; the caller acks afterwards
        records.extend(self._outputs(outcomes))
        records.extend(self._review_outputs(samples + self._sample_closed(outcomes)))
        if records:
            await self.emitter.send_all(records)
        for cam, state in states.items():
            m = last_source[cam]
            if m.topic == self.frames_topic:
                state.note_read(m.partition, m.offset)
            self.store.save(state, m)
        self._note_open_parts(states)
        for m in sources:
            if m.topic == self.frames_topic and m.offset + 1 > self.processed_next.get(m.partition, -1):
                self.processed_next[m.partition] = m.offset + 1

    async def close_idle(self, source: SourceRecord, camera_id: str, part_id: str, last_seq: int) -> PartOutcome | None:
        """Close `part_id` on `camera_id` with reason TIMEOUT if it got no frame since `last_seq`.

        `source`: the record that asked (a timeout request, or in a replay the camera's last frame);
        the state is saved under its partition."""
        async with self.lock:
            state = self.store.load(camera_id)
            out = state.close_if_idle(self.tracker, part_id, last_seq, run_id=self.settings.run_id,
                                      plant=self.settings.plant, vote=self._vote)
            self.vote_frames.prune(camera_id, state.part.part_id if state.part is not None else None)
            if out is None:
                return None
            await self.emitter.send_all(self._outputs([out]) + self._review_outputs(self._sample_closed([out])))
            self.store.save(state, source)
            self._note_open_parts([state])
            return out
