"""The Faust wiring of the inspection pipeline: the `inspect` agent, its emitter, the part-inactivity
timer and the cameras-topic follower.

Part-inactivity timeout (finding 1 of issue 12). A part is idle when the camera published no
frame of it for `part_timeout_s`, and that is judged on the stream: the timer only considers a
partition whose frames are all processed, i.e. the offset after the last processed frame (this
process's, or the group's committed offset) has reached the partition's high watermark. Then
every frame published up to that high watermark has been folded into the state, so a part whose
last frame was processed `part_timeout_s` ago got nothing since from its camera. While a
partition has a backlog — after a restart, a rebalance, a slow model, a broker outage — none of
its parts times out, whatever the wall clock says; their remaining frames are read first. A line
that truly stops mid-part for longer than `part_timeout_s` on a caught-up worker still closes
the part (TIMEOUT): on the stream that is indistinguishable from a dead camera; a plant with long
stops sets `part_timeout_s` above them or has the camera send `last_frame`.

A timeout request (topic `<app>-part-timeouts`, keyed and partitioned like the camera) is
acked only after its part is closed and the outputs are durable; a failed close stops the
worker and the request is re-delivered (finding 8).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterable, Sequence

from streams.inspection.cameras import CameraRegistry, apply_cameras_record
from streams.inspection.pipeline import InspectPipeline
from streams.kafka.records import OutRecord, SourceRecord
from streams.settings import Settings

log = logging.getLogger(__name__)


class FaustEmitter:
    """Sends to the app's output topics and waits for the broker's acknowledgement."""

    def __init__(self, topics: Any):
        self.topics = {"defects": topics.defects, "parts": topics.parts, "deadletter": topics.deadletter,
                       "review_frames": topics.review_frames, "review_queue": topics.review_queue}

    async def send_all(self, records: Sequence[OutRecord]) -> None:
        # force=True: publish now instead of attaching to the current event, so the futures
        # below resolve before we ack.
        futs = [await self.topics[r.kind].send(key=r.key, value=r.event, force=True) for r in records]
        await asyncio.gather(*futs)


def source_record(event: Any) -> SourceRecord:
    """The pipeline's view of a Faust event: its message's topic, partition, offset, raw key and
    value, and timestamp (Faust keeps seconds; a SourceRecord epoch ms). The event itself stays
    with the agent, which acks it."""
    m = event.message
    ts = getattr(m, "timestamp", None)
    return SourceRecord(m.topic, m.partition, m.offset, m.key, m.value, int(ts * 1000) if ts is not None else None)


def partition_caught_up(consumer: Any, pipeline: InspectPipeline, partition: int) -> bool:
    """Has every frame of `partition` up to its high watermark been processed?

    Processed means: by this process (`pipeline.processed_next`), or before it, as far as the
    group's committed offset says. False when the high watermark is not known yet (no fetch
    since the partition was assigned) or the partition is not assigned here.
    """
    from faust.types import TP

    tp = TP(pipeline.frames_topic, partition)
    try:
        hw = consumer.highwater(tp)
    except Exception:  # noqa: BLE001 - not assigned (any more) / consumer not started: not ours to judge
        return False
    if hw is None:
        return False
    committed = getattr(consumer, "_committed_offset", {}).get(tp)  # next offset to read, set at assignment
    done = max(pipeline.processed_next.get(partition, 0), committed or 0)
    return done >= hw


class BrokerWatch:
    """Since when the worker has seen each of its frames partitions through a broker that answers,
    without a break (ms on the pipeline's monotonic clock, so a wall-clock step is no outage or answer).

    While the broker is down the cameras cannot publish, so their silence says nothing about their
    parts: an outage clears every partition, and a part's inactivity is counted again only from
    the first answer after it (finding 1 of issue 12, for broker outages). A partition newly
    assigned here (start, rebalance) starts counting at its first answer too.
    """

    def __init__(self) -> None:
        self.since: dict[int, int] = {}

    def answered(self, partitions: Iterable[int], now_ms: int) -> None:
        held = set(partitions)
        for p in [p for p in self.since if p not in held]:
            del self.since[p]
        for p in held:
            self.since.setdefault(p, now_ms)

    def lost(self) -> None:
        self.since.clear()


async def probe_frames_partitions(consumer: Any, pipeline: InspectPipeline, watch: BrokerWatch, now_ms: int,
                                  timeout_s: float) -> bool:
    """Ask the broker for the end offsets of the frames partitions held here; record the answer in
    `watch`. False (and the watch cleared) when the broker does not answer within `timeout_s`."""
    try:
        held = [tp for tp in consumer.assignment() if tp.topic == pipeline.frames_topic]
    except Exception:  # noqa: BLE001 - consumer not started yet: nothing held, nothing to judge
        watch.lost()
        return False
    if held:
        try:
            await asyncio.wait_for(consumer.highwaters(*held), timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure to answer is an outage for this purpose
            if watch.since:
                log.warning("broker did not answer an end-offsets request (%r): part timeouts paused", exc)
            watch.lost()
            return False
    watch.answered((tp.partition for tp in held), now_ms)
    return True


def frames_lag(consumer: Any, pipeline: InspectPipeline) -> dict[tuple[str, int], int]:
    """(frames topic, partition) → frames not yet processed, for the frames partitions assigned here.

    Processed as in `partition_caught_up`; a partition whose high watermark is not known yet is left out."""
    try:
        assigned = [tp for tp in consumer.assignment() if tp.topic == pipeline.frames_topic]
    except Exception:  # noqa: BLE001 - consumer not started yet
        return {}
    committed = getattr(consumer, "_committed_offset", {})
    out: dict[tuple[str, int], int] = {}
    for tp in assigned:
        try:
            hw = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - revoked meanwhile
            continue
        if hw is None:
            continue
        done = max(pipeline.processed_next.get(tp.partition, 0), committed.get(tp) or 0)
        out[(tp.topic, tp.partition)] = max(0, hw - done)
    return out


def count_open_parts(items: Any) -> int:
    """Open parts among tracking-table `items` (key, CameraState dict)."""
    return sum(1 for _key, raw in list(items) if raw and raw.get("part"))


def update_worker_gauges(pipeline: InspectPipeline, consumer: Any, table: Any) -> None:
    """Refresh the lag and open-parts gauges (a timer calls it; never raises)."""
    try:
        pipeline.metrics.set_lag(frames_lag(consumer, pipeline))
        pipeline.metrics.open_parts.set(count_open_parts(table.table.items()))
    except Exception as exc:  # noqa: BLE001 - a gauge is not worth a stopped worker
        log.debug("metrics gauges not updated: %r", exc)


async def handle_timeout_requests(pipeline: InspectPipeline, events: Any, ack: Any, crash: Any) -> None:
    """Serve part-timeout requests: close the part, then ack the request.

    A request is acked only after its part was closed and the outputs are durable (or the part
    is no longer idle). A close that fails (broker, table) stops the worker through `crash`
    without acking, so the request is re-delivered to its successor instead of being lost.
    """
    async for event in events:
        v = event.value or {}
        cam = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
        try:
            out = await pipeline.close_idle(source_record(event), cam, str(v.get("part_id")),
                                            int(v.get("last_seq", -1)))
        except Exception as exc:  # noqa: BLE001
            log.critical("closing the idle part %s of %s failed, stopping the worker: %r", v.get("part_id"), cam, exc)
            await crash(exc)
            return
        if out is not None:
            log.info("part %s of %s closed after inactivity", out.part.part_id, cam)
        await ack(event)


def wire_inspect(app: Any, settings: Settings, topics: Any, table: Any, pipeline: InspectPipeline) -> dict[str, Any]:
    """Attach the agents, the inactivity timer and the cameras follower to `app`.

    The pipeline enforces that a camera's frames arrive on its key's partition (`kafka.partitions`)."""
    pipeline.enforce_partitions(settings.kafka.partitions)
    batch_max = settings.worker.batch_max or pipeline.runner.batch_size
    within = settings.worker.batch_within_s
    requested: set[tuple[str, str, int]] = set()

    @app.on_rebalance_complete.connect
    def hold_frames_until_streams_resume(sender: Any, **_: Any) -> None:
        # Faust's Recovery sends this signal, then resumes the stream partitions, seeks them to
        # the committed offsets and only then resumes flow control, which clears every stream
        # buffer. After a changelog restore its fetcher is already running in between, so frames
        # it delivered there were cleared: read past, never processed nor acked (lost, and the
        # committed offset stuck below them). Suspended flow control holds the fetcher's
        # delivery until that clear; nothing is buffered yet (the stream partitions are paused).
        app.flow_control.suspend()

    @app.agent(topics.frames, name="inspect", concurrency=1)
    async def inspect(stream: Any) -> None:
        manual = stream.noack()
        async for events in manual.noack_take(batch_max, within=within):
            try:
                await pipeline.process([source_record(ev) for ev in events])
            except Exception as exc:
                # Not bad input (that is dead-lettered): the broker or the table failed. A
                # restarted actor would go on past this unacked batch, so stop the worker instead;
                # its successor re-reads from the last committed offset.
                log.critical("batch of %d frames failed, stopping the worker: %r", len(events), exc)
                await app.crash(exc)
                return
            for ev in events:  # in offset order, after outputs and state are durable
                await manual.ack(ev)

    @app.agent(topics.part_timeouts, name="close-idle-parts", concurrency=1)
    async def close_idle_parts(stream: Any) -> None:
        manual = stream.noack()
        await handle_timeout_requests(pipeline, manual.events(), manual.ack, app.crash)

    def caught_up(camera_id: str) -> bool:
        p = pipeline.camera_partition(camera_id)
        return p is not None and partition_caught_up(app.consumer, pipeline, p)

    watch = BrokerWatch()

    @app.timer(interval=settings.tracking.timeout_check_s)
    async def find_idle_parts() -> None:
        now = pipeline.mono_ms()  # the monotonic clock that stamps the parts' last-touched times
        if not await probe_frames_partitions(app.consumer, pipeline, watch, now,
                                             timeout_s=max(1.0, settings.tracking.timeout_check_s)):
            return  # the broker does not answer: cameras cannot publish either, nothing is idle

        def observed_since(camera_id: str) -> int | None:
            p = pipeline.camera_partition(camera_id)
            return None if p is None else watch.since.get(p)

        for op in table.idle_parts(now, settings.tracking.part_timeout_s, caught_up, observed_since,
                                   epoch=pipeline.clock_epoch):
            key = (op.camera_id, op.part_id, op.last_seq)
            if key in requested:
                continue
            requested.add(key)
            await topics.part_timeouts.send(key=op.camera_id.encode(), value={"part_id": op.part_id, "last_seq": op.last_seq})
        if len(requested) > 10_000:
            requested.clear()

    @app.task
    async def load_model() -> None:
        # fail fast on a missing/corrupt checkpoint, and have the model warm before the first frames
        try:
            await pipeline.runner.ensure_loaded()
        except Exception as exc:
            log.critical("cannot load the Inspector: %r", exc)
            await app.crash(exc)

    pipeline.cameras_ready = asyncio.Event()

    @app.task
    async def follow_cameras() -> None:
        await follow_camera_topic(settings, pipeline.registry, pipeline.runner.selection, pipeline.cameras_ready,
                                  on_rejected=lambda kind: pipeline.metrics.control_rejected.labels(kind=kind).inc())

    if pipeline.sampler is not None:
        @app.task
        async def follow_alerts() -> None:
            try:
                await follow_alert_topic(settings, pipeline.sampler.alerts)
            except Exception as exc:  # noqa: BLE001 - sampling is best effort: never a reason to stop inspecting
                log.error("not following the alerts topic (review sampling without SPC boost): %r", exc)

    @app.timer(interval=min(5.0, settings.tracking.timeout_check_s))
    async def update_gauges() -> None:
        update_worker_gauges(pipeline, app.consumer, table)

    @app.timer(interval=60.0)
    async def report_counters() -> None:
        if pipeline.deadletters or pipeline.parts_closed:
            log.info("parts closed %s, deadletters %s", dict(pipeline.parts_closed), dict(pipeline.deadletters))

    return {"inspect": inspect, "close_idle_parts": close_idle_parts, "find_idle_parts": find_idle_parts}


async def follow_camera_topic(settings: Settings, registry: CameraRegistry, selection: Any = None,
                              ready: asyncio.Event | None = None,
                              on_rejected: Callable[[str], None] | None = None) -> None:
    """Read the compacted `cameras` topic from the start and keep following it (no consumer
    group: every worker holds every camera's config). Model promotions (keys ``*``,
    ``*line:<id>``, ``*camera:<id>``) go to `selection` (a `streams.inspection.model_selection.ModelSelection`),
    in offset order; camera configs, resets and aliases to `registry`. An invalid record is logged,
    counted (`on_rejected(kind)`) and skipped (`streams.inspection.cameras.apply_cameras_record`).
    `ready` is set after the first poll that returns nothing (the topic is read up to its end),
    and when following stops."""
    from streams.kafka import clients

    k = settings.kafka
    consumer = clients.aio_consumer(k, k.topics.cameras, group_id=None, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
    try:
        await consumer.start()
    except BaseException:
        if ready is not None:
            ready.set()  # batches go on with what is known instead of waiting for the timeout
        raise
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            if not batches and ready is not None and not ready.is_set():
                ready.set()
            for records in batches.values():
                for r in records:
                    what = apply_cameras_record(r.key, r.value, registry, selection, r.offset, on_rejected)
                    if not what.startswith("rejected"):
                        label = {"promotion": "model promotion", "camera_config": "camera config"}.get(
                            what, what.replace("_", " "))
                        log.info("%s %s: %s", label, r.key, (r.value or b"")[:500])
    finally:
        if ready is not None:
            ready.set()
        await consumer.stop()


async def follow_alert_topic(settings: Settings, board: Any) -> None:
    """Read the `alerts` topic from the start and keep following it (no consumer group), applying
    every decodable Alert to `board` (a `streams.review.sampler.AlertBoard`); a record that does not
    decode is skipped (untrusted input, decision 14)."""
    from schemas.events import Alert
    from streams.kafka import clients

    k = settings.kafka
    codec = Alert.codec(clients.framing(k))
    consumer = clients.aio_consumer(k, k.topics.alerts, group_id=None, auto_offset_reset="earliest",
                                    enable_auto_commit=False)
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    try:
                        board.apply(Alert.from_avro(codec.decode(r.value)))
                    except Exception as exc:  # noqa: BLE001
                        log.warning("alerts record %s@%s skipped: %r", r.partition, r.offset, exc)
    finally:
        await consumer.stop()
