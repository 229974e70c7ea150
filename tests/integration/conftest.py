"""Integration fixtures: the local stack (`ops/stack up`) must be running; each test gets its own topic/database.

Every test under tests/integration is marked `integration`. Nothing here starts services or skips:
a stack that is not up fails the tests that need it, with the command that fixes it.
Ports and the stack dir follow the same DEFECTSTREAM_STACK_* variables as `ops/stack`.
"""
from __future__ import annotations

import re
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterator

import pytest
from clickhouse_driver import Client

# kafka-python 3.0 reads its protocol schemas with importlib.resources.read_text, deprecated since
# Python 3.11; the warning is attributed to importlib, so pyproject's `kafka.*` filter misses it and
# `filterwarnings = error` would fail the import. Importing here first covers every test module.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "open_text is deprecated", DeprecationWarning)
    warnings.filterwarnings("ignore", "read_text is deprecated", DeprecationWarning)
    from kafka import KafkaAdminClient

from streams.stack_cli import stack_module

INTEGRATION_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder `integration` (select with `-m integration`, drop with `-m 'not integration'`)."""
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)


def unique_name(request: pytest.FixtureRequest, prefix: str, sep: str = "_") -> str:
    """`<prefix><sep><test name><sep><8 hex>`: readable in `SHOW DATABASES` / topic lists, never reused."""
    test = re.sub(r"[^A-Za-z0-9]+", sep, request.node.name).strip(sep)[:40]
    return f"{prefix}{sep}{test}{sep}{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------- the stack


@pytest.fixture(scope="session")
def stack():
    """The running local stack's `StackConfig` (ports, stack dir); fails the test if it is not up."""
    ops_stack = stack_module()
    cfg = ops_stack.StackConfig.from_env()
    down = [st for st in ops_stack.statuses(cfg) if not (st.pid and st.healthy)]
    if down:
        details = "; ".join(f"{st.name}: {st.detail}" for st in down)
        pytest.fail(
            f"the local stack is not up ({details}) in {cfg.stack_dir}: run `ops/stack up` or `make test`",
            pytrace=False,
        )
    return cfg


# ----------------------------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_bootstrap(stack) -> str:
    """`host:port` of the stack's broker."""
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client shared by the session."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="defectstream-tests")
    yield admin
    admin.close()


@pytest.fixture
def fresh_topic(request: pytest.FixtureRequest, kafka_admin: KafkaAdminClient) -> Iterator[Callable[..., str]]:
    """Factory: `fresh_topic(partitions=1)` creates a topic no other test uses and returns its name.

    The topic exists with a leader for every partition when the call returns; all topics made by
    the factory are deleted when the test ends.
    """
    created: list[str] = []

    def make(partitions: int = 1, configs: dict[str, str] | None = None) -> str:
        name = unique_name(request, "test", sep="-")
        spec = {"num_partitions": partitions, "replication_factor": 1, "configs": dict(configs or {})}
        kafka_admin.create_topics({name: spec}, timeout_ms=10_000, wait_for_metadata=True)
        created.append(name)
        return name

    yield make
    if created:
        kafka_admin.delete_topics(created, timeout_ms=10_000, raise_errors=False)


# ------------------------------------------------------------------------------------------ ClickHouse


@pytest.fixture
def clickhouse_connect(stack) -> Iterator[Callable[..., Client]]:
    """Factory: `clickhouse_connect(user="default", password="", database="default")` → a
    clickhouse-driver client on the stack's native port; every client is disconnected at teardown."""
    clients: list[Client] = []

    def connect(user: str = "default", password: str = "", database: str = "default") -> Client:
        client = Client(
            stack.host, port=stack.clickhouse_port, user=user, password=password, database=database,
            connect_timeout=5, send_receive_timeout=30,
        )
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.disconnect()


@pytest.fixture
def clickhouse_client(clickhouse_connect: Callable[..., Client]) -> Client:
    """A clickhouse-driver client as `default` (admin: DDL allowed)."""
    return clickhouse_connect()


@pytest.fixture
def fresh_database(request: pytest.FixtureRequest, clickhouse_client: Client) -> Iterator[str]:
    """A ClickHouse database no other test uses (created empty, dropped after the test)."""
    name = unique_name(request, "test")
    clickhouse_client.execute(f"CREATE DATABASE {name}")
    yield name
    clickhouse_client.execute(f"DROP DATABASE IF EXISTS {name}")


# ------------------------------------------------------------------------------- streams: the worker


class StreamWorker:
    """`defectstream worker` as a subprocess on its own topics, app id and data dir.

    `env` holds the DEFECTSTREAM_* variables (also for the simulator, called in-process through
    `settings`). `start()` waits until Faust reports the worker ready; `stop(kill=True)` is a crash.
    """

    def __init__(self, env: dict[str, str], log_dir: Path):
        import os

        from streams.settings import settings_with_env

        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.proc = None
        self.starts = 0
        self.settings = settings_with_env(env)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker-{self.starts}.log"

    def start(self, timeout_s: float = 90.0) -> None:
        import subprocess
        import sys
        import time

        self.starts += 1
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker", "--loglevel", "info"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=str(INTEGRATION_DIR.parent.parent),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
            if "Worker]: Ready" in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.3)
        pytest.fail(f"worker not ready after {timeout_s}s:\n{self.log_tail()}", pytrace=False)

    def stop(self, kill: bool = False) -> None:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def stream_worker_env(prefix: str, bootstrap: str, data_dir: Path, partitions: int = 2) -> dict[str, str]:
    """DEFECTSTREAM_* variables that put a worker on topics `<prefix>-*` and app id `<prefix>`."""
    env = {
        "DEFECTSTREAM_APP_ID": prefix,
        "DEFECTSTREAM_DATA_DIR": str(data_dir),
        "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "DEFECTSTREAM_KAFKA__PARTITIONS": str(partitions),
        "DEFECTSTREAM_MODEL__DEVICE": "cpu",
        "DEFECTSTREAM_TRACKING__PART_TIMEOUT_S": "4",
        "DEFECTSTREAM_TRACKING__TIMEOUT_CHECK_S": "1",
        "DEFECTSTREAM_PLANT__TIMEZONE": "UTC",
        "DEFECTSTREAM_WORKER__SESSION_TIMEOUT_S": "8",  # a killed worker's restart rejoins quickly
    }
    for name in ("frames", "defects", "parts", "deadletter", "cameras"):
        env[f"DEFECTSTREAM_KAFKA__TOPICS__{name.upper()}"] = f"{prefix}-{name}"
    return env


@pytest.fixture
def stream_worker_factory(request: pytest.FixtureRequest, kafka_admin: KafkaAdminClient, kafka_bootstrap: str,
                          tmp_path: Path) -> Iterator[Callable[..., StreamWorker]]:
    """Factory `make(**env)` of (not yet started) workers on fresh topics, `env` overriding
    DEFECTSTREAM_* variables; workers are killed and their topics deleted afterwards."""
    made: list[tuple[str, StreamWorker]] = []

    def make(**env: str) -> StreamWorker:
        prefix = unique_name(request, "ds", sep="-").lower()
        base = stream_worker_env(prefix, kafka_bootstrap, tmp_path / f"data{len(made)}")
        w = StreamWorker({**base, **env}, tmp_path)
        made.append((prefix, w))
        return w

    yield make
    for prefix, w in made:
        w.stop(kill=True)
        names = [t for t in kafka_admin.list_topics() if t.startswith(prefix)]
        if names:
            kafka_admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)


@pytest.fixture(scope="module")
def stream_worker(request: pytest.FixtureRequest, kafka_admin: KafkaAdminClient, kafka_bootstrap: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamWorker]:
    """A started worker on fresh topics (shared by a module's tests); topics deleted afterwards."""
    prefix = unique_name(request, "ds", sep="-").lower()
    tmp = tmp_path_factory.mktemp("stream-worker")
    worker = StreamWorker(stream_worker_env(prefix, kafka_bootstrap, tmp / "data"), tmp)
    worker.start()
    yield worker
    worker.stop()
    names = [t for t in kafka_admin.list_topics() if t.startswith(prefix)]
    if names:
        kafka_admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)
