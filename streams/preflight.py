"""Start-up checks and the messages for misconfiguration, so a wrong setting reads as one line
that names the setting, never as a traceback from deep inside a client library.

Two parts:
- `explain(exc)` turns the errors a wrong configuration raises (invalid settings, an unreachable
  or refusing Kafka broker or ClickHouse server, a missing checkpoint) into that one line; the
  CLI (`streams.cli.main`) prints it as ``error: …`` and exits with 2.
- `check_kafka`, `check_clickhouse`, `check_checkpoint` are run by the long-running commands
  (worker, sink) before they start, so a worker pointed at the wrong broker says so at once
  instead of retrying in the background, and one with a missing checkpoint says so before its
  first frame rather than at it.
"""
from __future__ import annotations

import gc
import os
import socket
import warnings
from typing import Any

ENV = "DEFECTSTREAM_"


class PreflightError(RuntimeError):
    """A setting or a service the command needs is wrong or unreachable; the message says which."""


def _env_name(loc: tuple[Any, ...]) -> str:
    """`("plant", "shifts", 0, "end")` → ``DEFECTSTREAM_PLANT__SHIFTS`` (list items live in one variable)."""
    parts = []
    for p in loc:
        if isinstance(p, int):
            break
        parts.append(str(p).upper())
    return ENV + "__".join(parts)


def explain_settings(exc: Any) -> str:
    """One line per invalid setting of a pydantic `ValidationError` raised by `Settings()`."""
    lines = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        where = ".".join(str(p) for p in loc) or "settings"
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"{where} ({_env_name(loc)}): {msg}")
    if any(tuple(err.get("loc", ()))[:2] == ("plant", "shifts") for err in exc.errors()):
        lines.append("see `defectstream config --help` for the shift format")
    return "invalid settings: " + "; ".join(lines)


def _shifts_hint() -> str:
    from streams.settings import SHIFTS_FORMAT

    return "format: " + SHIFTS_FORMAT


def _json_expected(name: str) -> bool:
    """Whether the DEFECTSTREAM_* variable `name` holds a structured setting (a list, a dict, a model): JSON."""
    from pydantic import BaseModel

    from streams.settings import Settings

    cls: Any = Settings
    for part in name[len(ENV):].lower().split("__"):
        fields = getattr(cls, "model_fields", {})
        if part not in fields:
            return False
        cls = fields[part].annotation
    return (isinstance(cls, type) and issubclass(cls, BaseModel)) or getattr(cls, "__origin__", None) in (list, dict)


def explain_unparsable(exc: BaseException) -> str:
    """One line for pydantic-settings' `SettingsError` (a structured variable whose value is not JSON)."""
    import json

    bad = []
    for name, value in sorted(os.environ.items()):
        if name.upper().startswith(ENV) and _json_expected(name.upper()):
            try:
                json.loads(value)
            except ValueError:
                bad.append(name)
    if not bad:
        return f"invalid settings: {exc}"
    hint = f"; {_shifts_hint()}" if f"{ENV}PLANT__SHIFTS" in (b.upper() for b in bad) else ""
    return f"invalid settings: {', '.join(bad)} must be JSON{hint}"


def _kafka_hint() -> str:
    servers = os.environ.get(f"{ENV}KAFKA__BOOTSTRAP_SERVERS")
    where = f" {servers}" if servers else ""
    return (f"cannot reach the Kafka broker{where}: check {ENV}KAFKA__BOOTSTRAP_SERVERS and "
            f"{ENV}KAFKA__SECURITY_PROTOCOL / SASL settings, and that the broker runs (locally: `ops/stack status`)")


def _clickhouse_hint(detail: str) -> str:
    return (f"cannot use ClickHouse ({detail}): check {ENV}CLICKHOUSE__HOST, __PORT (native protocol), __USER, "
            f"__PASSWORD and __DATABASE, and that the server runs (locally: `ops/stack status`)")


def explain(exc: BaseException) -> str | None:
    """The user-facing line for a misconfiguration error, or None when `exc` is not one."""
    name = type(exc).__name__
    module = type(exc).__module__ or ""
    if isinstance(exc, PreflightError):
        return str(exc)
    if name == "ValidationError" and module.startswith("pydantic"):
        return explain_settings(exc)
    if name == "SettingsError" and module.startswith("pydantic_settings"):
        return explain_unparsable(exc)
    if module.startswith("clickhouse_driver"):
        code = getattr(exc, "code", None)
        if name in ("NetworkError", "SocketTimeoutError") or code in (209, 210):
            return _clickhouse_hint(f"{getattr(exc, 'message', exc)}".strip())
        if code in (192, 193, 516):  # unknown user, wrong password, authentication failed
            return _clickhouse_hint("authentication failed: wrong user or password")
        if code == 81:  # unknown database
            return _clickhouse_hint("the database does not exist: run `defectstream db migrate`")
        return None
    if module.startswith(("kafka", "aiokafka")) and name in (
            "NoBrokersAvailable", "KafkaConnectionError", "KafkaTimeoutError", "NodeNotReadyError",
            "MetadataEmptyBrokerList"):
        return _kafka_hint()
    return None


def check_kafka(kafka: Any, timeout_s: float = 10.0) -> None:
    """Raise `PreflightError` unless a broker of `kafka` answers a metadata request within `timeout_s`."""
    problem = _kafka_problem(kafka, timeout_s)
    # kafka-python leaves the sockets of refused connects to the garbage collector: collect them
    # here (the failed client is unreferenced by now), quietly, instead of as ResourceWarnings
    # wherever the collector happens to run next
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    if problem:
        raise PreflightError(problem)


def _kafka_problem(kafka: Any, timeout_s: float) -> str | None:
    from streams.kafka import clients

    errors = clients.import_kafka("kafka.errors")
    unreachable = (errors.KafkaConnectionError, errors.KafkaTimeoutError,
                   getattr(errors, "NoBrokersAvailable", OSError), getattr(errors, "MetadataEmptyBrokerList", OSError))
    # a plain TCP connect first: kafka-python leaves a failed client's network thread and sockets behind
    if not any(_tcp_open(server, timeout_s) for server in kafka.bootstrap_list):
        return (f"cannot reach the Kafka broker {kafka.bootstrap_servers} within {timeout_s:.0f} s: check "
                f"{ENV}KAFKA__BOOTSTRAP_SERVERS, and that the broker runs (locally: `ops/stack status`)")
    try:
        adm = clients.admin(kafka, client_id="defectstream-preflight", request_timeout_ms=int(timeout_s * 1000),
                            bootstrap_timeout_ms=int(timeout_s * 1000))
    except unreachable:
        return (f"cannot reach the Kafka broker {kafka.bootstrap_servers} ({kafka.security_protocol}) within "
                f"{timeout_s:.0f} s: check {ENV}KAFKA__BOOTSTRAP_SERVERS and the security settings, and that the "
                "broker runs (locally: `ops/stack status`)")
    except errors.KafkaError as e:
        return (f"the Kafka broker {kafka.bootstrap_servers} refused the connection ({type(e).__name__}: {e}): "
                f"check {ENV}KAFKA__SECURITY_PROTOCOL, {ENV}KAFKA__SASL_MECHANISM, __SASL_USERNAME and "
                "__SASL_PASSWORD")
    try:
        adm.list_topics()
    except errors.KafkaError as e:
        return (f"the Kafka broker {kafka.bootstrap_servers} does not answer metadata requests "
                f"({type(e).__name__}: {e})")
    finally:
        adm.close()
    return None


def _tcp_open(server: str, timeout_s: float) -> bool:
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port or 9092)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def check_clickhouse(clickhouse: Any, *, database: str | None = None) -> None:
    """Raise `PreflightError` unless ClickHouse answers ``SELECT 1`` with the configured user and database
    (`database=""` checks the server and the login only, for commands that create the database)."""
    from sinks.sql import DriverExecutor

    ex = DriverExecutor.connect(clickhouse, database=database,
                                send_receive_timeout=max(5, int(clickhouse.connect_timeout_s)))
    try:
        ex.query("SELECT 1")
    except Exception as e:  # noqa: BLE001 - re-raised as a user message when it is a known misconfiguration
        msg = explain(e)
        if msg is None:
            raise
        raise PreflightError(msg.replace("cannot use ClickHouse (",
                                         f"cannot use ClickHouse at {clickhouse.host}:{clickhouse.port} (", 1)) from e
    finally:
        ex.close()


def check_checkpoint(model: Any) -> None:
    """Raise `PreflightError` unless the configured model directory/checkpoint exists and names a model family."""
    from models.core.checkpoints import CheckpointError
    from models.loading import model_files

    try:
        model_files(model.path)
    except (CheckpointError, FileNotFoundError, OSError) as e:
        raise PreflightError(f"no usable model at {ENV}MODEL__PATH={model.path!r}: {e} "
                             "(train one with `defectstream train …`, or list them with `defectstream models list`)"
                             ) from e
