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

from streams.commands.stack import stack_module

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


def _collect_quietly() -> None:
    import gc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(autouse=True)
def _collect_refused_kafka_sockets() -> Iterator[None]:
    """kafka-python leaves the sockets of refused or failed connects (a broker that is down, a wrong
    SASL password) to the garbage collector; its ResourceWarnings would surface, as errors, in
    whichever test the collector happens to run in. Collect them after each test, where they came from."""
    yield
    _collect_quietly()


@pytest.fixture(scope="session", autouse=True)
def _collect_refused_kafka_sockets_at_exit() -> Iterator[None]:
    """The same at the end of the session, for sockets whose kafka-python network threads ended only
    after their test (a client of a broker that was restarted in a fault test)."""
    yield
    _collect_quietly()


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
    # 18.16 drops a database only once the last query on its tables ended: on a busy box that can take
    # longer than one client's send/receive timeout, so wait for it with a patient client
    (host, port), = clickhouse_client.connection.hosts
    patient = Client(host, port=port, user=clickhouse_client.connection.user,
                     password=clickhouse_client.connection.password, connect_timeout=5, send_receive_timeout=180)
    try:
        patient.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        patient.disconnect()


# ------------------------------------------------------------------------------- streams: the worker


@pytest.fixture(scope="module")
def needs_checkpoints() -> None:
    """Skips the tests that run the Inspector while no checkpoint resolves (the packaged ones, or
    DEFECTSTREAM_MODEL__PATH); module-scoped, so it is checked before a module's worker starts."""
    import os

    try:
        from models.families.severity.inspector import resolve_checkpoints

        resolve_checkpoints(os.environ.get("DEFECTSTREAM_MODEL__PATH"))
    except Exception as exc:  # noqa: BLE001 - CheckpointError, FileNotFoundError, ImportError
        pytest.skip(f"no Inspector checkpoint yet ({exc}); train one with `defectstream train`")


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
    for name in ("frames", "defects", "parts", "deadletter", "cameras", "review_frames", "review_queue"):
        env[f"DEFECTSTREAM_KAFKA__TOPICS__{name.upper()}"] = f"{prefix}-{name.replace('_', '-')}"
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


# --------------------------------------------------------------------- throwaway servers (fault tests)


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClickHouseServer:
    """A second ClickHouse server (the stack's binary, config template and users) in a tmp dir.

    Only this server is ever stopped or killed; the shared stack is never touched. `stop()` keeps
    the data directory, so `start()` again brings the same tables back.
    """

    def __init__(self, root: Path):
        import shutil

        repo = INTEGRATION_DIR.parent.parent
        self.binary = shutil.which("clickhouse-server") or "/usr/sbin/clickhouse-server"
        self.root = root
        self.tcp_port, self.http_port = free_port(), free_port()
        for d in ("data", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        text = (repo / "ops" / "clickhouse" / "config.xml").read_text()
        for key, val in {"log_dir": root / "log", "tcp_port": self.tcp_port, "http_port": self.http_port,
                         "data_dir": root / "data", "users_config": repo / "ops" / "clickhouse" / "users.xml"}.items():
            text = text.replace("${%s}" % key, str(val))
        (root / "config.xml").write_text(text)
        self.proc = None

    def start(self, timeout_s: float = 60.0) -> None:
        import subprocess
        import time

        self.proc = subprocess.Popen([self.binary, f"--config-file={self.root / 'config.xml'}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.query("SELECT 1")
                return
            except Exception:  # noqa: BLE001 - not answering yet
                if self.proc.poll() is not None:
                    raise RuntimeError(f"throwaway clickhouse-server exited with {self.proc.returncode}")
                time.sleep(0.2)
        raise TimeoutError("throwaway clickhouse-server did not answer")

    def client(self, database: str = "default") -> Client:
        return Client("127.0.0.1", port=self.tcp_port, database=database, connect_timeout=2, send_receive_timeout=30)

    def query(self, sql: str, database: str = "default") -> list:
        client = self.client(database)
        try:
            return client.execute(sql)
        finally:
            client.disconnect()

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the server: connections stay open and queries in flight hang."""
        import signal

        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self, kill: bool = False) -> None:
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot act on SIGTERM
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@pytest.fixture
def clickhouse_server_factory(tmp_path: Path) -> Iterator[Callable[[], ClickHouseServer]]:
    """Factory of started throwaway ClickHouse servers (see `ClickHouseServer`), stopped afterwards."""
    made: list[ClickHouseServer] = []

    def make() -> ClickHouseServer:
        server = ClickHouseServer(tmp_path / f"clickhouse{len(made)}")
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


class KafkaBroker:
    """A throwaway single-node KRaft broker (the stack's Kafka jars, plaintext) in a tmp dir.

    Only this broker is ever stopped; `stop()` keeps its log dirs, so `start()` again is a restart
    of the same cluster with its topics, records and committed offsets. A subclass sets another
    client listener with `protocol` and `security_props()` (the controller stays plaintext).
    """

    protocol = "PLAINTEXT"  # the client listener's security protocol
    controller_protocol = "PLAINTEXT"  # the controller listener's (a subclass with SASL there sets its mechanism)
    auto_create_topics = False

    def __init__(self, root: Path):
        ops = stack_module()
        cfg = ops.StackConfig.from_env()
        self.java, self.libs, self.log4j = ops.find_java(), cfg.kafka_libs, ops.KAFKA_LOG4J
        self.root = root
        self.port, self.controller = free_port(), free_port()
        (root / "data").mkdir(parents=True)
        self.props = root / "server.properties"
        p = self.protocol
        self.props.write_text("\n".join([
            "process.roles=broker,controller", "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{self.controller}", "controller.listener.names=CONTROLLER",
            f"listeners={p}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller}",
            f"advertised.listeners={p}://127.0.0.1:{self.port}", f"inter.broker.listener.name={p}",
            f"listener.security.protocol.map={p}:{p},CONTROLLER:{self.controller_protocol}", *self.security_props(),
            f"log.dirs={root / 'data'}", "num.partitions=1",
            f"auto.create.topics.enable={str(self.auto_create_topics).lower()}",
            "offsets.topic.replication.factor=1", "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1", "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0", "",
        ]))
        self.proc = None
        self.starts = 0
        self._log = None

    def security_props(self) -> list[str]:
        """server.properties lines for the client listener's security (none for plaintext)."""
        return []

    def format_args(self) -> list[str]:
        """Extra `kafka-storage format` arguments (e.g. `--add-scram` for a SCRAM super user)."""
        return []

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The log of the latest start."""
        return self.root / f"broker-{self.starts}.log"

    def _java(self, *args: str) -> list[str]:
        return [self.java, "-Xmx384m", f"-Dlog4j2.configurationFile={self.log4j}", f"-Dkafka.logs.dir={self.root}",
                "-cp", str(self.libs / "*"), *args]

    def start(self, timeout_s: float = 120.0) -> None:
        import subprocess
        import time

        if self.starts == 0:
            cluster = subprocess.run(self._java("kafka.tools.StorageTool", "random-uuid"), capture_output=True,
                                     text=True, check=True).stdout.strip().splitlines()[-1]
            subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(self.props),
                                      *self.format_args()),
                           capture_output=True, text=True, check=True)
        self.starts += 1
        log_path = self.log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self._java("kafka.Kafka", str(self.props)), stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"throwaway broker exited: {log_path.read_text(errors='replace')[-3000:]}")
            if "Kafka Server started" in log_path.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise TimeoutError("throwaway broker did not start")

    def stop(self, kill: bool = False) -> None:
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[Callable[[], KafkaBroker]]:
    """Factory of started throwaway Kafka brokers (see `KafkaBroker`), stopped afterwards."""
    made: list[KafkaBroker] = []

    def make() -> KafkaBroker:
        broker = KafkaBroker(tmp_path / f"kafka{len(made)}")
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def group_worker_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., StreamWorker]]:
    """Factory `make(bootstrap, prefix=None, **env)` of (not yet started) workers for fault tests.

    Workers made with the same `prefix` share an app id (one consumer group, the same topics and
    tracking changelog) and each gets its own data dir and log dir; `prefix=None` makes a new
    one (`worker.prefix`). All are killed afterwards; topics on the stack's broker are deleted.
    """
    made: list[StreamWorker] = []

    def make(bootstrap: str, prefix: str | None = None, partitions: int = 2, **env: str) -> StreamWorker:
        prefix = prefix or unique_name(request, "ds", sep="-").lower()
        n = len(made)
        base = stream_worker_env(prefix, bootstrap, tmp_path / f"gw{n}" / "data", partitions=partitions)
        (tmp_path / f"gw{n}").mkdir(parents=True, exist_ok=True)
        w = StreamWorker({**base, "DEFECTSTREAM_WORKER__METRICS_PORT": "0", **env}, tmp_path / f"gw{n}")
        w.prefix = prefix  # type: ignore[attr-defined]
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop(kill=True)
    prefixes = {w.prefix for w in made}  # type: ignore[attr-defined]
    stack_cfg = stack_module().StackConfig.from_env()
    on_stack = [w for w in made if w.env["DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS"] == stack_cfg.kafka_bootstrap]
    if on_stack:
        admin = KafkaAdminClient(bootstrap_servers=stack_cfg.kafka_bootstrap, client_id="defectstream-tests")
        try:
            names = [t for t in admin.list_topics() if any(t.startswith(p) for p in prefixes)]
            if names:
                admin.delete_topics(names, timeout_ms=10_000, raise_errors=False)
        finally:
            admin.close()
