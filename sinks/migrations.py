"""Versioned ClickHouse migrations (`schemas/migrations/NNNN_name.sql`), recorded in `schema_migrations`.

A migration is applied once: its version, name, sha256 checksum and time are recorded after all of
its statements succeeded. Statements are written idempotently (`IF NOT EXISTS`), so a migration
interrupted half-way is simply applied again; `ALTER TABLE t ADD COLUMN c …` (ClickHouse 18.16 has no
`ADD COLUMN IF NOT EXISTS`) is skipped by the runner when `t` already has `c`. A recorded migration
whose file changed afterwards is an error (fix forward with a new file) unless `allow_changed=True`.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from sinks.sql import Executor, split_statements

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "schemas" / "migrations"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ADD_COLUMN = re.compile(r"^\s*ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(?!IF\s)(\w+)\s", re.IGNORECASE)

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at UInt64
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
""".strip()


class MigrationError(RuntimeError):
    """The migration files or the recorded history are inconsistent."""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclass(frozen=True)
class MigrationStatus:
    """A migration file and whether/when it was applied."""

    version: int
    name: str
    checksum: str
    applied_at: int | None  # epoch ms, None = pending
    applied_checksum: str | None

    @property
    def state(self) -> str:
        if self.applied_at is None:
            return "pending"
        return "applied" if self.applied_checksum == self.checksum else "CHANGED"


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """All migration files in version order.

    Raises:
        MigrationError: a badly named `.sql` file or two files with one version.
    """
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"version {version} used by {found[version].path.name} and {path.name}")
        found[version] = Migration(version, m.group(2), path, path.read_text())
    return [found[v] for v in sorted(found)]


def applied(ex: Executor) -> dict[int, tuple[str, int]]:
    """Recorded migrations: version → (checksum, applied_at ms) (first record of each version)."""
    ex.query(SCHEMA_MIGRATIONS_DDL)
    rows = ex.query(
        "SELECT version, argMin(checksum, applied_at), min(applied_at) FROM schema_migrations GROUP BY version"
    )
    return {int(v): (c, int(a)) for v, c, a in rows}


def status(ex: Executor, directory: Path = MIGRATIONS_DIR) -> list[MigrationStatus]:
    """Every migration file with its recorded state (creates `schema_migrations` if missing)."""
    done = applied(ex)
    out = []
    for m in load_migrations(directory):
        rec = done.get(m.version)
        out.append(MigrationStatus(m.version, m.name, m.checksum, rec[1] if rec else None, rec[0] if rec else None))
    return out


def _already_added(ex: Executor, stmt: str) -> bool:
    """Whether `stmt` is a single `ALTER TABLE t ADD COLUMN c …` whose column `t` already has (a re-run)."""
    m = _ADD_COLUMN.match(stmt)
    if m is None or len(re.findall(r"\bADD\s+COLUMN\b", stmt, re.IGNORECASE)) > 1:
        return False
    table, column = m.groups()
    rows = ex.query("SELECT count() FROM system.columns WHERE database = currentDatabase() "
                    f"AND table = '{table}' AND name = '{column}'")
    return bool(rows and rows[0][0])


def migrate(ex: Executor, directory: Path = MIGRATIONS_DIR, *, allow_changed: bool = False) -> list[Migration]:
    """Apply pending migrations in order, in the executor's current database.

    Idempotent: running it again applies nothing and leaves the same state.

    Returns:
        The migrations applied by this call.
    Raises:
        MigrationError: an applied migration's file changed (unless `allow_changed`).
        Any ClickHouse error of a statement; earlier migrations stay recorded, the failing one is not.
    """
    done = applied(ex)
    ran = []
    for m in load_migrations(directory):
        if m.version in done:
            if done[m.version][0] != m.checksum and not allow_changed:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} changed after it was applied "
                    "(add a new migration instead of editing an applied one)"
                )
            continue
        for stmt in m.statements:
            if not _already_added(ex, stmt):
                ex.query(stmt)
        now = int(time.time() * 1000)
        # Through insert(): clickhouse-driver cannot run an INSERT with inline VALUES via query().
        ex.insert("schema_migrations", ("version", "name", "checksum", "applied_at"), [(m.version, m.name, m.checksum, now)])
        ran.append(m)
    return ran
