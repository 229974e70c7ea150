"""The local stack (ops/stack): lifecycle, idempotence, users, and real traffic through Kafka and ClickHouse."""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
from aiokafka import AIOKafkaConsumer
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException
from kafka import KafkaConsumer, KafkaProducer

from streams.commands import stack as stack_cli

ROOT = Path(__file__).resolve().parents[2]
OPS_STACK = ROOT / "ops" / "stack"
ops_stack = stack_cli.stack_module()

# ClickHouse error codes the users.xml profiles produce.
QUERY_IS_PROHIBITED = 392  # allow_ddl=0
READONLY = 164  # readonly=1


def run_stack(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """`ops/stack ARGS` as a user runs it (through the bash wrapper)."""
    return subprocess.run(
        [str(OPS_STACK), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def pids(cfg) -> dict[str, int | None]:
    return {st.name: st.pid for st in ops_stack.statuses(cfg)}


# ------------------------------------------------------------------------------------ the shared stack


def test_status_reports_both_services_up(stack) -> None:
    for st in ops_stack.statuses(stack):
        assert st.pid and st.healthy, st

    result = run_stack("status")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    kafka_line = next(line for line in lines if line.startswith("kafka:"))
    clickhouse_line = next(line for line in lines if line.startswith("clickhouse:"))
    assert " up " in kafka_line and str(stack.kafka_port) in kafka_line
    assert " up " in clickhouse_line and str(stack.clickhouse_port) in clickhouse_line

    quiet = run_stack("status", "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


def test_up_is_idempotent_while_running(stack) -> None:
    before = pids(stack)
    started = time.monotonic()
    result = run_stack("up")
    elapsed = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    assert "kafka: already running" in result.stdout
    assert "clickhouse: already running" in result.stdout
    assert pids(stack) == before  # nothing restarted
    assert elapsed < 30, f"`up` on a running stack took {elapsed:.1f}s: it should only check health"


def test_defectstream_stack_subcommand_runs_the_same_code(stack) -> None:
    parser = argparse.ArgumentParser()
    stack_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["stack", "status", "--quiet"])
    assert args.func(args) == 0


def test_raw_socket_metadata_probe_sees_the_advertised_broker(stack) -> None:
    # The stdlib fallback `ops/stack` uses where kafka-python is not installed.
    meta = ops_stack.kafka_metadata_raw(stack.host, stack.kafka_port)
    assert meta.brokers == [stack.kafka_bootstrap]
    assert meta.cluster_id


def test_kafka_python_produce_aiokafka_consume(fresh_topic: Callable[..., str], kafka_bootstrap: str) -> None:
    topic = fresh_topic(partitions=3)
    sent = {f"cam-{i % 6}:{i}".encode() for i in range(60)}
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    try:
        for value in sent:
            producer.send(topic, key=value.split(b":")[0], value=value)
        producer.flush(timeout=20)
    finally:
        producer.close(timeout=5)

    async def consume() -> tuple[set[bytes], set[int]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, group_id=f"{topic}-group",
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        got: set[bytes] = set()
        partitions: set[int] = set()
        try:
            deadline = time.monotonic() + 30
            while got != sent and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=1000)
                for tp, records in batches.items():
                    partitions.add(tp.partition)
                    got.update(r.value for r in records)
        finally:
            await consumer.stop()
        return got, partitions

    got, partitions = asyncio.run(consume())
    assert got == sent
    assert len(partitions) > 1  # keys spread over the topic's partitions


def test_clickhouse_insert_and_select(fresh_database: str, clickhouse_client: Client) -> None:
    db = fresh_database
    clickhouse_client.execute(
        f"CREATE TABLE {db}.parts (part_id String, ts DateTime, defects UInt16) ENGINE = MergeTree ORDER BY (ts, part_id)"
    )
    rows = [("p-1", 1_700_000_000, 0), ("p-2", 1_700_000_060, 3), ("p-3", 1_700_000_120, 1)]
    clickhouse_client.execute(
        f"INSERT INTO {db}.parts VALUES", [{"part_id": p, "ts": ts, "defects": d} for p, ts, d in rows],
    )
    result = clickhouse_client.execute(
        f"SELECT part_id, toUnixTimestamp(ts), defects FROM {db}.parts ORDER BY part_id"
    )
    assert result == rows
    # the server's timezone is UTC (18.16 names it Etc/UTC), whatever the machine's is
    timezone, p1_time = clickhouse_client.execute(f"SELECT timezone(), toString(ts) FROM {db}.parts WHERE part_id = 'p-1'")[0]
    assert timezone in {"UTC", "Etc/UTC"} and p1_time == "2023-11-14 22:13:20"


def test_writer_inserts_and_selects_but_runs_no_ddl(
    fresh_database: str, clickhouse_client: Client, clickhouse_connect: Callable[..., Client]
) -> None:
    db = fresh_database
    clickhouse_client.execute(f"CREATE TABLE {db}.defects (id String, n UInt32) ENGINE = MergeTree ORDER BY id")
    writer = clickhouse_connect(user="writer", password="writer", database=db)

    writer.execute("INSERT INTO defects VALUES", [("a", 1), ("b", 2)])
    assert writer.execute("SELECT sum(n) FROM defects") == [(3,)]

    for ddl in (
        "CREATE TABLE other (x UInt8) ENGINE = Memory",
        "DROP TABLE defects",
        "ALTER TABLE defects ADD COLUMN extra UInt8",
        "SET allow_ddl = 1",  # cannot lift its own restriction
    ):
        with pytest.raises(ServerException) as err:
            writer.execute(ddl)
        assert err.value.code == QUERY_IS_PROHIBITED, ddl
    assert clickhouse_client.execute(f"EXISTS TABLE {db}.defects") == [(1,)]
    assert clickhouse_client.execute(f"EXISTS TABLE {db}.other") == [(0,)]


def test_reader_selects_but_cannot_insert(
    fresh_database: str, clickhouse_client: Client, clickhouse_connect: Callable[..., Client]
) -> None:
    db = fresh_database
    clickhouse_client.execute(f"CREATE TABLE {db}.defects (id String) ENGINE = MergeTree ORDER BY id")
    clickhouse_client.execute(f"INSERT INTO {db}.defects VALUES", [("a",)])
    reader = clickhouse_connect(user="reader", password="reader", database=db)

    assert reader.execute("SELECT count() FROM defects") == [(1,)]
    with pytest.raises(ServerException) as err:
        reader.execute("INSERT INTO defects VALUES", [("b",)])
    assert err.value.code == READONLY
    with pytest.raises(ServerException) as err:
        reader.execute("DROP TABLE defects")
    assert err.value.code == READONLY
    assert clickhouse_client.execute(f"SELECT count() FROM {db}.defects") == [(1,)]


def test_wrong_password_is_refused(clickhouse_connect: Callable[..., Client]) -> None:
    with pytest.raises(ServerException) as err:
        clickhouse_connect(user="writer", password="not-the-password").execute("SELECT 1")
    assert err.value.code == 193  # WRONG_PASSWORD


# -------------------------------------------------------------------- a second, throwaway stack


class IsolatedStack(NamedTuple):
    cfg: object  # ops_stack.StackConfig
    env: dict[str, str]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def isolated_stack(tmp_path: Path) -> IsolatedStack:
    """A stack dir and four free ports of its own, sharing the main stack's Kafka jars (symlink)
    when it has them, so lifecycle tests never touch the stack the other tests use."""
    kafka_port, controller_port, ch_port, ch_http_port = _free_ports(4)
    env = dict(
        os.environ,
        DEFECTSTREAM_STACK_DIR=str(tmp_path / "stack"),
        DEFECTSTREAM_STACK_KAFKA_PORT=str(kafka_port),
        DEFECTSTREAM_STACK_KAFKA_CONTROLLER_PORT=str(controller_port),
        DEFECTSTREAM_STACK_CLICKHOUSE_PORT=str(ch_port),
        DEFECTSTREAM_STACK_CLICKHOUSE_HTTP_PORT=str(ch_http_port),
        DEFECTSTREAM_STACK_TIMEOUT="120",
        DEFECTSTREAM_STACK_KAFKA_HEAP="384m",
    )
    cfg = ops_stack.StackConfig.from_env(env)
    cfg.kafka_dir.mkdir(parents=True)
    main_libs = ops_stack.StackConfig.from_env().kafka_libs
    if main_libs.is_dir():
        cfg.kafka_libs.symlink_to(main_libs)
    return IsolatedStack(cfg, env)


def test_up_refuses_a_port_held_by_a_foreign_process(isolated_stack: IsolatedStack) -> None:
    cfg, env = isolated_stack
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.kafka_port))
        squatter.listen()
        result = run_stack("up", env=env)
    assert result.returncode == 1
    assert f"port {cfg.kafka_port} on 127.0.0.1 is already in use by pid {os.getpid()}" in result.stderr
    assert "Traceback" not in result.stderr
    # nothing was started
    assert not cfg.kafka_pid_file.exists() and not cfg.clickhouse_pid_file.exists()


def test_stale_pid_files_are_detected_and_removed(isolated_stack: IsolatedStack) -> None:
    cfg, env = isolated_stack
    dead = subprocess.Popen(["true"])
    dead.wait()
    cfg.clickhouse_dir.mkdir(parents=True)
    cfg.kafka_pid_file.write_text(f"{dead.pid}\n")
    cfg.clickhouse_pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a ClickHouse server

    status = run_stack("status", env=env)
    assert status.returncode == 1
    assert "kafka:      down" in status.stdout and "clickhouse: down" in status.stdout

    cfg.kafka_pid_file.write_text(f"{dead.pid}\n")
    cfg.clickhouse_pid_file.write_text(f"{os.getpid()}\n")
    down = run_stack("down", env=env)
    assert down.returncode == 0, down.stderr
    assert "kafka: removing stale pid file" in down.stdout
    assert "clickhouse: removing stale pid file" in down.stdout
    assert not cfg.kafka_pid_file.exists() and not cfg.clickhouse_pid_file.exists()


def test_up_without_java_says_what_to_install(isolated_stack: IsolatedStack, tmp_path: Path) -> None:
    cfg, env = isolated_stack
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {k: v for k, v in env.items() if k != "JAVA_HOME"} | {"PATH": str(empty_bin)}
    # Through the module, not the bash wrapper: with this PATH there is no bash either.
    result = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "stack.py"), "up"], env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "java not found" in result.stderr and "Traceback" not in result.stderr
    assert not cfg.kafka_pid_file.exists() and not cfg.clickhouse_pid_file.exists()


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for v in values:
            producer.send(topic, v)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def _consume_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, consumer_timeout_ms=15_000,
    )
    try:
        got = []
        for record in consumer:
            got.append(record.value)
            if len(got) >= expected:
                break
        return got
    finally:
        consumer.close()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_down_up_cycle_keeps_data_and_reset_wipes_it(stack, isolated_stack: IsolatedStack) -> None:
    # `stack`: the main stack is up, so its jars exist and are shared (no Maven run here).
    cfg, env = isolated_stack
    assert cfg.kafka_libs.is_symlink()
    ch = lambda: Client(cfg.host, port=cfg.clickhouse_port, connect_timeout=5)  # noqa: E731
    try:
        first = run_stack("up", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "formatted new KRaft storage" in first.stdout
        cluster_id = (cfg.kafka_data / "meta.properties").read_text()
        running = pids(cfg)
        assert all(running.values())

        again = run_stack("up", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout and pids(cfg) == running

        # Same stack dir, other ports: reported, never mistaken for healthy, nothing restarted.
        moved = env | {"DEFECTSTREAM_STACK_KAFKA_PORT": str(_free_ports(1)[0])}
        status = run_stack("status", env=moved)
        assert status.returncode == 1 and f"runs on ports {cfg.ports('kafka')}" in status.stdout
        refused = run_stack("up", env=moved)
        assert refused.returncode == 1 and "runs on ports" in refused.stderr and pids(cfg) == running

        values = [f"frame-{i}".encode() for i in range(20)]
        _produce(cfg.kafka_bootstrap, "keep", values)
        client = ch()
        client.execute("CREATE DATABASE keep")
        client.execute("CREATE TABLE keep.t (n UInt32) ENGINE = MergeTree ORDER BY n")
        client.execute("INSERT INTO keep.t VALUES", [(i,) for i in range(7)])
        client.disconnect()

        stopped = run_stack("down", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert run_stack("status", "--quiet", env=env).returncode == 1
        assert pids(cfg) == {"kafka": None, "clickhouse": None}
        assert not any(ops_stack.port_in_use(cfg.host, p) for p in (*cfg.ports("kafka"), *cfg.ports("clickhouse")))
        assert "not running" in run_stack("down", env=env).stdout  # down twice is fine

        restarted = run_stack("up", env=env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "formatted" not in restarted.stdout and "resolving" not in restarted.stdout
        assert (cfg.kafka_data / "meta.properties").read_text() == cluster_id
        assert sorted(_consume_all(cfg.kafka_bootstrap, "keep", len(values))) == sorted(values)
        client = ch()
        assert client.execute("SELECT count(), sum(n) FROM keep.t") == [(7, 21)]
        client.disconnect()

        wiped = run_stack("reset", env=env)
        assert wiped.returncode == 0, wiped.stdout + wiped.stderr
        assert pids(cfg) == {"kafka": None, "clickhouse": None}
        assert not cfg.kafka_data.exists() and not cfg.clickhouse_dir.exists()
        assert cfg.kafka_libs.is_symlink() and any(cfg.kafka_libs.glob("kafka_*.jar"))  # jars kept

        fresh = run_stack("up", env=env)
        assert fresh.returncode == 0, fresh.stdout + fresh.stderr
        assert "formatted new KRaft storage" in fresh.stdout
        client = ch()
        assert client.execute("SELECT count() FROM system.databases WHERE name = 'keep'") == [(0,)]
        client.disconnect()
        assert "keep" not in ops_stack.kafka_list_topics(cfg.kafka_bootstrap, 10)
    finally:
        final = run_stack("down", env=env)
        assert final.returncode == 0, final.stdout + final.stderr
