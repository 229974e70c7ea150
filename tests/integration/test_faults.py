"""Fault tests of issue 12 on the real stack: the pipeline (simulated cameras → worker → sink →
ClickHouse) runs while the worker is SIGKILLed again and again, ClickHouse is frozen and down, the
broker restarts, one of two workers dies, or the worker and the sink are stopped with SIGTERM.

Every test ends with the same audit in ClickHouse (`audit`): each part exactly one verdict, built
from all the frames the simulator sent (and closed on its last frame); each confirmed defect once
and no part with a second defect set; dead letters only for the bad records the test slipped in
(undecodable bytes every `BAD_EVERY` frames), each once and with a reason.

Scale: `DEFECTSTREAM_FAULT_PARTS` parts per test (default a few minutes on a laptop CPU;
`make fault` runs ≥ 1000). Frames are 128×256 and the packaged default model runs on the CPU.
Each test prints its numbers and writes them to `out/fault/<test>.json`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from clickhouse_driver import Client

from schemas.events import DeadLetter, FrameEvent
from sinks.migrations import migrate
from sinks.runner import SinkStats, import_kafka
from sinks.sql import DriverExecutor
from streams.commands.sink import run_sink
from streams.inspection.intake import expected_partition
from streams.settings import ClickHouseSettings, Settings, SinkSettings
from streams.sim.simulator import SimulationConfig, generate

kafka = import_kafka()
pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.usefixtures("needs_checkpoints")]

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "out" / "fault"
PARTS = int(os.environ.get("DEFECTSTREAM_FAULT_PARTS", "60"))
FRAME = (128, 256)
FRAMES_PER_PART = 3
PART_TIMEOUT_S = 5
BAD_EVERY = 25  # one undecodable record per this many frames: the only input that may be dead-lettered
BAD_VALUE = b"\x00not a frame event"


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Run:
    """What a test sends: frames in capture order with a few bad records between them."""

    records: list[tuple[bytes, bytes, str | None]]  # (key, value, part id or None for a bad record)
    frames_of: dict[str, int]  # part id → frames sent
    cameras: list[str]


def make_run(tag: str, parts: int = PARTS, cameras: int = 4, seed: int = 5) -> Run:
    cfg = SimulationConfig(cameras=cameras, parts=parts, frames_per_part=FRAMES_PER_PART, frame_shape=FRAME, seed=seed,
                           camera_prefix=tag, start_time_ms=int(time.time() * 1000) - 3_600_000, progress=False,
                           defect_rate=0.6)
    codec = FrameEvent.codec()
    records: list[tuple[bytes, bytes, str | None]] = []
    frames_of: dict[str, int] = {}
    for i, (ev, _gt) in enumerate(generate(cfg)):
        if i and i % BAD_EVERY == 0:
            records.append((ev.camera_id.encode(), BAD_VALUE, None))
        records.append((ev.camera_id.encode(), codec.encode(ev.to_avro()), ev.part_id))
        frames_of[ev.part_id] = frames_of.get(ev.part_id, 0) + 1
    assert len(frames_of) == parts
    return Run(records, frames_of, sorted({k.decode() for k, _, p in records if p}))


class Publisher(threading.Thread):
    """Sends a run's records to `frames` at a steady pace, each acknowledged (acks=all) before the
    next; a send that fails (broker down) is retried until it is acknowledged."""

    def __init__(self, bootstrap: str, topic: str, run: Run, seconds: float):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.run_, self.seconds = bootstrap, topic, run, seconds
        gap = len(run.cameras) * seconds / len(run.records)  # between two frames of one camera
        assert gap < PART_TIMEOUT_S / 2, (
            f"a camera would send a frame every {gap:.1f}s, too slow for the {PART_TIMEOUT_S}s part timeout: "
            "raise DEFECTSTREAM_FAULT_PARTS")
        self.sent = 0
        self.bad_at: set[tuple[int, int]] = set()  # (partition, offset) of the bad records
        self.last_frame_at: dict[str, float] = {}  # part id → monotonic time its last frame was acked
        self.first_frame_at: dict[str, float] = {}
        self.frames_sent: dict[str, int] = {}  # part id → frames acknowledged
        self.retries = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            producer = kafka.KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", retries=5,
                                           request_timeout_ms=10_000, reconnect_backoff_max_ms=1000)
            pause = self.seconds / max(1, len(self.run_.records))
            started = time.monotonic()
            for i, (key, value, part) in enumerate(self.run_.records):
                while not self._halt.is_set():
                    try:
                        md = producer.send(self.topic, key=key, value=value).get(timeout=30)
                        break
                    except Exception:  # noqa: BLE001 - broker restarting: send again
                        self.retries += 1
                        time.sleep(0.5)
                if self._halt.is_set():
                    return
                now = time.monotonic()
                if part is None:
                    self.bad_at.add((md.partition, md.offset))
                else:
                    self.first_frame_at.setdefault(part, now)
                    self.frames_sent[part] = self.frames_sent.get(part, 0) + 1
                    self.last_frame_at[part] = now
                self.sent = i + 1
                delay = started + (i + 1) * pause - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            producer.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc

    @property
    def done(self) -> bool:
        return self.sent == len(self.run_.records)

    def fraction(self) -> float:
        return self.sent / len(self.run_.records)

    def stop(self) -> None:
        self._halt.set()


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


# ----------------------------------------------------------------------------------------- the sink
class SinkThread:
    """`run_sink` (the production ClickHouse sink) in a thread of the test process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.box: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._target, daemon=True)
        self.thread.start()
        wait_until(lambda: "runner" in self.box or "error" in self.box, 60, "the sink to start", 0.1)

    def _target(self) -> None:
        try:
            self.box["stats"] = run_sink(self.settings, runner_hook=lambda r: self.box.setdefault("runner", r))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.box["error"] = exc

    def stop(self) -> SinkStats:
        self.box["runner"].stop()
        self.thread.join(120)
        assert not self.thread.is_alive(), "the sink did not stop"
        assert "error" not in self.box, self.box["error"]
        return self.box["stats"]


def sink_settings(worker_settings: Settings, host: str, port: int, database: str) -> Settings:
    s = worker_settings.model_copy(deep=True)
    s.clickhouse = ClickHouseSettings(host=host, port=port, database=database, user="writer", password="writer",
                                      connect_timeout_s=2.0)
    s.sink = SinkSettings(group_id=f"fault-sink-{uuid.uuid4().hex[:8]}", flush_interval_s=0.5, max_retries=1,
                          backoff_initial_s=0.1, hold_initial_s=0.5, hold_max_s=2.0, include_alerts=False,
                          metrics_port=0)
    return s


def sink_env(s: Settings) -> dict[str, str]:
    """DEFECTSTREAM_* variables of `s`'s sink part, for `defectstream sink` as a subprocess."""
    t = s.kafka.topics
    return {
        "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "DEFECTSTREAM_KAFKA__TOPICS__PARTS": t.parts, "DEFECTSTREAM_KAFKA__TOPICS__DEFECTS": t.defects,
        "DEFECTSTREAM_KAFKA__TOPICS__DEADLETTER": t.deadletter, "DEFECTSTREAM_KAFKA__TOPICS__ALERTS": t.alerts,
        "DEFECTSTREAM_CLICKHOUSE__HOST": s.clickhouse.host, "DEFECTSTREAM_CLICKHOUSE__PORT": str(s.clickhouse.port),
        "DEFECTSTREAM_CLICKHOUSE__DATABASE": s.clickhouse.database, "DEFECTSTREAM_CLICKHOUSE__USER": "writer",
        "DEFECTSTREAM_CLICKHOUSE__PASSWORD": "writer", "DEFECTSTREAM_SINK__FLUSH_INTERVAL_S": "0.5",
        "DEFECTSTREAM_SINK__GROUP_ID": s.sink.group_id, "DEFECTSTREAM_SINK__INCLUDE_ALERTS": "false",
        "DEFECTSTREAM_SINK__METRICS_PORT": "0", "DEFECTSTREAM_PLANT__TIMEZONE": "UTC",
    }


# ---------------------------------------------------------------------------------------- the audit
@dataclass
class Audit:
    """What ClickHouse and the dead-letter topic hold at the end of a run, against what was sent."""

    parts_sent: int = 0
    parts_stored: int = 0
    parts_lost: list[str] = field(default_factory=list)
    parts_unknown: list[str] = field(default_factory=list)
    parts_doubled: list[str] = field(default_factory=list)  # more than one verdict (event id)
    parts_short: list[tuple] = field(default_factory=list)  # (part, frames, closed_reason) not (sent, LAST_FRAME)
    defects_stored: int = 0
    defects_lost: int = 0  # the verdict counts more defects than stored
    defects_doubled: int = 0  # more defect ids stored than the verdict counts (a second defect set)
    defects_short: int = 0  # a defect tracked over more frames than its part was sent (frames_total)
    redelivered_rows: int = 0  # rows stored again under the same event id (counted once by every query)
    bad_sent: int = 0
    bad_dead_lettered: int = 0
    good_dead_lettered: dict[str, int] = field(default_factory=dict)  # error class → frames
    dead_letters_without_reason: int = 0

    @property
    def rows_lost(self) -> int:
        return len(self.parts_lost) + self.defects_lost

    @property
    def rows_doubled(self) -> int:
        return len(self.parts_doubled) + self.defects_doubled

    def problems(self) -> list[str]:
        out = []
        for name in ("parts_lost", "parts_unknown", "parts_doubled", "parts_short"):
            if getattr(self, name):
                out.append(f"{name}: {getattr(self, name)[:10]} ({len(getattr(self, name))})")
        for name in ("defects_lost", "defects_doubled", "defects_short", "dead_letters_without_reason"):
            if getattr(self, name):
                out.append(f"{name}: {getattr(self, name)}")
        if self.bad_dead_lettered != self.bad_sent:
            out.append(f"bad records sent {self.bad_sent}, dead-lettered {self.bad_dead_lettered}")
        if self.good_dead_lettered:
            out.append(f"good frames dead-lettered: {self.good_dead_lettered}")
        return out


def stored_parts(ch: Client) -> int:
    return ch.execute("SELECT uniqExact(part_id) FROM parts")[0][0]


def wait_for_clickhouse(ch_factory: Callable[[], Client], run: Run, timeout_s: float) -> None:
    """Until every part sent has a verdict and every defect its verdict counts is stored, then a
    few seconds more (a wrong second verdict or defect set would arrive beside the right ones). A timeout
    says what was there, and which parts were missing, so a failure can be read without a rerun."""
    last: dict[str, Any] = {}

    def complete() -> bool:
        ch = ch_factory()
        try:
            parts = stored_parts(ch)
            want = ch.execute("SELECT sum(n) FROM (SELECT part_id, max(defects_total) AS n FROM parts GROUP BY part_id)")[0][0]
            have = ch.execute("SELECT uniqExact(event_id) FROM defects")[0][0]
            last.update(parts=parts, defects=have, defects_wanted=want)
            if parts < len(run.frames_of):
                seen = {r[0] for r in ch.execute("SELECT DISTINCT part_id FROM parts")}
                missing = sorted(set(run.frames_of) - seen)
                last.update(missing_parts=len(missing), first_missing=missing[:8])
            return parts >= len(run.frames_of) and have >= want
        except Exception as e:  # noqa: BLE001 - ClickHouse restarting
            last["error"] = repr(e)
            return False
        finally:
            ch.disconnect()
    try:
        wait_until(complete, timeout_s, f"{len(run.frames_of)} parts and their defects in ClickHouse", 1.0)
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen: {json.dumps(last, default=str)}") from None
    time.sleep(6)


def read_dead_letters(bootstrap: str, topic: str) -> list[dict]:
    consumer = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                   enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        codec = DeadLetter.codec()
        return [codec.decode(m.value) for m in consumer]
    finally:
        consumer.close()


def audit(ch: Client, run: Run, publisher: Publisher, bootstrap: str, deadletter_topic: str) -> Audit:
    a = Audit(parts_sent=len(run.frames_of))
    verdicts = ch.execute(
        "SELECT part_id, uniqExact(event_id), groupUniqArray(frames), groupUniqArray(closed_reason), "
        "max(defects_total), count() FROM parts GROUP BY part_id")
    a.parts_stored = len(verdicts)
    stored = {}
    for part, ids, frames, reasons, total, rows in verdicts:
        stored[part] = total
        a.redelivered_rows += rows - ids
        if part not in run.frames_of:
            a.parts_unknown.append(part)
            continue
        if ids > 1:
            a.parts_doubled.append(part)
        if frames != [run.frames_of[part]] or reasons != ["LAST_FRAME"]:
            a.parts_short.append((part, frames, reasons))
    a.parts_lost = sorted(set(run.frames_of) - set(stored))
    for part, ids, rows, frames_total in ch.execute(
            "SELECT part_id, uniqExact(event_id), count(), groupUniqArray(frames_total) FROM defects GROUP BY part_id"):
        a.defects_stored += ids
        a.redelivered_rows += rows - ids
        want = stored.get(part, 0)
        a.defects_doubled += max(0, ids - want)
        a.defects_lost += max(0, want - ids)
        if part in run.frames_of and max(frames_total) > run.frames_of[part]:
            a.defects_short += ids
    with_defects = {r[0] for r in ch.execute("SELECT DISTINCT part_id FROM defects")}
    a.defects_lost += sum(n for p, n in stored.items() if p not in with_defects)
    a.bad_sent = len(publisher.bad_at)
    dead = read_dead_letters(bootstrap, deadletter_topic)
    seen: set[tuple[int, int]] = set()
    for d in dead:
        where = (d["partition"], d["offset"])
        if not d["reason"] or not d["error_class"]:
            a.dead_letters_without_reason += 1
        if where in publisher.bad_at:
            if where not in seen:
                a.bad_dead_lettered += 1
        else:
            a.good_dead_lettered[d["error_class"]] = a.good_dead_lettered.get(d["error_class"], 0) + 1
        seen.add(where)
    return a


def report(name: str, a: Audit, **numbers: Any) -> dict:
    """Print the test's numbers and write them to out/fault/<name>.json."""
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {"test": name, "parts_sent": a.parts_sent, "parts_processed": a.parts_stored, "rows_lost": a.rows_lost,
           "rows_doubled": a.rows_doubled, "defects_stored": a.defects_stored,
           "redelivered_rows_same_id": a.redelivered_rows, "bad_records": a.bad_sent,
           "bad_records_dead_lettered": a.bad_dead_lettered, "good_frames_dead_lettered": a.good_dead_lettered,
           **numbers, "problems": a.problems()}
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\n[fault] {name}: " + json.dumps(doc, default=str))
    return doc


def fresh_db(clickhouse_connect, fresh_database) -> Callable[[], Client]:
    migrate(DriverExecutor(clickhouse_connect(database=fresh_database)))
    return lambda: clickhouse_connect(database=fresh_database)


def publish_seconds(run: Run, floor: float) -> float:
    """How long a run's publishing lasts: long enough for the faults, and no faster than ~25 frames/s."""
    return max(floor, len(run.records) / 25.0)


def drain_timeout(run: Run) -> float:
    return 120 + len(run.records) / 4.0


# -------------------------------------------------------------------------------------------- tests
KILLS = int(os.environ.get("DEFECTSTREAM_FAULT_KILLS", "3"))


def test_worker_sigkilled_again_and_again_loses_and_doubles_nothing(
        stack, group_worker_factory, kafka_bootstrap, clickhouse_connect, fresh_database):
    """SIGKILL of the worker `KILLS` times while 4 cameras keep publishing; each time it stays down
    for longer than the part timeout; the last restart gets an empty state directory, so the
    tracking state comes from the changelog alone."""
    run = make_run("k")
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    s = worker.settings
    worker.start()
    ch = fresh_db(clickhouse_connect, fresh_database)
    sink = SinkThread(sink_settings(s, stack.host, stack.clickhouse_port, fresh_database))
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run,
                    publish_seconds(run, KILLS * (PART_TIMEOUT_S + 15) + 10))
    pub.start()
    kills, downtimes, published_while_down = 0, [], 0
    try:
        for k in range(KILLS):
            time.sleep(4)  # the worker processes a while, parts open on every camera
            assert pub.is_alive(), "the publisher finished before the kills: raise the publish time"
            worker.stop(kill=True)
            kills += 1
            down_at, sent_at_kill = time.monotonic(), pub.sent
            time.sleep(PART_TIMEOUT_S + 3)
            if k == KILLS - 1:  # restore from the changelog alone
                shutil.rmtree(s.data_dir, ignore_errors=True)
            worker.start()
            downtimes.append(round(time.monotonic() - down_at, 1))
            published_while_down += pub.sent - sent_at_kill
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(ch, run, drain_timeout(run))
        assert worker.alive(), worker.log_tail()
        # Every frame processed and acked: the group's committed offsets reach the end of `frames`
        # (a frame read past but never acked holds them below it for good).
        frames_end = _end_offsets(s.kafka.bootstrap_servers, s.kafka.topics.frames)
        deadline = time.monotonic() + 30
        while (frames_committed := _committed(s.kafka.bootstrap_servers, s.app_id, s.kafka.topics.frames)) \
                != frames_end and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        pub.stop()
        stats = sink.stop()
    a = audit(ch(), run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    report("sigkill", a, kills_survived=kills, downtimes_s=downtimes, part_timeout_s=PART_TIMEOUT_S,
           frames_published_while_down=published_while_down, state_dir_wiped_before_last_restart=True,
           sink_rows_written=stats.rows_written, worker_committed_vs_end=[frames_committed, frames_end])
    assert min(downtimes) > PART_TIMEOUT_S and published_while_down > 0
    assert not a.problems(), a.problems()
    assert frames_committed == frames_end, "the worker's committed offsets on `frames` stopped short of the end"


def test_clickhouse_down_30s_in_the_middle_of_inserts(group_worker_factory, kafka_bootstrap, clickhouse_server_factory):
    """A throwaway ClickHouse fails twice while the sink inserts every 0.5 s: frozen (SIGSTOP) for
    30 s, so INSERTs hang in flight, then killed (SIGKILL) and down for 30 s. The sink holds (never
    dies), then stores every row once."""
    server = clickhouse_server_factory()
    server.query("CREATE DATABASE fault")
    ex = DriverExecutor(server.client("fault"))
    migrate(ex)
    ex.close()
    run = make_run("o")
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    s = worker.settings
    worker.start()
    sink = SinkThread(sink_settings(s, "127.0.0.1", server.tcp_port, "fault"))
    runner = sink.box["runner"]
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 100))
    pub.start()
    rows_at: dict[str, int] = {}
    try:
        wait_until(lambda: runner.stats.rows_written > 0 and pub.fraction() > 0.15, 120, "rows being inserted")
        wait_until(lambda: runner.sink.buffered > 0, 30, "rows waiting for the next INSERT", 0.02)
        server.freeze()  # the next INSERT (≤ 0.5 s away) hangs in flight
        rows_at["freeze"] = runner.stats.rows_written
        time.sleep(30)
        assert sink.thread.is_alive()
        server.freeze(False)
        wait_until(lambda: runner.stats.rows_written > rows_at["freeze"] and not runner.holding, 120,
                   "inserts after the freeze")
        wait_until(lambda: runner.sink.buffered > 0, 30, "rows waiting for the next INSERT", 0.02)
        server.stop(kill=True)
        rows_at["kill"] = runner.stats.rows_written
        time.sleep(30)
        assert runner.holding and sink.thread.is_alive()
        server.start()
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(lambda: server.client("fault"), run, drain_timeout(run))
    finally:
        pub.stop()
        stats = sink.stop()
    client = server.client("fault")
    a = audit(client, run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    client.disconnect()
    report("clickhouse_outage", a, outages_survived=2, outages=["SIGSTOP 30 s", "SIGKILL, down 30 s"],
           sink_holds=stats.holds, sink_rewinds=stats.rewinds, rows_written_at_outage=rows_at,
           sink_rows_written=stats.rows_written)
    assert stats.holds >= 1 and stats.rewinds >= 1
    assert not a.problems(), a.problems()




def collect_refused_sockets() -> None:
    """kafka-python leaves the sockets of connects refused while a broker is down to the garbage
    collector, whose ResourceWarnings would surface (as errors) in whatever test runs next."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.parametrize("part_timeout_s", [
    60,
    PART_TIMEOUT_S,  # the part timer pauses while the broker does not answer (BrokerWatch)
], ids=["timeout-above-outage", "timeout-below-outage"])
def test_kafka_broker_restarted_during_a_run(stack, group_worker_factory, kafka_broker_factory, clickhouse_connect,
                                             fresh_database, part_timeout_s):
    """A throwaway broker carries the whole run and is restarted (SIGTERM, down ~10 s, same data)
    while frames flow; worker, sink and cameras reconnect; nothing is lost or counted twice."""
    broker = kafka_broker_factory()
    run = make_run("b")
    worker = group_worker_factory(broker.bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(part_timeout_s))
    s = worker.settings
    worker.start()
    ch = fresh_db(clickhouse_connect, fresh_database)
    sink = SinkThread(sink_settings(s, stack.host, stack.clickhouse_port, fresh_database))
    pub = Publisher(broker.bootstrap, s.kafka.topics.frames, run, publish_seconds(run, 90))
    pub.start()
    worker_restarts = 0
    try:
        wait_until(lambda: pub.fraction() > 0.25, 120, "a quarter of the run published")
        down_at = time.monotonic()
        broker.stop()
        time.sleep(10)
        broker.start()
        restarted_at = time.monotonic()
        broker_down_s = restarted_at - down_at
        while not pub.done and pub.is_alive():
            if not worker.alive():  # a supervisor (systemd, compose) restarts a worker that stopped
                worker_restarts += 1
                worker.start()
            time.sleep(1)
        assert pub.error is None and pub.done, pub.error
        while not _complete(ch, run):
            if not worker.alive():
                worker_restarts += 1
                worker.start()
            if time.monotonic() - restarted_at > drain_timeout(run):
                break
            time.sleep(1)
        wait_for_clickhouse(ch, run, 30)
    finally:
        pub.stop()
        stats = sink.stop()
        collect_refused_sockets()
    a = audit(ch(), run, pub, broker.bootstrap, s.kafka.topics.deadletter)
    report(f"broker_restart_timeout{part_timeout_s}s", a, outages_survived=1, broker_restarts=1,
           broker_down_s=round(broker_down_s, 1), part_timeout_s=part_timeout_s,
           worker_restarts_by_supervisor=worker_restarts, publisher_retries=pub.retries,
           sink_rows_written=stats.rows_written)
    assert not a.problems(), a.problems()
    assert worker_restarts == 0, "the worker stopped on a broker restart"


def _complete(ch_factory: Callable[[], Client], run: Run) -> bool:
    ch = ch_factory()
    try:
        return stored_parts(ch) >= len(run.frames_of)
    finally:
        ch.disconnect()


def test_second_worker_takes_over_a_killed_workers_cameras_and_open_parts(
        stack, group_worker_factory, kafka_bootstrap, clickhouse_connect, fresh_database):
    """Two workers share 4 partitions; one is SIGKILLed mid-run and never comes back: the other gets
    its partitions, restores its cameras' open parts from the changelog and finishes them."""
    run = make_run("g", cameras=6)
    a_env = dict(DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    w1 = group_worker_factory(kafka_bootstrap, partitions=4, **a_env)
    w2 = group_worker_factory(kafka_bootstrap, prefix=w1.prefix, partitions=4, **a_env)
    s = w1.settings
    assert len({expected_partition(c.encode(), 4) for c in run.cameras}) >= 3, run.cameras
    w1.start()
    w2.start()
    ch = fresh_db(clickhouse_connect, fresh_database)
    sink = SinkThread(sink_settings(s, stack.host, stack.clickhouse_port, fresh_database))
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 60))
    pub.start()
    try:
        wait_until(lambda: _processing(w1) and _processing(w2), 90, "both workers processing frames")
        w1_cameras = {c for c in run.cameras if expected_partition(c.encode(), 4) in _frames_partitions(w1)}
        assert w1_cameras and w1_cameras != set(run.cameras), _frames_partitions(w1)

        def open_on_w1() -> list[str]:  # parts of w1's cameras with some but not all frames acked
            return [p for p, n in list(pub.frames_sent.items())
                    if 0 < n < run.frames_of[p] and p.rsplit("-", 1)[0] in w1_cameras]
        wait_until(lambda: pub.fraction() > 0.3 and open_on_w1(), 120, "a third published, parts open on w1", 0.05)
        w1.stop(kill=True)
        killed_at = time.monotonic()
        open_at_kill = open_on_w1()
        wait_until(lambda: len(_frames_partitions(w2)) == 4, 60, "the survivor to take all 4 partitions")
        taken_over_at = time.monotonic()
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(ch, run, drain_timeout(run))
        assert w2.alive(), w2.log_tail()
    finally:
        pub.stop()
        stats = sink.stop()
    a = audit(ch(), run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    report("two_workers_one_killed", a, kills_survived=1, workers=2, partitions=4, cameras=len(run.cameras),
           killed_workers_cameras=sorted(w1_cameras), its_parts_open_at_kill=open_at_kill,
           seconds_to_take_over=round(taken_over_at - killed_at, 1), sink_rows_written=stats.rows_written)
    assert open_at_kill, "no part of the killed worker's cameras was open when it died"
    assert not a.problems(), a.problems()


def _frames_partitions(worker) -> set[int]:
    """The `frames` partitions of the worker's latest assignment (Faust logs a table: `| topic | {0-1, 3} |`)."""
    import re

    text = worker.log_path.read_text(errors="replace")
    last = text.rsplit("Setting newly assigned partitions", 1)
    if len(last) < 2:
        return set()
    m = re.search(re.escape(worker.settings.kafka.topics.frames) + r"\s*\|\s*\{([^}]*)\}", last[1].split("Executing", 1)[0])
    out: set[int] = set()
    for item in (m.group(1).split(",") if m else []):
        lo, _, hi = item.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _processing(worker) -> bool:
    return bool(_frames_partitions(worker))


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = kafka.KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [kafka.TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def test_sigterm_stops_worker_and_sink_in_bounded_time_with_offsets_committed(
        stack, group_worker_factory, kafka_bootstrap, clickhouse_connect, fresh_database, tmp_path):
    """SIGTERM while frames flow: the worker finishes (or hands back) its batch, commits and exits
    within a bound, and its restart re-reads nothing it had processed; the sink (`defectstream
    sink`) flushes, commits to the end of its topics and exits within a bound."""
    bound_s = 30.0
    run = make_run("t")
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    s = worker.settings
    worker.start()
    ch = fresh_db(clickhouse_connect, fresh_database)
    sset = sink_settings(s, stack.host, stack.clickhouse_port, fresh_database)
    sink_log = tmp_path / "sink.log"

    def start_sink() -> subprocess.Popen:
        with open(sink_log, "a") as log:
            return subprocess.Popen([sys.executable, "-m", "streams.cli", "sink"], cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **sink_env(sset)})

    sink = start_sink()
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 50))
    pub.start()
    exits: dict[str, list[float]] = {"worker": [], "sink": []}

    def term(proc: subprocess.Popen, who: str) -> int:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(bound_s * 3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            rc = -9
        exits[who].append(round(time.monotonic() - t0, 1))
        return rc

    try:
        wait_until(lambda: pub.fraction() > 0.3, 120, "a third of the run published")
        worker_rc = term(worker.proc, "worker")
        sink_rc = term(sink, "sink")
        worker.start()
        sink = start_sink()
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(ch, run, drain_timeout(run))
        reread = "re-delivered frames already in the tracking state" in worker.log_path.read_text(errors="replace")
        sink_rc_end = term(sink, "sink")
        committed = _committed(s.kafka.bootstrap_servers, sset.sink.group_id, s.kafka.topics.parts)
        ends = _end_offsets(s.kafka.bootstrap_servers, s.kafka.topics.parts)
        worker_rc_end = term(worker.proc, "worker")
        frames_committed = _committed(s.kafka.bootstrap_servers, s.app_id, s.kafka.topics.frames)
        frames_end = _end_offsets(s.kafka.bootstrap_servers, s.kafka.topics.frames)
    finally:
        pub.stop()
        if sink.poll() is None:
            sink.kill()
    a = audit(ch(), run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    report("sigterm", a, sigterms=len(exits["worker"]) + len(exits["sink"]), exit_s=exits,
           exit_codes={"worker": [worker_rc, worker_rc_end], "sink": [sink_rc, sink_rc_end]},
           sink_committed_vs_end=[committed, ends], worker_committed_vs_end=[frames_committed, frames_end],
           processed_frames_reread_after_sigterm=reread)
    assert max(exits["worker"] + exits["sink"]) < bound_s, exits
    assert (sink_rc, sink_rc_end) == (0, 0), sink_log.read_text()[-3000:]
    assert (worker_rc, worker_rc_end) == (0, 0), worker.log_tail()
    assert committed == ends, "the sink did not commit to the end of `parts` on SIGTERM"
    assert frames_committed == frames_end, "the worker did not commit to the end of `frames` on SIGTERM"
    assert not a.problems(), a.problems()
    assert not reread, "the restart after SIGTERM re-read processed frames: their offsets were not committed"


def test_frames_redelivered_after_a_sigkill_are_not_dead_lettered(group_worker_factory, kafka_bootstrap):
    """One SIGKILL while frames flow, the restart re-reads what was not committed: no good frame
    may end up in the dead-letter topic. (They used to, as duplicate_frame: 119 of 180 good frames
    in a 60-part run with 3 kills; now the tracking state remembers the offset it has read up to.)"""
    run = make_run("d", parts=40, cameras=2)
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    s = worker.settings
    worker.start()
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, 20)
    pub.start()
    try:
        wait_until(lambda: pub.fraction() > 0.5, 60, "half of the run published")
        worker.stop(kill=True)
        worker.start()
        pub.join(120)
        assert pub.error is None and pub.done, pub.error
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # every bad record dead-lettered: the backlog is processed
            dead = read_dead_letters(s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
            if pub.bad_at <= {(d["partition"], d["offset"]) for d in dead}:
                break
    finally:
        pub.stop()
    good = [(d["error_class"], d["offset"]) for d in dead if (d["partition"], d["offset"]) not in pub.bad_at]
    assert not good, f"{len(good)} good frames dead-lettered: {good[:5]}"
    assert "re-delivered frames already in the tracking state" in worker.log_path.read_text(), \
        "nothing was re-delivered: the kill did not test anything"


def _zero_detector_except_golden_width(path: Path, golden_width: int = 96) -> None:
    """Edit an ONNX export in place (onnx package) so that its output is zero on every input that
    is not `golden_width` px wide: parity on the old golden input passes, every real frame finds
    nothing. The file keeps its name and metadata."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    out = g.output[0].name
    t = f"t{uuid.uuid4().hex[:6]}_"  # fresh names: the file may carry an earlier edit
    for n in g.node:
        for i, o in enumerate(n.output):
            if o == out:
                n.output[i] = t + "untampered"
    g.initializer.extend([numpy_helper.from_array(np.array(3, np.int64), t + "axis"),
                          numpy_helper.from_array(np.array(golden_width, np.int64), t + "width")])
    g.node.extend([
        helper.make_node("Shape", [g.input[0].name], [t + "shape"]),
        helper.make_node("Gather", [t + "shape", t + "axis"], [t + "w"], axis=0),
        helper.make_node("Equal", [t + "w", t + "width"], [t + "keep"]),
        helper.make_node("Cast", [t + "keep"], [t + "keepf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [t + "untampered", t + "keepf"], [out]),
    ])
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def test_an_onnx_file_altered_on_disk(stack, group_worker_factory, kafka_bootstrap, clickhouse_connect,
                                      fresh_database, tmp_path):
    """The worker serves `onnxruntime` from a checkpoint directory whose detector export was edited
    on disk before it started (outputs zeroed except on the golden input's width), and edited again
    while it ran, followed by a SIGKILL. Each start refuses the edited file (its SHA-256 is not the
    one recorded at export), re-exports it from the checkpoint and serves the real model: nothing
    lost or doubled, no crash loop, and the defects are found (the edited file would find none)."""
    from models.core.checkpoints import DEFAULT_CHECKPOINT_DIR
    from models.loading import load_inspector
    from models.core.checkpoints import load_checkpoint
    from models.runtime.runtimes import export_name

    model_dir = tmp_path / "model"
    shutil.copytree(DEFAULT_CHECKPOINT_DIR, model_dir, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.*"))
    load_inspector(model_dir, device="cpu", runtime="onnxruntime")  # the exports and their records
    det = model_dir / "detector_fast.pt"
    export = model_dir / export_name(det, load_checkpoint(det).info.content_hash)
    _zero_detector_except_golden_width(export)
    run = make_run("x", cameras=2)
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S),
                                  DEFECTSTREAM_MODEL__PATH=str(model_dir), DEFECTSTREAM_MODEL__RUNTIME="onnxruntime")
    s = worker.settings
    worker.start(timeout_s=180)
    ch = fresh_db(clickhouse_connect, fresh_database)
    sink = SinkThread(sink_settings(s, stack.host, stack.clickhouse_port, fresh_database))
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 30))
    pub.start()
    logs = []
    try:
        wait_until(lambda: pub.fraction() > 0.3, 120, "a third of the run published")
        _zero_detector_except_golden_width(export)  # altered again while it serves, then a crash
        worker.stop(kill=True)
        logs.append(worker.log_path.read_text(errors="replace"))
        worker.start(timeout_s=180)
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(ch, run, drain_timeout(run))
        assert worker.alive(), worker.log_tail()
        logs.append(worker.log_path.read_text(errors="replace"))
    finally:
        pub.stop()
        stats = sink.stop()
    a = audit(ch(), run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    refusals = [sum(1 for line in log.splitlines() if "refusing ONNX export" in line and export.name in line)
                for log in logs]
    versions = {r[0] for r in ch().execute("SELECT DISTINCT model_version FROM parts")}
    report("onnx_altered", a, worker_starts=worker.starts, edited_file_refusals_per_start=refusals,
           refused_file_kept=export.with_name(export.name + ".refused").is_file(), model_versions=sorted(versions),
           sink_rows_written=stats.rows_written)
    assert refusals == [1, 1], refusals  # each start refused the edited export once, then served
    assert worker.starts == 2  # no crash loop: one start per start the test made
    assert versions == {load_inspector(model_dir, device="cpu").model_version}
    assert a.defects_stored > 0, "no defect found: the edited export served"
    assert not a.problems(), a.problems()


# ------------------------------------------------------------- issue 17: the cameras topic under faults
def _worker_logs(worker) -> str:
    """Every log the worker wrote, over all its starts."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(Path(worker.log_dir).glob("worker-*.log")))


def _wait_for_log(worker, text: str, timeout_s: float) -> None:
    wait_until(lambda: text in worker.log_path.read_text(errors="replace") or not worker.alive(), timeout_s,
               f"{text!r} in the worker log")
    assert worker.alive(), worker.log_tail()


def _no_crash_loop(worker) -> dict[str, int]:
    """What the worker's logs say about stops: a crash loop shows as ModelUnavailable / a stopped batch
    or a crashed follower task on every start."""
    logs = _worker_logs(worker)
    return {"batches_failed": logs.count("stopping the worker"), "model_unavailable": logs.count("ModelUnavailable"),
            "tracebacks": logs.count("Traceback (most recent call last)")}


def one_verdict_audit(ch: Client, run: Run, publisher: Publisher, bootstrap: str,
                      deadletter_topic: str) -> tuple[Audit, int]:
    """`audit`, with one verdict per part whatever the model version, as every query counts (issue 17,
    item 5): a part emitted under one model before the SIGKILL and closed again under another after it
    (its model gone) has two verdict ids but counts once, with the defect set of its later close.
    Returns the audit and how many parts were closed under two model versions."""
    from sinks.sql import render
    from streams.spc import queries as q

    a = audit(ch, run, publisher, bootstrap, deadletter_topic)
    ex = DriverExecutor(ch)
    two_models = {p for p, n in ch.execute("SELECT part_id, uniqExact(model_version) FROM parts GROUP BY part_id")
                  if n > 1}
    f = q.ReportFilters(0, 2**62)
    sql, params = q.deduped_parts_sql(f, extra_columns=("part_id", "frames", "closed_reason"))
    winners = ex.query(render(sql, params))
    per_part: dict[str, int] = {}
    for row in winners:
        per_part[row[9]] = per_part.get(row[9], 0) + 1
    a.parts_doubled = sorted(p for p, n in per_part.items() if n > 1) + \
        sorted(p for p in a.parts_doubled if p not in two_models)
    a.parts_short = [x for x in a.parts_short if x[0] not in two_models] + \
        [(row[9], row[10], row[11]) for row in winners
         if row[9] in two_models and (row[10] != run.frames_of.get(row[9]) or row[11] != "LAST_FRAME")]
    want = {row[9]: int(row[8]) for row in winners}
    have: dict[str, int] = {}
    for row in ex.query(q.defect_set_sql(f)):
        have[row[3]] = have.get(row[3], 0) + 1
    a.defects_doubled = sum(max(0, have.get(p, 0) - n) for p, n in want.items())
    a.defects_lost = sum(max(0, n - have.get(p, 0)) for p, n in want.items())
    return a, len(two_models)


def test_a_promotion_during_open_parts_followed_by_a_sigkill(
        stack, group_worker_factory, kafka_bootstrap, clickhouse_connect, fresh_database):
    """Parts open on a promoted model v2, the promotion is withdrawn (the cameras go back to the default
    for their next parts) and the worker is SIGKILLed at once: the restarted worker never loads v2 again.
    Its open parts must finish on the current model (they used to stop the worker with ModelUnavailable
    on every restart); nothing lost, nothing counted twice, no crash loop."""
    from models.loading import DEFAULT_CHECKPOINT_DIR, model_identity
    from streams.commands.models import clear_promotion, promote

    run = make_run("pm")
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    s = worker.settings
    worker.start()
    ch = fresh_db(clickhouse_connect, fresh_database)
    sink = SinkThread(sink_settings(s, stack.host, stack.clickhouse_port, fresh_database))
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 60))
    pub.start()
    v2_path = DEFAULT_CHECKPOINT_DIR / "detector_paper.pt"
    v2 = model_identity(v2_path)[0]
    try:
        time.sleep(4)  # parts open on the default model
        promote(s, str(v2_path), [DEFAULT_CHECKPOINT_DIR])
        _wait_for_log(worker, f"model {v2} loaded", 120)

        def closed_on_v2() -> bool:
            c = ch()
            try:
                return c.execute("SELECT count() FROM parts WHERE model_version = %(v)s", {"v": v2})[0][0] > 0
            finally:
                c.disconnect()
        wait_until(closed_on_v2, 60, f"a verdict under {v2}")  # so the cameras' next parts opened on v2
        assert pub.is_alive(), "the publisher finished before the kill: raise the publish time"
        clear_promotion(s)
        worker.stop(kill=True)
        killed_at = pub.sent
        worker.start()
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(ch, run, drain_timeout(run))
        assert worker.alive(), worker.log_tail()
    finally:
        pub.stop()
        stats = sink.stop()
    a, two_models = one_verdict_audit(ch(), run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    switched = _worker_logs(worker).count("which is no longer loaded; it finishes on")
    stops = _no_crash_loop(worker)
    report("promotion_then_sigkill", a, promoted=v2, frames_sent_at_kill=killed_at,
           parts_finished_on_another_model=switched, parts_closed_under_two_models=two_models,
           sink_rows_written=stats.rows_written, **stops)
    assert not a.problems(), a.problems()
    assert stops["batches_failed"] == 0 and stops["model_unavailable"] == 0, stops
    assert switched >= 1, "no open part was on the withdrawn model at the kill: the test tested nothing"


GARBAGE_CAMERAS_RECORDS = [
    (b"*", b'{"kind": "model_promotion", "model_version": "v", "model_path": "/x", "promoted_at": null}'),
    (b"*", b'{"kind": "model_promotion", "model_version": "v", "model_path": "/x", "promoted_at": "soon"}'),
    (b"*line:l1", b'{"kind": "model_promotion", "model_version": "v", "model_path": "/x", "content_hashes": [1]}'),
    (b"*camera:c", b"[" * 200_000 + b"]" * 200_000),
    (b"*", b"[" * 30_000 + b"]" * 30_000),
    (b"cam-x", b"{" * 30_000),
    (b"cam-x", b"\xff\xfe\x00garbage"),
    (b"*reset:cam-x", b'{"kind": "camera_reset", "camera_id": "cam-x", "reset_id": 5}'),
    (b"*alias:cam-x", b'{"kind": "camera_alias", "camera_id": "cam-x", "alias_of": null}'),
    (b"*unknown", b"{}"),
]


def test_a_garbage_cameras_record(stack, group_worker_factory, kafka_bootstrap, clickhouse_connect, fresh_database):
    """Garbage on the compacted `cameras` topic (bad types, JSON nested 200 000 levels deep, not UTF-8,
    unknown control keys) before the worker starts and again mid-run, then a SIGKILL (the restarted
    worker reads it all again from the start): every record is skipped and logged, the follower still
    applies the valid promotion published after them, and the frames flow: nothing lost or doubled."""
    from models.loading import DEFAULT_CHECKPOINT_DIR, model_identity
    from streams.commands.models import promote
    from streams.kafka.topics import ensure_topics

    run = make_run("gc")
    worker = group_worker_factory(kafka_bootstrap, DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S))
    s = worker.settings
    ensure_topics(s)
    producer = kafka.KafkaProducer(bootstrap_servers=s.kafka.bootstrap_servers, acks="all", max_request_size=2_000_000)

    def send_garbage() -> None:
        for key, value in GARBAGE_CAMERAS_RECORDS:
            producer.send(s.kafka.topics.cameras, key=key, value=value).get(timeout=30)

    send_garbage()
    worker.start()
    ch = fresh_db(clickhouse_connect, fresh_database)
    sink = SinkThread(sink_settings(s, stack.host, stack.clickhouse_port, fresh_database))
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 40))
    pub.start()
    v2_path = DEFAULT_CHECKPOINT_DIR / "detector_paper.pt"
    v2 = model_identity(v2_path)[0]
    try:
        time.sleep(4)
        send_garbage()
        promote(s, str(v2_path), [DEFAULT_CHECKPOINT_DIR])  # valid, after the garbage: still applied
        _wait_for_log(worker, f"model {v2} loaded", 120)
        worker.stop(kill=True)
        worker.start()  # re-reads every garbage record from the start of the topic
        _wait_for_log(worker, f"model {v2} loaded", 120)
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        wait_for_clickhouse(ch, run, drain_timeout(run))
        assert worker.alive(), worker.log_tail()
    finally:
        pub.stop()
        producer.close()
        stats = sink.stop()
    a, two_models = one_verdict_audit(ch(), run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    logs = _worker_logs(worker)
    skipped = logs.count("skipping an invalid")
    stops = _no_crash_loop(worker)
    report("garbage_cameras_record", a, garbage_records_published=2 * len(GARBAGE_CAMERAS_RECORDS),
           garbage_records_skipped_in_logs=skipped, parts_closed_under_two_models=two_models,
           sink_rows_written=stats.rows_written, **stops)
    assert not a.problems(), a.problems()
    assert stops["batches_failed"] == 0 and stops["model_unavailable"] == 0, stops
    # each start reads every garbage record once: 2 copies before the kill, 2 after (the first start
    # may have been reading the second copy when it was killed)
    assert skipped >= 3 * len(GARBAGE_CAMERAS_RECORDS), skipped


# ------------------------------------------------------------- issue 17: 200 parts over 200 months
MONTHS = 200


def _month_start_ms(months_back: int) -> int:
    """UTC epoch ms of the 15th, noon, `months_back` months before the current month (≥ 1: never
    ahead of the clock)."""
    import datetime as dt

    today = dt.datetime.now(dt.timezone.utc)
    m = today.year * 12 + today.month - 1 - months_back
    return int(dt.datetime(m // 12, m % 12 + 1, 15, 12, tzinfo=dt.timezone.utc).timestamp() * 1000)


def spread_over_months(run: Run, months: int = MONTHS) -> Run:
    """The run with every part's frames moved into a month of its own (part k of the run, in the
    order parts start, to one of the `months` months before the current one, oldest first), their
    spacing kept. Within a camera the capture times still increase, frame numbers are unchanged."""
    codec = FrameEvent.codec()
    order: dict[str, int] = {}
    shift: dict[str, int] = {}
    records = []
    for key, value, part in run.records:
        if part is None:
            records.append((key, value, part))
            continue
        ev = FrameEvent.from_avro(codec.decode(value))
        if part not in order:
            k = order[part] = len(order)
            shift[part] = _month_start_ms(months - k % months) + (k // months) * 60_000 - ev.capture_ts
        ev.capture_ts += shift[part]
        records.append((key, codec.encode(ev.to_avro()), part))
    return Run(records, run.frames_of, run.cameras)


class _ChdbClient:
    """The audit's `Client.execute` on a chdb executor shared with the sink thread (one query at a time)."""

    def __init__(self, ex, lock: threading.Lock):
        self.ex, self.lock = ex, lock

    def execute(self, sql: str) -> list[tuple]:
        with self.lock:
            return [tuple(list(v) if isinstance(v, list) else v for v in r) for r in self.ex.query(sql)]

    def disconnect(self) -> None:
        pass


class _LockedChdb:
    """A chdb executor the sink may share with the audit's reads."""

    def __init__(self, ex, lock: threading.Lock):
        self.ex, self.lock = ex, lock

    def query(self, sql: str) -> list[tuple]:
        with self.lock:
            return self.ex.query(sql)

    def insert(self, table, columns, rows) -> int:
        with self.lock:
            return self.ex.insert(table, columns, rows)


@pytest.mark.parametrize("clickhouse", ["current (chdb)", "18.16 (stack)"])
def test_200_parts_spread_over_200_months(stack, group_worker_factory, kafka_bootstrap, clickhouse_connect,
                                          fresh_database, tmp_path, clickhouse):
    """Issue 17 item 3: cameras send parts from 200 different months (intake takes frames this old
    when capture_ts_max_age_days allows it), so one sink batch spans far more than the 100
    partitions per INSERT a current ClickHouse accepts (code 252; 18.16 has no limit). The sink
    splits its batches by month: every part stored once, no hold, nothing dead-lettered but the
    bad records slipped in."""
    import functools

    from sinks.clickhouse import ClickHouseSink, table_specs
    from sinks.runner import SinkRunner
    from sinks.sql import ChdbExecutor
    from streams.commands.sink import shift_of
    from streams.kafka import clients

    run = spread_over_months(make_run("m", parts=max(PARTS, MONTHS)))
    # One partition: the sink's batch of each topic holds every month (with more partitions, 200
    # parts would split into batches of ≤ 100 months, which a current ClickHouse still accepts).
    worker = group_worker_factory(kafka_bootstrap, partitions=1,
                                  DEFECTSTREAM_TRACKING__PART_TIMEOUT_S=str(PART_TIMEOUT_S),
                                  DEFECTSTREAM_WORKER__CAPTURE_TS_MAX_AGE_DAYS=str(31 * (MONTHS + 2)))
    s = worker.settings
    sset = sink_settings(s, stack.host, stack.clickhouse_port, fresh_database)
    specs = table_specs(sset.kafka.topics, sset.plant, shift_of=shift_of(sset.plant))
    if clickhouse.startswith("current"):
        lock = threading.Lock()
        chdb = ChdbExecutor(str(tmp_path / "chdb"))
        migrate(chdb)
        ch: Callable[[], Any] = lambda: _ChdbClient(chdb, lock)  # noqa: E731
        sink = ClickHouseSink(sset.clickhouse, specs, sset.sink, executor_factory=lambda: _LockedChdb(chdb, lock))
    else:
        ch = fresh_db(clickhouse_connect, fresh_database)
        sink = ClickHouseSink(sset.clickhouse, specs, sset.sink)
    runner = SinkRunner(sink, sset.sink, sset.kafka.topics, framing=clients.framing(sset.kafka),
                        consumer_factory=functools.partial(clients.consumer, sset.kafka),
                        producer_factory=functools.partial(clients.producer, sset.kafka))
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["stats"] = runner.run()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    # The worker first, the sink after it has a backlog: its first batches span every month.
    worker.start()
    pub = Publisher(s.kafka.bootstrap_servers, s.kafka.topics.frames, run, publish_seconds(run, 20))
    pub.start()
    try:
        pub.join(publish_seconds(run, 0) + 600)
        assert pub.error is None and pub.done, pub.error
        parts_end = lambda: sum(_end_offsets(s.kafka.bootstrap_servers, s.kafka.topics.parts).values())  # noqa: E731
        wait_until(lambda: parts_end() >= len(run.frames_of), drain_timeout(run), "every part closed by the worker")
        thread.start()
        wait_until(lambda: runner.stats.holds > 0 or stored_parts(ch()) >= len(run.frames_of), drain_timeout(run),
                   "every part stored, or a hold")
        assert runner.stats.holds == 0, "the sink held"
        wait_for_clickhouse(ch, run, drain_timeout(run))
        assert worker.alive(), worker.log_tail()
    finally:
        pub.stop()
        runner.stop()
        if thread.is_alive():
            thread.join(120)
    assert "error" not in box, box.get("error")
    stats = box["stats"]
    client = ch()
    months = client.execute("SELECT uniqExact(toYYYYMM(event_time)) FROM parts")[0][0]
    a = audit(client, run, pub, s.kafka.bootstrap_servers, s.kafka.topics.deadletter)
    client.disconnect()
    name = "months_200_" + ("current" if clickhouse.startswith("current") else "18_16")
    report(name, a, clickhouse=clickhouse, months_stored=int(months), sink_holds=stats.holds, partitions=1,
           sink_inserts=sink.inserts, sink_flushes=stats.flushes,
           sink_max_partitions_per_insert=sink.max_partitions_per_insert, sink_rows_written=stats.rows_written)
    assert int(months) >= MONTHS - 2  # a month boundary in the server's timezone may merge two
    assert stats.holds == 0, "the sink held"
    assert not a.problems(), a.problems()
