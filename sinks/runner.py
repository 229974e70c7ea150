"""Kafka → sink loop: decode Avro, buffer in the sink, flush by size or time, commit after the write.

Guarantees:
* Offsets are committed (own consumer group, manual commits) only for partitions whose batch the
  sink acknowledged; with an idempotent sink that is effectively-once storage.
* When the sink refuses a batch (`SinkBackpressureError`: ClickHouse down), every assigned
  partition is paused (nothing more is fetched: bounded memory), the refused partitions are
  rewound to the first uncommitted offset, and the sink is probed with growing waits; once it
  answers, the partitions resume and the rewound records are read and written again.
* Undecodable or unfitting records go to the dead-letter topic with a reason and are counted;
  the loop never dies on bad input. A record ClickHouse refuses on its own (a value its column
  cannot hold) is isolated by splitting its batch, dead-lettered (`sink_rejected`), and committed
  past; the rest of its batch is written.
* Dead letters are acknowledged by Kafka before any offset of their flush is committed; when they
  cannot be delivered the flush's partitions are rewound and held like a refused batch.
* A flush never keeps the loop from polling longer than the consumer's max.poll.interval: the
  sink stops retrying after `flush_budget_s`, and once one partition is refused the others are
  not tried; while held, every partition is paused and the loop keeps polling.

`SinkRunner.run(max_seconds=..., idle_s=...)` is the library entry point tests call in-process. The
runner builds no Kafka client itself: it is given factories (`defectstream sink` passes
`streams.kafka.clients.consumer` / `producer` bound to the Kafka settings) or ready clients (tests).
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from schemas.codec import AvroCodec, DecodeError
from schemas.events import DeadLetter
from sinks.base import TP, BatchingSink, SinkBackpressureError
from sinks.metrics import SinkMetrics
from sinks.settings import ClickHouseSettings, SinkSettings

log = logging.getLogger(__name__)
TOPIC_RECHECK_S = 10.0  # how often topics missing at start are looked for

# Schema of each pipeline topic's values, by the `TopicNames` field naming the topic.
TOPIC_SCHEMAS = {"defects": "DefectEvent", "parts": "PartInspected", "alerts": "Alert",
                 "review_frames": "ReviewFrame", "review_queue": "ReviewCandidate"}

# `factory(**options)` → a kafka-python KafkaConsumer / KafkaProducer with those options and the
# connection (brokers, security) already bound, e.g. `functools.partial(clients.consumer, kafka)`.
ClientFactory = Callable[..., Any]


@dataclass
class SinkStats:
    """Counters of one run."""

    consumed: int = 0
    rows_written: int = 0
    deadlettered: int = 0
    dead_reasons: Counter = field(default_factory=Counter)
    flushes: int = 0
    commits: int = 0
    commit_failures: int = 0
    holds: int = 0  # times the pipeline was held because the sink refused a batch
    rewinds: int = 0  # partitions rewound to re-read refused batches
    revoked_dropped: int = 0  # buffered records of revoked partitions left to their next owner


def import_kafka(module: str = "kafka") -> Any:
    """Import kafka-python (or one of its modules) without its Python 3.11+ importlib DeprecationWarnings.

    kafka-python 3.0 reads its protocol schemas with `importlib.resources.read_text`; the warning is
    attributed to importlib, so the project's `kafka.*` warning filter does not catch it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "open_text is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "read_text is deprecated", DeprecationWarning)
        return importlib.import_module(module)


class SinkRunner:
    """Consumes topics into a `BatchingSink` (one thread; `stop()` may be called from another)."""

    def __init__(
        self,
        sink: BatchingSink,
        settings: SinkSettings,
        topic_names: Any,
        topics: dict[str, str] | None = None,
        *,
        framing: str = "single_object",
        consumer_factory: ClientFactory | None = None,
        producer_factory: ClientFactory | None = None,
        consumer: Any = None,
        producer: Any = None,
        metrics: SinkMetrics | None = None,
    ):
        """
        Args:
            sink: where records go (`ClickHouseSink` in production).
            settings: group id, batch size, flush interval, hold waits.
            topic_names: the pipeline's topic names (a `TopicNames`: `deadletter` is where bad records
                go; `defects`, `parts`, `alerts` the default topics).
            topics: topic → Avro schema key; default the `defects`, `parts` (and `alerts`) topics.
            framing: the Avro wire framing of every topic, `single_object` or `confluent`.
            consumer_factory / producer_factory: build the kafka-python consumer / dead-letter
                producer from the options the runner needs (connection bound by the caller).
            consumer / producer: ready kafka-python clients (tests); the runner neither closes the
                consumer nor builds one then.
            metrics: where the run's Prometheus metrics go (a fresh `SinkMetrics` when None).
        """
        self.metrics = metrics or SinkMetrics()
        self.sink = sink
        self.settings = settings
        self.topic_names = topic_names
        if topics is None:
            names = ["defects", "parts"] + (["alerts"] if settings.include_alerts else [])
            if settings.include_review and hasattr(topic_names, "review_frames"):
                names += ["review_frames", "review_queue"]
            topics = {getattr(topic_names, n): TOPIC_SCHEMAS[n] for n in names}
        self.codecs = {t: AvroCodec(key, framing) for t, key in topics.items()}
        self._dead_codec = DeadLetter.codec(framing)
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._consumer = consumer
        self._producer = producer
        self._stop = threading.Event()
        self.stats = SinkStats()
        self.holding = False
        self._next_offset: dict[TP, int] = {}  # tp → offset after the last record handled
        self._first_uncommitted: dict[TP, int] = {}  # tp → first offset handled since the last commit
        self._raw: dict[tuple[TP, int], Any] = {}  # records in the sink's buffer, to dead-letter a rejected one
        self._dead_futures: list[Any] = []  # sends of dead letters not yet acknowledged
        self._hold_wait = settings.hold_initial_s
        self._probe_client: Any = None  # metadata client while topics the sink reads are missing
        self._next_probe = 0.0

    # -- clients ------------------------------------------------------------------------
    def _make_consumer(self) -> Any:
        if self._consumer_factory is None:
            raise ValueError("SinkRunner needs a consumer or a consumer_factory")
        return self._consumer_factory(
            group_id=self.settings.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.settings.auto_offset_reset,
            max_poll_records=self.settings.max_poll_records,
            max_poll_interval_ms=int(self.settings.max_poll_interval_s * 1000),
        )

    def _make_producer(self) -> Any:
        if self._producer_factory is None:
            raise ValueError("SinkRunner needs a producer or a producer_factory")
        return self._producer_factory(acks="all", linger_ms=5)

    @property
    def producer(self) -> Any:
        if self._producer is None:
            self._producer = self._make_producer()
        return self._producer

    # -- topics -------------------------------------------------------------------------
    def _topic_probe(self) -> Any:
        """A group-less client for topic metadata (asking the group's consumer for every topic's metadata
        makes its coordinator re-join the group later); the given consumer where the runner has no factory."""
        if self._probe_client is None:
            if self._consumer_factory is not None:
                self._probe_client = self._consumer_factory(group_id=None, enable_auto_commit=False)
            elif callable(getattr(self.consumer, "topics", None)) and hasattr(self.consumer, "partitions_for_topic"):
                self._probe_client = self.consumer
        return self._probe_client

    def _close_probe(self) -> None:
        if self._probe_client is not None and self._probe_client is not self.consumer:
            try:
                self._probe_client.close()
            except Exception as e:  # noqa: BLE001 - closing a metadata client must not fail the run
                log.debug("closing the topic probe: %s", e)
        self._probe_client = None

    def _missing_topics(self) -> set[str]:
        """The topics the sink reads that the broker has no partitions of yet (empty if it cannot tell)."""
        try:
            probe = self._topic_probe()
            if probe is None:
                return set()
            known = probe.topics()  # fetches the cluster's topic metadata
            return {t for t in self.codecs if t not in known or not probe.partitions_for_topic(t)}
        except Exception as e:  # noqa: BLE001 - a broker hiccup: the group join retries on its own
            log.debug("topic metadata unavailable: %s", e)
            return set()

    def _wait_for_topics(self, wait_s: float) -> set[str]:
        """Join the group only once every topic has partitions in the broker's metadata.

        A consumer that joins while its topics are being created can be handed an assignment made from
        metadata without them, and then read nothing from them (seen on a fresh broker, the sink started
        beside the worker that creates `parts`/`defects`). Returns the topics still missing after `wait_s`.
        """
        deadline = time.monotonic() + wait_s
        missing = self._missing_topics()
        if missing:
            log.info("sink: waiting up to %.0f s for topics %s to exist (the worker or `defectstream kafka-init` "
                     "creates them)", wait_s, ", ".join(sorted(missing)))
        while missing and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.5)
            missing = self._missing_topics()
        if missing:
            log.warning("sink: topics %s do not exist; the sink reads them as soon as they appear",
                        ", ".join(sorted(missing)))
        else:
            self._close_probe()
        return missing

    def _rejoin_if_created(self, missing: set[str], listener: Any) -> set[str]:
        """Re-join the group (after flushing) once a topic missing at start exists, so it gets assigned."""
        still = missing & self._missing_topics()
        if still == missing:
            return missing
        log.info("sink: topics %s exist now; re-joining the group to read them", ", ".join(sorted(missing - still)))
        if not still:
            self._close_probe()
        if not self.holding and self._pending():
            self._flush_and_commit()
        self.consumer.unsubscribe()
        self.consumer.subscribe(sorted(self.codecs), listener=listener)
        return still

    # -- loop ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish (flushes what it can, then returns)."""
        self._stop.set()

    def run(self, *, max_seconds: float | None = None, idle_s: float | None = None) -> SinkStats:
        """Consume until `stop()`, `max_seconds` elapsed, or nothing arrived for `idle_s` (all flushed).

        Returns:
            The run's counters. Records not acknowledged by the sink at the end are not committed
            (they are read again by the next run).
        """
        runner = self

        class _Listener(import_kafka().ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: N805
                runner._on_revoked({TP(tp.topic, tp.partition) for tp in revoked})

            def on_partitions_assigned(self, assigned):  # noqa: N805
                if runner.holding and assigned:
                    runner.consumer.pause(*assigned)

        self.consumer = self._consumer or self._make_consumer()
        listener = _Listener()
        missing = self._wait_for_topics(self.settings.topic_wait_s)
        self.consumer.subscribe(sorted(self.codecs), listener=listener)
        self.sink.setup()
        started = last_activity = time.monotonic()
        next_topic_check = started + TOPIC_RECHECK_S
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                if missing and now >= next_topic_check:
                    next_topic_check = now + TOPIC_RECHECK_S
                    missing = self._rejoin_if_created(missing, listener)
                if self.holding:
                    self._probe(now)
                    if self.holding:
                        # Everything is paused: this poll returns nothing but keeps the group membership.
                        self._unread(self.consumer.poll(timeout_ms=100))
                        last_activity = now
                        continue
                polled = self.consumer.poll(timeout_ms=100, max_records=self.settings.max_poll_records)
                for ktp, records in polled.items():
                    for rec in records:
                        self._handle(rec)
                if polled:
                    last_activity = now
                if self._due():
                    self._flush_and_commit()
                self.metrics.queue.set(self.sink.buffered)
                if idle_s is not None and not polled and not self._pending() and now - last_activity >= idle_s:
                    break
            if not self.holding and self._pending():
                self._flush_and_commit()
        finally:
            self._close_probe()
            self.sink.close()
            if self._consumer is None:
                self.consumer.close(autocommit=False)
            if self._producer is not None:
                self._producer.flush()
        return self.stats

    # -- steps --------------------------------------------------------------------------
    def _unread(self, polled: dict) -> None:
        """Put back records a poll returned while holding (a partition assigned mid-hold)."""
        for ktp, records in polled.items():
            if records:
                self.consumer.seek(ktp, min(r.offset for r in records))

    def _handle(self, rec: Any) -> None:
        tp = TP(rec.topic, rec.partition)
        self.stats.consumed += 1
        self.metrics.consumed.inc()
        self._first_uncommitted.setdefault(tp, rec.offset)
        self._next_offset[tp] = rec.offset + 1
        try:
            value = self.codecs[rec.topic].decode(rec.value)
        except DecodeError as exc:
            self._dead(rec, f"decode_error:{exc.reason}", str(exc))
            return
        try:
            self.sink.add(value, topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp_ms=rec.timestamp)
        except (ValueError, TypeError, KeyError, LookupError) as exc:
            self._dead(rec, "bad_record", f"{type(exc).__name__}: {exc}")
            return
        self._raw[(tp, rec.offset)] = rec

    def _dead(self, rec: Any, error_class: str, reason: str) -> None:
        log.warning("dead-letter %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reason)
        self.stats.deadlettered += 1
        self.stats.dead_reasons[error_class] += 1
        self.metrics.deadletters.labels(reason=error_class).inc()
        dl = DeadLetter(
            topic=rec.topic, partition=rec.partition, offset=rec.offset, original=rec.value or b"",
            reason=reason[:2000], error_class=error_class, failed_at=int(time.time() * 1000), key=rec.key,
        )
        self._dead_futures.append(
            self.producer.send(self.topic_names.deadletter, value=self._dead_codec.encode(dl.to_avro()), key=rec.key))

    def _await_dead_letters(self) -> None:
        """Wait until Kafka acknowledged every dead letter sent; raise the first send error."""
        futures, self._dead_futures = self._dead_futures, []
        self.producer.flush()
        for fut in futures:
            fut.get(timeout=30)

    def _pending(self) -> bool:
        return bool(self._next_offset) or self.sink.buffered > 0

    def _due(self) -> bool:
        if not self._pending():
            return False
        if self.sink.buffered >= self.settings.batch_size:
            return True
        age = self.sink.oldest_age_s() if self.sink.buffered else self.settings.flush_interval_s
        return age >= self.settings.flush_interval_s

    def _flush_and_commit(self) -> None:
        structs = import_kafka("kafka.structs")
        OffsetAndMetadata, TopicPartition = structs.OffsetAndMetadata, structs.TopicPartition  # noqa: N806

        started = time.perf_counter()
        result = self.sink.flush()
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        self.stats.flushes += 1
        self.stats.rows_written += result.rows
        self.metrics.rows_written.inc(result.rows)
        self.metrics.rows_rejected.inc(len(result.rejected))
        for rej in result.rejected:
            self._dead(self._raw[(rej.tp, rej.item.offset)], "sink_rejected", rej.reason)
        failed: dict[TP, SinkBackpressureError] = dict(result.failed)
        if self._dead_futures:
            try:
                self._await_dead_letters()  # dead letters durable before their offsets are committed
            except Exception as exc:  # noqa: BLE001 - Kafka refused or timed out: re-read, do not lose them
                log.error("dead letters not acknowledged (%s); rewinding and holding", exc)
                down = SinkBackpressureError(self.settings.hold_initial_s, f"dead letters not delivered: {exc}", cause=exc)
                for tp in self._next_offset:
                    failed.setdefault(tp, down)
        commits = {
            TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(nxt, "", -1)
            for tp, nxt in self._next_offset.items()
            if tp not in failed
        }
        if commits:
            try:
                self.consumer.commit(offsets=commits)
                self.stats.commits += 1
            except Exception as exc:  # noqa: BLE001 - e.g. CommitFailedError in a rebalance
                # The rows are durable; whoever owns the partitions next re-reads them from the last
                # commit and the idempotent tables count them once.
                self.stats.commit_failures += 1
                log.warning("offset commit failed (%s); records will be re-delivered and de-duplicated", exc)
        if failed:
            for tp in failed:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition), self._first_uncommitted[tp])
                self.stats.rewinds += 1
            self._hold(max(e.retry_after_s for e in failed.values()), next(iter(failed.values())))
        self._next_offset.clear()
        self._first_uncommitted.clear()
        self._raw.clear()
        self._update_lag()

    def _update_lag(self) -> None:
        """Refresh the per-partition lag gauge: high watermark minus the consumer's position."""
        lags: dict[tuple[str, int], int] = {}
        try:
            for ktp in self.consumer.assignment():
                hw = self.consumer.highwater(ktp)
                if hw is not None:  # known once a fetch returned for it; then the position is known too
                    lags[(ktp.topic, ktp.partition)] = hw - self.consumer.position(ktp)
        except Exception as exc:  # noqa: BLE001 - a gauge is not worth a stopped sink
            log.debug("sink lag not measured: %r", exc)
            return
        self.metrics.set_lag(lags)

    def _hold(self, retry_after_s: float, why: BaseException) -> None:
        assigned = list(self.consumer.assignment())
        self.consumer.pause(*assigned)
        self.holding = True
        self.metrics.holding.set(1)
        self.stats.holds += 1
        self._hold_wait = max(retry_after_s, self.settings.hold_initial_s)
        self._next_probe = time.monotonic() + self._hold_wait
        log.error("sink refused a batch (%s); holding %d partitions, next probe in %.1fs", why, len(assigned), self._hold_wait)

    def _probe(self, now: float) -> None:
        if now < self._next_probe:
            return
        if self.sink.healthy():
            self.consumer.resume(*self.consumer.paused())
            self.holding = False
            self.metrics.holding.set(0)
            log.warning("sink answers again; resuming")
            return
        self._hold_wait = min(self._hold_wait * 2, self.settings.hold_max_s)
        self._next_probe = now + self._hold_wait
        log.warning("sink still down; next probe in %.1fs", self._hold_wait)

    def _on_revoked(self, revoked: set[TP]) -> None:
        """Before partitions move to another member: forget their uncommitted records.

        kafka-python (3.x) calls rebalance listeners on the consumer's IO loop, the one that sends
        heartbeats: an INSERT there (with its retries) would stall the heartbeats and get the sink
        evicted, and a commit from there cannot complete at all. So nothing is written here; the new
        owner re-reads the records from the last commit and the tables count them once.
        """
        if not revoked:
            return
        self.stats.revoked_dropped += sum(1 for k in self._raw if k[0] in revoked)
        self.sink.drop(revoked)
        for tp in revoked:
            self._next_offset.pop(tp, None)
            self._first_uncommitted.pop(tp, None)
        for key in [k for k in self._raw if k[0] in revoked]:
            del self._raw[key]


def run_sink(
    clickhouse: ClickHouseSettings,
    settings: SinkSettings,
    topic_names: Any,
    *,
    timezone: str,
    consumer_factory: ClientFactory,
    producer_factory: ClientFactory,
    framing: str = "single_object",
    shift_of: Callable[[int], Any] | None = None,
    max_seconds: float | None = None,
    idle_s: float | None = None,
    runner_hook: Any = None,
) -> SinkStats:
    """Build the ClickHouse sink and its runner and run it (see `SinkRunner.run`).

    Args:
        clickhouse / settings: the ClickHouse connection and the sink runner's settings.
        topic_names: the pipeline's topic names (a `TopicNames`).
        timezone: the plant's IANA timezone (shift dates); `shift_of`: its calendar, for events
            that carry no shift (see `sinks.clickhouse.event_shift`).
        consumer_factory / producer_factory / framing: as for `SinkRunner`.
        runner_hook: `runner_hook(runner)` is called before the loop starts (tests keep the runner
            to stop it).

    The run's metrics are served on `settings.metrics_addr`:`settings.metrics_port` while it runs (see `sinks.metrics`).
    `defectstream sink` (`streams.commands.sink.run_sink`) builds all of these from `Settings`.
    """
    from sinks.clickhouse import ClickHouseSink, table_specs
    from sinks.metrics import serve

    sink = ClickHouseSink(clickhouse, table_specs(topic_names, timezone, shift_of=shift_of), settings)
    runner = SinkRunner(sink, settings, topic_names, framing=framing, consumer_factory=consumer_factory,
                        producer_factory=producer_factory)
    if runner_hook is not None:
        runner_hook(runner)
    server = serve(runner.metrics.registry, settings.metrics_port, settings.metrics_addr)
    try:
        return runner.run(max_seconds=max_seconds, idle_s=idle_s)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
