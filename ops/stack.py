"""The local stack: a Kafka broker (KRaft) and a ClickHouse server on loopback, data under `.stack/`.

Usage: `ops/stack up|down|status|logs|reset` (or `defectstream stack ...`, which calls this module).
Standard library only, so it runs before the project's virtual environment exists; kafka-python is
used for an extra health check when it can be imported.

Layout of the stack dir (default `<repo>/.stack`, git-ignored):
    kafka/libs/            broker jars resolved by Maven from ops/kafka/pom.xml (kept by `reset`)
    kafka/data/            KRaft metadata and topic logs (formatted once)
    kafka/server.properties, kafka/kafka.pid, kafka/kafka.log
    clickhouse/config.xml, clickhouse/users.xml (rendered from ops/clickhouse/)
    clickhouse/data/, clickhouse/log/, clickhouse/clickhouse.pid

Environment overrides (defaults in brackets):
    DEFECTSTREAM_STACK_DIR                    [<repo>/.stack]; a relative path is taken from the repo root
    DEFECTSTREAM_STACK_KAFKA_PORT             [19092]  PLAINTEXT listener
    DEFECTSTREAM_STACK_KAFKA_CONTROLLER_PORT  [19093]  KRaft controller listener
    DEFECTSTREAM_STACK_CLICKHOUSE_PORT        [19000]  native protocol
    DEFECTSTREAM_STACK_CLICKHOUSE_HTTP_PORT   [18123]  HTTP
    DEFECTSTREAM_STACK_TIMEOUT                [90]     seconds `up` waits for both services
    DEFECTSTREAM_STACK_KAFKA_HEAP             [768m]   broker -Xmx
    JAVA_HOME                                 java is $JAVA_HOME/bin/java when set, else `java` on PATH
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "ops"
KAFKA_POM = OPS / "kafka" / "pom.xml"
KAFKA_PROPERTIES_TEMPLATE = OPS / "kafka" / "server.properties.template"
KAFKA_LOG4J = OPS / "kafka" / "log4j2.yaml"
CLICKHOUSE_CONFIG_TEMPLATE = OPS / "clickhouse" / "config.xml"
CLICKHOUSE_USERS = OPS / "clickhouse" / "users.xml"

SERVICES = ("kafka", "clickhouse")
LOG_TAIL_ON_FAILURE = 40
KAFKA_STOP_GRACE_S = 30.0
CLICKHOUSE_STOP_GRACE_S = 20.0
MIN_JAVA = 17  # Kafka 4 brokers need Java 17+


class StackError(Exception):
    """A failure with a message meant for the person at the terminal (no traceback)."""


# --------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and which loopback ports it uses."""

    stack_dir: Path
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    clickhouse_port: int = 19000
    clickhouse_http_port: int = 18123
    timeout_s: float = 90.0
    kafka_heap: str = "768m"
    host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, environ: "os._Environ[str] | dict[str, str] | None" = None) -> "StackConfig":
        """Build the config from `DEFECTSTREAM_STACK_*` variables (see the module docstring).

        Raises:
            StackError: a variable is not a valid port / number.
        """
        env = os.environ if environ is None else environ

        def port(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise StackError(f"{name}={raw!r} is not a TCP port")
            return int(raw)

        raw_dir = env.get("DEFECTSTREAM_STACK_DIR", "").strip()
        stack_dir = Path(raw_dir) if raw_dir else ROOT / ".stack"
        if not stack_dir.is_absolute():
            stack_dir = ROOT / stack_dir
        raw_timeout = env.get("DEFECTSTREAM_STACK_TIMEOUT", "").strip()
        try:
            timeout_s = float(raw_timeout) if raw_timeout else 90.0
        except ValueError:
            raise StackError(f"DEFECTSTREAM_STACK_TIMEOUT={raw_timeout!r} is not a number of seconds") from None
        cfg = cls(
            stack_dir=Path(os.path.abspath(stack_dir)),
            kafka_port=port("DEFECTSTREAM_STACK_KAFKA_PORT", 19092),
            kafka_controller_port=port("DEFECTSTREAM_STACK_KAFKA_CONTROLLER_PORT", 19093),
            clickhouse_port=port("DEFECTSTREAM_STACK_CLICKHOUSE_PORT", 19000),
            clickhouse_http_port=port("DEFECTSTREAM_STACK_CLICKHOUSE_HTTP_PORT", 18123),
            timeout_s=timeout_s,
            kafka_heap=env.get("DEFECTSTREAM_STACK_KAFKA_HEAP", "").strip() or "768m",
        )
        ports = [cfg.kafka_port, cfg.kafka_controller_port, cfg.clickhouse_port, cfg.clickhouse_http_port]
        if len(set(ports)) != len(ports):
            raise StackError(f"the stack ports must differ, got {ports}")
        return cfg

    # Kafka paths
    @property
    def kafka_dir(self) -> Path:
        return self.stack_dir / "kafka"

    @property
    def kafka_libs(self) -> Path:
        return self.kafka_dir / "libs"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def kafka_log(self) -> Path:
        return self.kafka_dir / "kafka.log"

    @property
    def kafka_pid_file(self) -> Path:
        return self.kafka_dir / "kafka.pid"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    # ClickHouse paths
    @property
    def clickhouse_dir(self) -> Path:
        return self.stack_dir / "clickhouse"

    @property
    def clickhouse_data(self) -> Path:
        return self.clickhouse_dir / "data"

    @property
    def clickhouse_log_dir(self) -> Path:
        return self.clickhouse_dir / "log"

    @property
    def clickhouse_config(self) -> Path:
        return self.clickhouse_dir / "config.xml"

    @property
    def clickhouse_users(self) -> Path:
        return self.clickhouse_dir / "users.xml"

    @property
    def clickhouse_pid_file(self) -> Path:
        return self.clickhouse_dir / "clickhouse.pid"

    @property
    def clickhouse_stdout(self) -> Path:
        return self.clickhouse_log_dir / "stdout.log"

    @property
    def clickhouse_http_url(self) -> str:
        return f"http://{self.host}:{self.clickhouse_http_port}/"

    def ports(self, service: str) -> list[int]:
        if service == "kafka":
            return [self.kafka_port, self.kafka_controller_port]
        return [self.clickhouse_port, self.clickhouse_http_port]

    def pid_file(self, service: str) -> Path:
        return self.kafka_pid_file if service == "kafka" else self.clickhouse_pid_file

    def process_marker(self, service: str) -> str:
        """A string found in the command line of this stack's process (and of no foreign one)."""
        if service == "kafka":
            return f"kafka.Kafka {self.kafka_properties}"  # not the StorageTool run on the same file
        return f"--config-file={self.clickhouse_config}"

    def log_files(self, service: str) -> list[Path]:
        if service == "kafka":
            return [self.kafka_log]
        return [
            self.clickhouse_stdout,
            self.clickhouse_log_dir / "clickhouse-server.err.log",
            self.clickhouse_log_dir / "clickhouse-server.log",
        ]


# ------------------------------------------------------------------------------------------ processes


class ServiceStatus(NamedTuple):
    """What `status` knows about one service."""

    name: str
    pid: int | None  # this stack's process, None when not running
    healthy: bool  # answered a real request (Kafka metadata / ClickHouse SELECT 1)
    version: str | None
    detail: str  # why not healthy, or which ports


def _proc_cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _pid_alive(pid: int) -> bool:
    """True for a live process; reaps our own zombie children (a zombie is not alive)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _find_process(marker: str) -> int | None:
    """The pid of a live process whose command line contains `marker` (for a lost pid file)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        cmd = _proc_cmdline(int(entry.name))
        if cmd and marker in cmd and _pid_alive(int(entry.name)):
            return int(entry.name)
    return None


def running_pid(cfg: StackConfig, service: str, say: Callable[[str], None] | None = None) -> int | None:
    """The pid of this stack's `service` process, or None.

    A pid file whose process is gone, or now belongs to another program, is stale: it is removed
    (and said so when `say` is given). A live process of this stack without a pid file is adopted.
    """
    pid_file = cfg.pid_file(service)
    marker = cfg.process_marker(service)
    pid: int | None = None
    if pid_file.exists():
        text = pid_file.read_text().strip()
        pid = int(text) if text.isdigit() else None
        cmd = _proc_cmdline(pid) if pid else None
        if pid and cmd and marker in cmd and _pid_alive(pid):
            return pid
        if say:
            say(f"{service}: removing stale pid file {pid_file} (pid {text or '?'} is not this stack's {service})")
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    if cfg.stack_dir.exists():
        found = _find_process(marker)
        if found:
            pid_file.write_text(f"{found}\n")
            return found
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def port_owner(port: int) -> str | None:
    """`pid N: <command>` of the process listening on `port` (best effort, via /proc), or None."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        cmd = _proc_cmdline(int(entry.name)) or "?"
                        return f"pid {entry.name}: {cmd[:160]}"
    return "a process this user cannot see"


def port_in_use(host: str, port: int) -> bool:
    """True when `host:port` cannot be bound (someone listens there, on that or the any-address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (we start services with their own session), else the pid."""
    with contextlib.suppress(ProcessLookupError):
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
                return
        except ProcessLookupError:
            return
        os.kill(pid, sig)


def stop_process(pid: int, grace_s: float) -> bool:
    """SIGTERM the process group, wait up to `grace_s`, then SIGKILL. Returns True if it had to kill."""
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return False
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _spawn(argv: Sequence[str], log: Path, cwd: Path, pid_file: Path) -> int:
    """Start `argv` detached (own session = own process group), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists() and log.stat().st_size > 64 * 1024 * 1024:
        log.replace(log.with_name(log.name + ".1"))
    with open(log, "ab") as out:
        out.write(f"\n===== ops/stack: starting at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of a text file ([] when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block = min(size, max(64 * 1024, n * 400))
            f.seek(size - block)
            data = f.read()
    except OSError:
        return []
    return data.decode(errors="replace").splitlines()[-n:] if n > 0 else []


# ---------------------------------------------------------------------------------------------- probes


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _kafka_call(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"defectstream-stack"
    msg = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    resp = _recv_exact(sock, size)
    if struct.unpack_from(">i", resp)[0] != correlation_id:
        raise ConnectionError("broker answered another request")
    return resp[4:]


class KafkaMetadata(NamedTuple):
    brokers: list[str]  # host:port of each live broker
    cluster_id: str | None
    controller_id: int
    topics: int


def kafka_metadata_raw(host: str, port: int, timeout_s: float = 3.0) -> KafkaMetadata:
    """A real Metadata request over a plain socket (ApiVersions v0, then Metadata v4..v8).

    Raises:
        OSError / ConnectionError / struct.error: the broker does not answer properly.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        body = _kafka_call(sock, 18, 0, 1, b"")
        error_code, count = struct.unpack_from(">hi", body)
        if error_code:
            raise ConnectionError(f"ApiVersions error code {error_code}")
        versions = {}
        for i in range(count):
            key, lo, hi = struct.unpack_from(">hhh", body, 6 + 6 * i)
            versions[key] = (lo, hi)
        lo, hi = versions.get(3, (0, -1))
        usable = [v for v in range(4, 9) if lo <= v <= hi]  # non-flexible versions this parser reads
        if not usable:
            raise ConnectionError(f"broker offers Metadata v{lo}..v{hi}, none of v4..v8")
        version = usable[0]
        request = struct.pack(">ib", -1, 0) + (b"\0\0" if version >= 8 else b"")
        body = _kafka_call(sock, 3, version, 2, request)
    off = 4  # throttle_time_ms
    (n_brokers,) = struct.unpack_from(">i", body, off)
    off += 4
    brokers = []

    def read_str(off: int) -> tuple[str | None, int]:
        (n,) = struct.unpack_from(">h", body, off)
        if n < 0:
            return None, off + 2
        return body[off + 2 : off + 2 + n].decode(), off + 2 + n

    for _ in range(n_brokers):
        off += 4  # node_id
        bhost, off = read_str(off)
        (bport,) = struct.unpack_from(">i", body, off)
        off += 4
        _, off = read_str(off)  # rack
        brokers.append(f"{bhost}:{bport}")
    cluster_id, off = read_str(off)
    controller_id, n_topics = struct.unpack_from(">ii", body, off)
    return KafkaMetadata(brokers, cluster_id, controller_id, n_topics)


def kafka_list_topics(bootstrap: str, timeout_s: float) -> list[str] | None:
    """Topic names as kafka-python sees them, or None when kafka-python is not installed."""
    try:
        from kafka import KafkaAdminClient  # type: ignore[import-not-found]
    except ImportError:
        return None
    ms = int(timeout_s * 1000)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="defectstream-stack", request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
    )
    try:
        return list(admin.list_topics())
    finally:
        admin.close()


def kafka_version(cfg: StackConfig) -> str | None:
    """The broker version, read from the jar on the broker's classpath (kafka_2.13-<version>.jar)."""
    with contextlib.suppress(OSError):
        for jar in sorted(cfg.kafka_libs.glob("kafka_*-*.jar")):
            m = re.match(r"kafka_[\d.]+-(.+)\.jar$", jar.name)
            if m:
                return m.group(1)
    return None


def kafka_cluster_id(cfg: StackConfig) -> str | None:
    """The cluster id this stack's storage was formatted with (None before the first `up`)."""
    with contextlib.suppress(OSError):
        m = re.search(r"^cluster\.id=(.+)$", (cfg.kafka_data / "meta.properties").read_text(), re.M)
        return m.group(1).strip() if m else None
    return None


def probe_kafka(cfg: StackConfig, timeout_s: float = 3.0) -> tuple[bool, str]:
    """(healthy, detail): a raw Metadata request, then kafka-python `list_topics()` when importable."""
    try:
        meta = kafka_metadata_raw(cfg.host, cfg.kafka_port, timeout_s)
    except (OSError, ConnectionError, struct.error) as exc:
        return False, f"no metadata from {cfg.kafka_bootstrap}: {exc}"
    if not meta.brokers:
        return False, "metadata lists no broker yet"
    ours = kafka_cluster_id(cfg)
    if ours and meta.cluster_id != ours:
        return False, (f"{cfg.kafka_bootstrap} answers for cluster {meta.cluster_id}, not this stack's "
                       f"cluster {ours}: another broker holds the port")
    try:
        topics = kafka_list_topics(cfg.kafka_bootstrap, timeout_s)
    except Exception as exc:  # kafka-python raises its own hierarchy; any failure = not healthy yet
        return False, f"kafka-python list_topics failed: {type(exc).__name__}: {exc}"
    n_topics = meta.topics if topics is None else len(topics)
    return True, f"cluster {meta.cluster_id}, {n_topics} topic{'' if n_topics == 1 else 's'}"


def clickhouse_query(cfg: StackConfig, query: str, timeout_s: float = 3.0, user: str = "default",
                     password: str = "") -> str:
    """Run `query` over ClickHouse's HTTP interface and return the body (proxies are bypassed).

    Raises:
        urllib.error.URLError / OSError: not answering; urllib.error.HTTPError: the query failed.
    """
    params = urllib.parse.urlencode({"query": query, "user": user, "password": password})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{cfg.clickhouse_http_url}?{params}", timeout=timeout_s) as resp:
        return resp.read().decode()


def probe_clickhouse(cfg: StackConfig, timeout_s: float = 3.0) -> tuple[bool, str, str | None]:
    """(healthy, detail, version): a real `SELECT 1` over HTTP."""
    try:
        one, version = clickhouse_query(cfg, "SELECT 1, version()", timeout_s).strip().split("\t")
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}: {exc.read().decode(errors='replace').strip()[:200]}", None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer from {cfg.clickhouse_http_url}: {reason}", None
    if one != "1":
        return False, f"SELECT 1 returned {one!r}", None
    return True, "SELECT 1 ok", version


def service_status(cfg: StackConfig, service: str, say: Callable[[str], None] | None = None) -> ServiceStatus:
    """Pid and health of one service of this stack (a foreign process on its port is reported, not trusted)."""
    pid = running_pid(cfg, service, say)
    ports = cfg.ports(service)
    if pid is None:
        owners = [f"port {p} is held by {o}" for p in ports if (o := port_owner(p))]
        return ServiceStatus(service, None, False, None, "; ".join(owners) or "not running")
    started_with = running_ports(cfg, service)
    if started_with and started_with != ports:
        return ServiceStatus(service, pid, False, None, ports_mismatch(cfg, service, started_with))
    if service == "kafka":
        ok, detail = probe_kafka(cfg)
        version = kafka_version(cfg)
    else:
        ok, detail, version = probe_clickhouse(cfg)
    return ServiceStatus(service, pid, ok, version, detail)


def running_ports(cfg: StackConfig, service: str) -> list[int] | None:
    """The ports in the config the running process was started with (rendered only when starting)."""
    try:
        if service == "kafka":
            text = cfg.kafka_properties.read_text()
            patterns = [r"^listeners=.*PLAINTEXT://[^:,]+:(\d+)", r"^listeners=.*CONTROLLER://[^:,]+:(\d+)"]
        else:
            text = cfg.clickhouse_config.read_text()
            patterns = [r"<tcp_port>(\d+)</tcp_port>", r"<http_port>(\d+)</http_port>"]
    except OSError:
        return None
    found = [re.search(p, text, re.M) for p in patterns]
    return [int(m.group(1)) for m in found] if all(found) else None  # type: ignore[union-attr]


def ports_mismatch(cfg: StackConfig, service: str, started_with: list[int]) -> str:
    return (
        f"this stack's {service} runs on ports {started_with}, but the DEFECTSTREAM_STACK_* settings ask for "
        f"{cfg.ports(service)}: use the same settings, or `ops/stack down` and `up` again to move it"
    )


def _address(cfg: StackConfig, service: str) -> str:
    if service == "kafka":
        return cfg.kafka_bootstrap
    return f"{cfg.host}:{cfg.clickhouse_port} (http {cfg.clickhouse_http_port})"


def _where(cfg: StackConfig, service: str) -> str:
    if service == "kafka":
        return f"{cfg.kafka_bootstrap} (controller {cfg.host}:{cfg.kafka_controller_port})"
    return f"{cfg.host}:{cfg.clickhouse_port} native, {cfg.host}:{cfg.clickhouse_http_port} http"


# ------------------------------------------------------------------------------------------ preflight


def find_java() -> str:
    """The java binary ($JAVA_HOME/bin/java, else java on PATH), checked to be Java 17+.

    Raises:
        StackError: no java, or too old.
    """
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        java = str(Path(java_home) / "bin" / "java")
        if not os.access(java, os.X_OK):
            raise StackError(f"java not found at {java} (from JAVA_HOME): fix JAVA_HOME or unset it")
    else:
        found = shutil.which("java")
        if not found:
            raise StackError(
                "java not found on PATH: the Kafka broker needs Java 17+ "
                "(Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless), or set JAVA_HOME"
            )
        java = found
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"{java} -version failed: {exc}") from None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = (int(m.group(2)) if m.group(1) == "1" else int(m.group(1))) if m else 0
    if major < MIN_JAVA:
        raise StackError(f"{java} is Java {major or '?'}; the Kafka 4 broker needs Java {MIN_JAVA}+")
    return java


def find_clickhouse_server(say: Callable[[str], None]) -> list[str]:
    """The command that starts a ClickHouse server, installing Debian's package when it is missing.

    Raises:
        StackError: not installed and cannot be installed here.
    """

    def lookup() -> list[str] | None:
        path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/bin:/usr/local/bin"
        server = shutil.which("clickhouse-server", path=path)
        if server:
            return [server]
        combined = shutil.which("clickhouse", path=path)
        return [combined, "server"] if combined else None

    found = lookup()
    if found:
        return found
    apt = shutil.which("apt-get")
    if not apt or os.geteuid() != 0:
        raise StackError(
            "clickhouse-server not found: install it (Debian/Ubuntu, as root: "
            "apt-get install -y clickhouse-server clickhouse-client)"
        )
    say("clickhouse: clickhouse-server missing, installing clickhouse-server clickhouse-client with apt-get...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "-q", "--no-install-recommends", "clickhouse-server", "clickhouse-client"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, text=True)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    found = lookup()
    if result.returncode != 0 or not found:
        lines = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise StackError(f"could not install clickhouse-server with apt-get:\n{lines}")
    return found


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()


def ensure_kafka_jars(cfg: StackConfig, say: Callable[[str], None]) -> None:
    """Resolve the broker jars into `<stack>/kafka/libs` with Maven, unless they are already there.

    The download goes to a temporary folder that is renamed when complete, so an interrupted
    download is never mistaken for a cache; a changed pom.xml resolves again. Maven keeps its own
    cache in ~/.m2, so a second stack dir resolves without the network.

    Raises:
        StackError: Maven is missing or the resolution failed.
    """
    marker = cfg.kafka_libs / ".pom.sha256"
    digest = _pom_digest()
    if marker.exists() and marker.read_text().strip() == digest and any(cfg.kafka_libs.glob("kafka_*.jar")):
        return
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(
            f"mvn not found: it resolves the Kafka broker jars from {KAFKA_POM.relative_to(ROOT)} "
            "(Debian/Ubuntu: apt-get install -y maven), or copy the jars into " + str(cfg.kafka_libs)
        )
    say(f"kafka: resolving the broker jars from Maven Central ({KAFKA_POM.relative_to(ROOT)})...")
    started = time.monotonic()
    tmp = cfg.kafka_dir / f"libs.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not any(tmp.glob("kafka_*.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        lines = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_ON_FAILURE:])
        raise StackError(
            f"could not resolve the Kafka jars (`{' '.join(cmd)}` exited {result.returncode}); "
            f"is Maven Central reachable (or a mirror set in ~/.m2/settings.xml)?\n{lines}"
        )
    (tmp / ".pom.sha256").write_text(digest + "\n")
    if cfg.kafka_libs.is_symlink():
        cfg.kafka_libs.unlink()
    elif cfg.kafka_libs.exists():
        shutil.rmtree(cfg.kafka_libs)
    tmp.rename(cfg.kafka_libs)
    n = len(list(cfg.kafka_libs.glob("*.jar")))
    say(f"kafka: {n} jars ready in {time.monotonic() - started:.1f}s")


def _render(template: Path, target: Path, values: dict[str, object]) -> None:
    try:
        text = string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    except (KeyError, ValueError) as exc:
        raise StackError(f"cannot render {template}: bad placeholder {exc}") from None
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


# -------------------------------------------------------------------------------------------- start


def start_kafka(cfg: StackConfig, java: str, say: Callable[[str], None]) -> int:
    """Render server.properties, format the KRaft storage once, start the broker detached."""
    cfg.kafka_data.mkdir(parents=True, exist_ok=True)
    _render(KAFKA_PROPERTIES_TEMPLATE, cfg.kafka_properties, {
        "kafka_port": cfg.kafka_port, "controller_port": cfg.kafka_controller_port, "log_dirs": cfg.kafka_data,
    })
    classpath = str(cfg.kafka_libs / "*")
    if not (cfg.kafka_data / "meta.properties").exists():
        uuid = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True,
        )
        cluster_id = uuid.stdout.strip().splitlines()[-1] if uuid.returncode == 0 and uuid.stdout.strip() else ""
        if not cluster_id:
            raise StackError(f"kafka: StorageTool random-uuid failed:\n{uuid.stdout}{uuid.stderr}")
        fmt = subprocess.run(
            [java, f"-Dlog4j2.configurationFile={KAFKA_LOG4J}", "-cp", classpath, "kafka.tools.StorageTool",
             "format", "-t", cluster_id, "-c", str(cfg.kafka_properties)],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise StackError(f"kafka: formatting {cfg.kafka_data} failed:\n{fmt.stdout}{fmt.stderr}")
        say(f"kafka: formatted new KRaft storage in {cfg.kafka_data} (cluster id {cluster_id})")
    argv = [
        java, f"-Xmx{cfg.kafka_heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J}", f"-Dkafka.logs.dir={cfg.kafka_dir}",
        "-cp", classpath, "kafka.Kafka", str(cfg.kafka_properties),
    ]
    return _spawn(argv, cfg.kafka_log, cfg.kafka_dir, cfg.kafka_pid_file)


def start_clickhouse(cfg: StackConfig, server: list[str]) -> int:
    """Render config.xml and users.xml under the stack dir and start the server detached."""
    for d in (cfg.clickhouse_data, cfg.clickhouse_log_dir):
        d.mkdir(parents=True, exist_ok=True)
    _render(CLICKHOUSE_CONFIG_TEMPLATE, cfg.clickhouse_config, {
        "log_dir": cfg.clickhouse_log_dir, "data_dir": cfg.clickhouse_data, "tcp_port": cfg.clickhouse_port,
        "http_port": cfg.clickhouse_http_port, "users_config": cfg.clickhouse_users,
    })
    # A copy, not a reference: the server writes preprocessed files next to its configs.
    if not cfg.clickhouse_users.exists() or cfg.clickhouse_users.read_bytes() != CLICKHOUSE_USERS.read_bytes():
        shutil.copyfile(CLICKHOUSE_USERS, cfg.clickhouse_users)
    argv = [*server, f"--config-file={cfg.clickhouse_config}"]
    return _spawn(argv, cfg.clickhouse_stdout, cfg.clickhouse_dir, cfg.clickhouse_pid_file)


@contextlib.contextmanager
def stack_lock(cfg: StackConfig, say: Callable[[str], None]) -> Iterator[None]:
    """One `up`/`down`/`reset` at a time per stack dir (tests and people share the stack)."""
    cfg.stack_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.stack_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("stack: another ops/stack command is running on this stack dir, waiting for it...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _failure(cfg: StackConfig, service: str, why: str) -> str:
    parts = [f"{service}: {why}"]
    for log in cfg.log_files(service):
        lines = tail(log, LOG_TAIL_ON_FAILURE)
        if lines:
            parts.append(f"--- last {len(lines)} lines of {log} ---")
            parts.extend(lines)
            break
    return "\n".join(parts)


def up(cfg: StackConfig, say: Callable[[str], None] = print) -> int:
    """Start whatever is not running and wait until both answer.

    Idempotent: running services are left as they are (and checked); data and jars are reused.

    Returns:
        0 when both answer within `cfg.timeout_s`, 1 otherwise (with the last log lines printed).
    Raises:
        StackError: a precondition fails (port held by a foreign process, java/clickhouse/mvn missing).
    """
    with stack_lock(cfg, say):
        pids = {s: running_pid(cfg, s, say) for s in SERVICES}
        for service, pid in pids.items():
            started_with = running_ports(cfg, service) if pid else None
            if started_with and started_with != cfg.ports(service):
                raise StackError(f"{service} (pid {pid}): {ports_mismatch(cfg, service, started_with)}")
            if pid:
                say(f"{service}: already running (pid {pid}), checking it answers...")
        to_start = [s for s in SERVICES if not pids[s]]
        busy = [
            f"{s}: port {p} on {cfg.host} is already in use by {port_owner(p) or 'another process'}"
            for s in to_start for p in cfg.ports(s) if port_in_use(cfg.host, p)
        ]
        if busy:
            raise StackError(
                "\n".join(busy) + "\nstop that process, or move the stack elsewhere with "
                "DEFECTSTREAM_STACK_KAFKA_PORT / _KAFKA_CONTROLLER_PORT / _CLICKHOUSE_PORT / _CLICKHOUSE_HTTP_PORT"
            )
        java = find_java() if "kafka" in to_start else ""
        server = find_clickhouse_server(say) if "clickhouse" in to_start else []
        if "kafka" in to_start:
            ensure_kafka_jars(cfg, say)

        started_at: dict[str, float] = {}
        # ClickHouse first: it comes up while the JVM formats the storage and starts.
        if "clickhouse" in to_start:
            say("clickhouse: starting...")
            started_at["clickhouse"] = time.monotonic()
            pids["clickhouse"] = start_clickhouse(cfg, server)
        if "kafka" in to_start:
            say("kafka: starting...")
            started_at["kafka"] = time.monotonic()
            pids["kafka"] = start_kafka(cfg, java, say)

        t0 = time.monotonic()
        deadline = t0 + cfg.timeout_s
        pending = list(SERVICES)
        last: dict[str, str] = {}
        failures: list[str] = []
        while pending:
            for service in list(pending):
                pid = pids[service]
                assert pid is not None
                if not _pid_alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        cfg.pid_file(service).unlink()
                    failures.append(_failure(cfg, service, f"the process (pid {pid}) exited during startup"))
                    pending.remove(service)
                    continue
                if service == "kafka":
                    ok, last[service] = probe_kafka(cfg)
                    version = kafka_version(cfg)
                else:
                    ok, last[service], version = probe_clickhouse(cfg)
                if ok:
                    took = time.monotonic() - started_at.get(service, t0)
                    what = f"{service}: up on {_address(cfg, service)} ({version or '?'})"
                    if service in started_at:
                        say(f"{what} in {took:.1f}s, pid {pid}")
                    else:
                        say(f"{what}, pid {pid}, was already running")
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                for service in pending:
                    failures.append(_failure(
                        cfg, service,
                        f"did not answer within {cfg.timeout_s:.0f}s (pid {pids[service]} still running; "
                        f"last check: {last.get(service, '-')}); `ops/stack down` stops it",
                    ))
                break
            if pending:
                time.sleep(0.25)
        if failures:
            for text in failures:
                say(text)
            return 1
        return 0


def down(cfg: StackConfig, say: Callable[[str], None] = print) -> int:
    """Stop both services (SIGTERM to the process group, SIGKILL after a grace period). Idempotent."""
    if not cfg.stack_dir.exists():
        for service in SERVICES:
            say(f"{service}: not running")
        return 0
    with stack_lock(cfg, say):
        # ClickHouse first: whatever writes to it from Kafka is stopped by then.
        for service, grace in (("clickhouse", CLICKHOUSE_STOP_GRACE_S), ("kafka", KAFKA_STOP_GRACE_S)):
            pid = running_pid(cfg, service, say)
            if pid is None:
                say(f"{service}: not running")
                continue
            say(f"{service}: stopping (pid {pid})...")
            t0 = time.monotonic()
            killed = stop_process(pid, grace)
            with contextlib.suppress(FileNotFoundError):
                cfg.pid_file(service).unlink()
            how = f"killed after {grace:.0f}s grace" if killed else "stopped"
            say(f"{service}: {how} in {time.monotonic() - t0:.1f}s")
    return 0


def reset(cfg: StackConfig, say: Callable[[str], None] = print) -> int:
    """`down`, then delete all data and logs; the downloaded Kafka jars are kept."""
    down(cfg, say)
    with stack_lock(cfg, say):
        targets = [p for p in cfg.kafka_dir.glob("*") if p.name != "libs"] if cfg.kafka_dir.exists() else []
        targets += [cfg.clickhouse_dir]
        for path in targets:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.exists():
                shutil.rmtree(path)
        say(f"stack: data and logs deleted under {cfg.stack_dir} (Kafka jars kept)")
    return 0


def statuses(cfg: StackConfig) -> list[ServiceStatus]:
    """Status of both services (read-only: takes no lock, starts nothing)."""
    return [service_status(cfg, s) for s in SERVICES]


def status(cfg: StackConfig, quiet: bool = False, say: Callable[[str], None] = print) -> int:
    """Print each service up/down with pid and ports. Returns 0 only when both are up."""
    result = statuses(cfg)
    if not quiet:
        for st in result:
            if st.pid and st.healthy:
                say(f"{st.name + ':':12}up    pid {st.pid:<7} {_where(cfg, st.name)}  {st.version or '?'}  [{st.detail}]")
            elif st.pid:
                say(f"{st.name + ':':12}DOWN  pid {st.pid:<7} not usable: {st.detail}")
            else:
                say(f"{st.name + ':':12}down  {st.detail}")
        say(f"{'stack dir:':12}{cfg.stack_dir}")
    return 0 if all(st.pid and st.healthy for st in result) else 1


def logs(cfg: StackConfig, service: str | None, n: int, follow: bool, say: Callable[[str], None] = print) -> int:
    """Print the last `n` lines of the service logs (both when `service` is None); `follow` = tail -f."""
    files: list[Path] = []
    for s in [service] if service else list(SERVICES):
        candidates = cfg.log_files(s)
        if s == "clickhouse":
            candidates = [candidates[2], candidates[1], candidates[0]]  # server log first
        files.extend(p for p in candidates if p.exists())
    if not files:
        say(f"no logs yet under {cfg.stack_dir}")
        return 1
    if follow:
        tail_bin = shutil.which("tail")
        if not tail_bin:
            raise StackError("`tail` not found for --follow")
        return subprocess.call([tail_bin, "-n", str(n), "-F", *map(str, files)])
    for path in files:
        say(f"==> {path} <==")
        for line in tail(path, n):
            say(line)
    return 0


# ---------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `up|down|status|logs|reset` subcommands to `parser` (shared with `defectstream stack`)."""
    sub = parser.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    p = sub.add_parser("up", help="start Kafka and ClickHouse (idempotent) and wait until both answer")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for both (default 90, env DEFECTSTREAM_STACK_TIMEOUT)")
    sub.add_parser("down", help="stop both services (data is kept)")
    p = sub.add_parser("status", help="each service up/down with pid and ports; exit 0 only if both are up")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only the exit status")
    p = sub.add_parser("logs", help="tail the service logs")
    p.add_argument("service", nargs="?", choices=SERVICES, help="one service (default both)")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines per log (default 40)")
    p.add_argument("-f", "--follow", action="store_true", help="keep following (tail -F)")
    sub.add_parser("reset", help="down, then delete all data and logs (keeps the downloaded jars)")


def _say(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed arguments; a StackError becomes a message on stderr and exit status 1."""
    try:
        cfg = StackConfig.from_env()
        if getattr(args, "timeout", None) is not None:
            cfg = dataclasses.replace(cfg, timeout_s=args.timeout)
        action = args.stack_command
        if action == "up":
            return up(cfg, _say)
        if action == "down":
            return down(cfg, _say)
        if action == "status":
            return status(cfg, quiet=args.quiet, say=_say)
        if action == "logs":
            return logs(cfg, args.service, args.lines, args.follow, _say)
        if action == "reset":
            return reset(cfg, _say)
        raise StackError(f"unknown action {action!r}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ops/stack",
        description="The local stack: Kafka (KRaft) and ClickHouse on loopback, data under .stack/.",
        epilog="Ports and the stack dir come from DEFECTSTREAM_STACK_* variables (see ops/stack.py).",
    )
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
