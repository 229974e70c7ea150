"""The ClickHouse users docker-compose mounts let the other containers (sink, monitor, migrate, Grafana) log in.

Run on a throwaway 18.16 server listening beyond loopback, reached through this machine's own
non-loopback address as another container would reach the `clickhouse` service. The compose file
takes its passwords from the environment (`from_env`, which the current server of docker-compose
resolves and 18.16 does not): the test fills them in as the current server would.
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from sinks.migrations import migrate
from sinks.sql import DriverExecutor
from sinks.testing import sample_events, seed

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"CLICKHOUSE_ADMIN_PASSWORD": "adm1n-pw", "CLICKHOUSE_WRITER_PASSWORD": "wr1ter-pw",
             "CLICKHOUSE_READER_PASSWORD": "re4der-pw"}
T0 = 1_763_700_000_000


def own_address() -> str:
    """This machine's address on its default route (not loopback): how a container sees the server."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP: nothing is sent
        addr = s.getsockname()[0]
    assert not addr.startswith("127."), addr
    return addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_users_for_18_16() -> str:
    text = (ROOT / "ops" / "clickhouse" / "users.compose.xml").read_text()
    text = re.sub(r'<password from_env="(\w+)"\s*/>', lambda m: f"<password>{PASSWORDS[m.group(1)]}</password>", text)
    return text.replace("<clickhouse>", "<yandex>").replace("</clickhouse>", "</yandex>")  # 18.16's root name


@pytest.fixture(params=["compose", "local"])
def server(request, tmp_path):
    """A ClickHouse server on all interfaces with the image-like base users plus the file under test."""
    root = tmp_path / "ch"
    for d in ("data", "log", "users.d"):
        (root / d).mkdir(parents=True)
    tcp, http = free_port(), free_port()
    text = (ROOT / "ops" / "clickhouse" / "config.xml").read_text()
    for key, val in {"log_dir": root / "log", "tcp_port": tcp, "http_port": http, "data_dir": root / "data",
                     "users_config": root / "users.xml"}.items():
        text = text.replace("${%s}" % key, str(val))
    (root / "config.xml").write_text(text.replace("<listen_host>127.0.0.1</listen_host>", "<listen_host>0.0.0.0</listen_host>"))
    # The base is the local stack's file; the compose file is mounted over it as users.d/ (as over the
    # image's users.xml), so whatever it does not replace would still be loopback-only.
    (root / "users.xml").write_text((ROOT / "ops" / "clickhouse" / "users.xml").read_text())
    if request.param == "compose":
        (root / "users.d" / "defectstream.xml").write_text(compose_users_for_18_16())
    proc = subprocess.Popen(["clickhouse-server", f"--config-file={root / 'config.xml'}"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    admin_pw = PASSWORDS["CLICKHOUSE_ADMIN_PASSWORD"] if request.param == "compose" else ""
    deadline = time.monotonic() + 60
    while True:
        probe = Client("127.0.0.1", port=tcp, password=admin_pw, connect_timeout=1)
        try:
            probe.execute("SELECT 1")
            break
        except Exception:  # noqa: BLE001
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            probe.disconnect()
    yield request.param, tcp
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def connect(server):
    """Factory of executors reaching the server through this machine's non-loopback address."""
    which, port = server
    host = own_address()
    made: list[DriverExecutor] = []

    def make(user: str, password: str, database: str = "default") -> DriverExecutor:
        made.append(DriverExecutor(Client(host, port=port, user=user, password=password, database=database,
                                          connect_timeout=2)))
        return made[-1]

    yield make
    for ex in made:
        ex.close()


def test_other_containers_can_log_in_with_the_compose_users(server, connect):
    which, _port = server

    if which == "local":  # the local stack's file (loopback only): what compose used to mount
        with pytest.raises(ServerException) as err:
            connect("writer", "writer").query("SELECT 1")
        assert err.value.code in (192, 195, 516)  # unknown user / not allowed from this address
        return
    with pytest.raises(ServerException):
        connect("default", "").query("SELECT 1")  # no password-less admin on the network
    admin = connect("default", PASSWORDS["CLICKHOUSE_ADMIN_PASSWORD"])  # the migrate container
    admin.query("CREATE DATABASE ds")
    migrate(connect("default", PASSWORDS["CLICKHOUSE_ADMIN_PASSWORD"], "ds"))
    writer = connect("writer", PASSWORDS["CLICKHOUSE_WRITER_PASSWORD"], "ds")  # the sink and the monitor
    seed(writer, list(sample_events(T0, 5)))
    with pytest.raises(ServerException):
        writer.query("DROP TABLE parts")  # still no DDL
    reader = connect("reader", PASSWORDS["CLICKHOUSE_READER_PASSWORD"], "ds")  # Grafana
    assert reader.query("SELECT count() FROM parts") == [(10,)]
    with pytest.raises(ServerException):
        seed(reader, list(sample_events(T0, 1)))
