"""Replay and compare on the real stack: simulator → production worker (+ sink) → replay → compare.

A production worker (subprocess, strong checkpoint) consumes a simulated run on fresh topics and the
sink stores its rows in a fresh database. While that worker keeps running, the recorded range is
replayed with a deliberately weak checkpoint (the strong detector with its output bias pushed far
down: it finds nothing) — once interrupted by a ClickHouse failure and resumed — and once with the
strong checkpoint itself. Production offsets, rows and alerts stay as they were; the replay rows are
complete and tagged; `compare` reports what the weak model misses, and nothing for the same model.
Frames are small (128×256), parts few; the checkpoints are the packaged ones when they exist, else a
tiny pair trained here in seconds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from schemas.events import FrameEvent
from sinks.migrations import migrate
from sinks.sql import DriverExecutor
from streams.commands.compare import render_table
from streams.replay.queries import run_compare
from streams.replay.replayer import STATUS_DONE, RangeRemovedError, Replayer, ReplayRequest, load_run_record
from streams.sim.simulator import SimulationConfig, read_ground_truth, simulate

from .model_copies import weak_copy

FRAME = (128, 256)
T0 = 1_790_000_000_000  # simulated capture clock (the Kafka record timestamps are wall clock)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """(strong, weak) checkpoint directories (detector_<arch>.pt + classifier.pt each)."""
    import torch

    from models.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
    from models.families.severity.inspector import resolve_checkpoints

    root = tmp_path_factory.mktemp("checkpoints")
    try:
        det, cls = resolve_checkpoints(None)  # the packaged checkpoints, once the model engineer ships them
    except CheckpointError:
        from models.families.severity.train import ClassifierTrainConfig, DetectorTrainConfig, train_classifier, train_detector

        out = root / "strong"
        d = train_detector(DetectorTrainConfig(steps=60, batch=4, patch=64, n_frames=16, n_val=4, lr=3e-3,
                                               arch_config={"width": 8}, threads=1),
                           out, quiet=True, log=lambda s: None)
        train_classifier(ClassifierTrainConfig(epochs=2, n_frames=16, width=8, batch=32, detector=d.checkpoint,
                                               threads=1), out, quiet=True, log=lambda s: None)
        # A classifier trained for seconds may call every region background; make it never do so,
        # so the "strong" model reliably reports defects (as tests/unit/models does).
        c = load_checkpoint(out / "classifier.pt", expected_kind="classifier")
        csd = dict(c.state_dict)
        bias = [k for k, v in csd.items() if k.endswith("bias") and v.shape == (len(c.info.class_names) + 1,)][-1]
        csd[bias] = csd[bias].clone()
        csd[bias][0] = -100.0
        ci = c.info
        save_checkpoint(out / "classifier.pt", csd, kind="classifier", arch=ci.arch, arch_config=ci.arch_config,
                        input_spec=ci.input_spec, class_names=ci.class_names, train_data=ci.train_data)
        det, cls = resolve_checkpoints(out)
    strong = det.parent
    weak = weak_copy(det, cls, root / "weak")
    torch.set_num_threads(1)
    return strong, weak


def _group_offsets(admin, group: str, topic: str) -> dict[int, int]:
    """Committed offsets of `group` on `topic` (kafka-python 3.0 admin API)."""
    found = admin.list_group_offsets({group: None}).get(group, {})
    return {tp.partition: om.offset for tp, om in found.items() if tp.topic == topic}


def _groups(admin) -> set[str]:
    return {g["group_id"] for g in admin.list_groups()}


@pytest.fixture
def executor(fresh_database, stack):
    """A migrated fresh database on the stack's ClickHouse (closed after the test)."""
    from streams.settings import ClickHouseSettings

    ex = DriverExecutor.connect(ClickHouseSettings(host=stack.host, port=stack.clickhouse_port, database=fresh_database))
    migrate(ex)
    yield ex
    ex.close()


def _counts(ex) -> dict[str, tuple]:
    return {t: ex.query(f"SELECT count(), uniqExact(event_id) FROM {t} WHERE run_id = 'production'")[0]
            for t in ("parts", "defects")} | {"alerts": ex.query("SELECT count() FROM alerts")[0]}


class DownAfter:
    """Executor that works until the n-th INSERT into `parts`, then fails every INSERT (ClickHouse gone)."""

    def __init__(self, ex, n: int):
        self.ex, self.n, self.seen, self.down = ex, n, 0, False

    def query(self, sql):
        return self.ex.query(sql)

    def insert(self, table, columns, rows):
        if table == "parts":
            self.seen += 1
            self.down = self.down or self.seen >= self.n
        if self.down:
            raise ConnectionError("ClickHouse unreachable")
        return self.ex.insert(table, columns, rows)


def test_replay_beside_production_resume_and_compare(checkpoints, stream_worker_factory, kafka_admin, fresh_database,
                                                     executor, stack, tmp_path, monkeypatch, capsys):
    from streams.commands.sink import run_sink

    strong, weak = checkpoints
    import socket

    with socket.socket() as sock:  # other workers on this host may hold the default web port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker = stream_worker_factory(DEFECTSTREAM_MODEL__PATH=str(strong), DEFECTSTREAM_WORKER__WEB_PORT=str(port))
    worker.start()
    s = worker.settings
    s.clickhouse.host, s.clickhouse.port, s.clickhouse.database = stack.host, stack.clickhouse_port, fresh_database
    s.plant.timezone = "UTC"
    s.sink.group_id = f"{s.app_id}-sink"  # not the shared default group
    s.sink.include_alerts = False  # the `alerts` topic is not one of this test's fresh topics
    ex = executor

    # -- production: simulate, let the worker inspect, store its rows -----------------------
    gt_path = tmp_path / "gt.jsonl"
    t_from = int(time.time() * 1000) - 1
    rep = simulate(s, SimulationConfig(cameras=2, parts=6, frames_per_part=4, frame_shape=FRAME, time_scale=0,
                                       seed=7, defect_rate=0.9, parts_per_minute=60, start_time_ms=T0,
                                       ground_truth=gt_path, progress=False))
    t_until = int(time.time() * 1000) + 1
    assert rep.parts == 6 and rep.frames == 24
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        run_sink(s, max_seconds=10, idle_s=1.5)
        if ex.query("SELECT uniqExact(part_id) FROM parts WHERE run_id = 'production'")[0][0] >= 6:
            break
    assert ex.query("SELECT uniqExact(part_id) FROM parts WHERE run_id = 'production'") == [(6,)], worker.log_tail()
    frames = s.kafka.topics.frames
    deadline = time.monotonic() + 30
    while sum(_group_offsets(kafka_admin, s.app_id, frames).values()) < 24 and time.monotonic() < deadline:
        time.sleep(0.5)  # the worker commits every few seconds
    prod_offsets = _group_offsets(kafka_admin, s.app_id, frames)
    assert sum(prod_offsets.values()) == 24
    prod_counts = _counts(ex)
    groups_before = _groups(kafka_admin)

    def request(run_id: str, model: Path) -> ReplayRequest:
        return ReplayRequest(run_id=run_id, from_ms=t_from, until_ms=t_until, model_path=str(model),
                             frames_topic=frames, checkpoint_every_s=0.0, poll_records=4, progress=False)

    # -- replay with the weak model: interrupted by a ClickHouse outage, then resumed --------
    first = Replayer(s, request("weak-1", weak), DownAfter(ex, 2))
    with pytest.raises(ConnectionError):
        first.run()
    first.close()
    stalled = load_run_record(ex, "weak-1")
    assert stalled is not None and stalled.status != STATUS_DONE and stalled.parts >= 1
    resumed = Replayer(s, request("weak-1", weak), ex)
    rec = resumed.run()
    resumed.close()
    assert rec.status == STATUS_DONE and rec.frames_read == 24
    weak_version = rec.model_version
    assert set(rec.model_hashes) == {"detector", "classifier"}

    # the replay's rows: one verdict per part, tagged, no duplicates despite the interruption
    assert ex.query("SELECT count(), uniqExact(event_id), uniqExact(part_id) FROM parts WHERE run_id = 'weak-1'") \
        == [(6, 6, 6)]
    assert ex.query("SELECT DISTINCT model_version FROM parts WHERE run_id = 'weak-1'") == [(weak_version,)]
    assert ex.query("SELECT count() FROM defects WHERE run_id = 'weak-1'") == [(0,)]

    # -- replay with the production model: same code path, same results ---------------------
    same = Replayer(s, request("strong-1", strong), ex)
    same_rec = same.run()
    same.close()
    assert same_rec.status == STATUS_DONE and same_rec.frames_read == 24 and same_rec.parts == 6

    # -- production untouched, also while its worker runs -----------------------------------
    assert worker.alive(), worker.log_tail()
    assert _group_offsets(kafka_admin, s.app_id, frames) == prod_offsets
    assert _counts(ex) == prod_counts
    # the replay joined no group: no group that appeared meanwhile (other tests share the broker) reads our frames
    for g in _groups(kafka_admin) - groups_before:
        assert not _group_offsets(kafka_admin, g, frames), g
    assert ex.query("SELECT count() FROM alerts WHERE run_id != 'production'") == [(0,)]
    assert ex.query("SELECT count() FROM model_runs WHERE run_id = 'production' AND kind = 'replay'") == [(0,)]

    # -- compare: the weak model misses every production defect; the same model agrees -----
    gts = read_ground_truth(gt_path)
    prod_defects = prod_counts["defects"][1]
    prod_fail = ex.query("SELECT uniqExact(event_id) FROM parts WHERE run_id = 'production' AND verdict = 'FAIL'")[0][0]
    weak_cmp = run_compare(ex, "production", "weak-1", s.plant, ground_truth=gts)
    print(render_table(weak_cmp))
    assert len(weak_cmp.parts) == 6
    assert weak_cmp.defects_only_baseline == prod_defects and weak_cmp.defects_only_candidate == 0
    assert weak_cmp.confusion["FAIL"]["PASS"] == prod_fail and weak_cmp.confusion["PASS"]["FAIL"] == 0
    assert weak_cmp.confusion["FAIL"]["FAIL"] == 0
    assert weak_cmp.ground_truth["weak-1"].defect_recall == 0.0
    assert weak_cmp.ground_truth["production"].defect_recall >= weak_cmp.ground_truth["weak-1"].defect_recall
    assert prod_defects > 0, "the strong checkpoint found nothing: the comparison would show no difference"
    same_cmp = run_compare(ex, "production", "strong-1", s.plant)
    assert same_cmp.agreement == 1.0 and same_cmp.defects_only_baseline == 0 and same_cmp.defects_only_candidate == 0

    # the CLI, on the ClickHouse 18.16 server
    from streams.cli import main

    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__DATABASE", fresh_database)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__HOST", stack.host)
    monkeypatch.setenv("DEFECTSTREAM_CLICKHOUSE__PORT", str(stack.clickhouse_port))
    monkeypatch.setenv("DEFECTSTREAM_PLANT__TIMEZONE", "UTC")
    capsys.readouterr()
    assert main(["compare", "--candidate", "weak-1", "--by", "camera", "--output", "json",
                 "--ground-truth", str(gt_path), "--chart", str(tmp_path / "cmp.png")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["parts_compared"] == 6 and doc["defects"]["only_baseline"] == prod_defects
    assert sorted(g["group"] for g in doc["groups"]) == ["cam-1", "cam-2"]
    assert (tmp_path / "cmp.png").stat().st_size > 1000


def test_models_promote_publishes_and_records(checkpoints, fresh_topic, executor, kafka_bootstrap):
    from kafka import KafkaConsumer

    from streams.commands.models import promote
    from streams.inspection.model_selection import ModelSelection, parse_promotion
    from streams.settings import Settings

    strong, _weak = checkpoints
    s = Settings()
    s.kafka.bootstrap_servers = kafka_bootstrap
    s.kafka.topics.cameras = fresh_topic(1, {"cleanup.policy": "compact"})
    ex = executor
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    promo = promote(s, str(strong), [strong], executor=ex, note="test",
                    send=lambda k, v: producer.send(s.kafka.topics.cameras, key=k, value=v).get(30))
    producer.close()
    consumer = KafkaConsumer(s.kafka.topics.cameras, bootstrap_servers=kafka_bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    records = list(consumer)
    consumer.close()
    assert [(r.key, parse_promotion(r.value)) for r in records] == [(b"*", promo)]
    sel = ModelSelection("default-v")
    assert sel.apply(records[0].key, records[0].value)
    assert sel.version_for_new_part(None, ["default-v", promo.model_version]) == promo.model_version
    assert ex.query("SELECT model_version, kind FROM model_runs WHERE run_id = 'production'") \
        == [(promo.model_version, "promotion")]


def test_range_removed_by_retention_is_a_clear_error(fresh_topic, kafka_admin, executor, kafka_bootstrap):
    from kafka import KafkaProducer
    from kafka.structs import TopicPartition

    from streams.settings import Settings

    topic = fresh_topic(1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    t = int(time.time() * 1000) - 60_000
    ev = FrameEvent(camera_id="r-1", line_id="l", part_id="r-1-p", frame_seq=1, capture_ts=t, encoding="RAW",
                    width=1, height=1, channels=1, image=b"\x00")
    for i in range(6):
        producer.send(topic, key=b"r-1", value=FrameEvent.codec().encode(ev.to_avro()), timestamp_ms=t + i * 1000).get(30)
    producer.close()
    kafka_admin.delete_records({TopicPartition(topic, 0): 3})  # what retention does to old segments
    s = Settings()
    s.kafka.bootstrap_servers = kafka_bootstrap
    ex = executor

    class NoModel:
        model_version = "none"

    rep = Replayer(s, ReplayRequest(run_id="late", from_ms=t, until_ms=t + 10_000, model_path=None,
                                    frames_topic=topic, progress=False), ex, inspector=NoModel())
    with pytest.raises(RangeRemovedError, match="retention"):
        rep.run()
    rep.close()
    assert load_run_record(ex, "late") is None
