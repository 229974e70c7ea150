"""Literal SQL rendering and the two ClickHouse executors: a server (clickhouse-driver) and chdb.

Every query of defectstream is rendered to one literal SQL string (values quoted here, not by a
driver), so exactly the same text runs on the ClickHouse 18.16 test server, a current server and
the in-process chdb engine the unit tests use to check the current dialect.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Iterable, Protocol, Sequence

_PARAM = re.compile(r"\{(\w+)\}")


def quote(value: Any) -> str:
    """One Python value as a ClickHouse literal (str, int, float, bool, date, None, lists)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot write {value!r} as a ClickHouse literal")
        return repr(value)
    if isinstance(value, dt.datetime):
        raise TypeError("pass timestamps as epoch milliseconds (int), not datetime")
    if isinstance(value, dt.date):
        return f"toDate('{value.isoformat()}')"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(quote(v) for v in value) + "]"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    s = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def render(sql: str, params: dict[str, Any] | None = None) -> str:
    """Replace `{name}` placeholders with quoted literals; a missing name raises KeyError."""
    if not params:
        return sql
    return _PARAM.sub(lambda m: quote(params[m.group(1)]), sql)


def split_statements(text: str) -> list[str]:
    """Statements of a migration file: `--` comments dropped, split on `;` at the end of a line."""
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    out, cur = [], []
    for ln in lines:
        cur.append(ln)
        if ln.rstrip().endswith(";"):
            stmt = "\n".join(cur).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            cur = []
    tail = "\n".join(cur).strip()
    if tail:
        out.append(tail)
    return out


class Executor(Protocol):
    """What the migrations, the report and the monitor need from ClickHouse."""

    def query(self, sql: str) -> list[tuple]:
        """Run one statement; rows as tuples (empty for DDL/INSERT)."""

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Insert rows; returns how many were written."""


class DriverExecutor:
    """A ClickHouse server over the native protocol (clickhouse-driver)."""

    def __init__(self, client: Any):
        self.client = client

    @classmethod
    def connect(cls, settings: Any, *, database: str | None = None, **kw: Any) -> "DriverExecutor":
        """Build from `ClickHouseSettings` (database overridable, e.g. '' for none)."""
        from clickhouse_driver import Client

        return cls(
            Client(
                host=settings.host,
                port=settings.port,
                database=settings.database if database is None else database,
                user=settings.user,
                password=settings.password.get_secret_value(),
                secure=settings.secure,
                connect_timeout=settings.connect_timeout_s,
                send_receive_timeout=kw.pop("send_receive_timeout", 30),
                **kw,
            )
        )

    def query(self, sql: str) -> list[tuple]:
        return [tuple(r) for r in self.client.execute(sql)]

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        rows = [tuple(r) for r in rows]
        if not rows:
            return 0
        self.client.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES", rows)
        return len(rows)

    def close(self) -> None:
        self.client.disconnect()


_INT_TYPES = re.compile(r"^(Nullable\()?U?Int(64|128|256)")


class ChdbExecutor:
    """The in-process current ClickHouse (chdb), used to check SQL against the current dialect."""

    def __init__(self, path: str):
        try:
            from chdb import session
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("chdb is needed for the in-process ClickHouse: pip install 'defectstream[test]'") from exc
        self.session = session.Session(path)

    def query(self, sql: str) -> list[tuple]:
        res = self.session.query(sql, "JSONCompact")
        text = res.bytes().decode() if hasattr(res, "bytes") else str(res)
        if not text.strip():
            return []
        doc = json.loads(text)
        conv = []
        for col in doc["meta"]:
            if _INT_TYPES.match(col["type"]):
                conv.append(lambda v: None if v is None else int(v))
            elif "Float" in col["type"]:
                conv.append(lambda v: None if v is None else float(v))
            else:
                conv.append(lambda v: v)
        return [tuple(f(v) for f, v in zip(conv, row)) for row in doc["data"]]

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        rows = list(rows)
        if not rows:
            return 0
        values = ", ".join("(" + ", ".join(quote(v) for v in r) + ")" for r in rows)
        self.session.query(f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}")
        return len(rows)

    def close(self) -> None:
        self.session.close()
