"""Migration files, their runner (on chdb), and literal SQL rendering."""
from __future__ import annotations

import pytest

from sinks.migrations import _ADD_COLUMN, MIGRATIONS_DIR, MigrationError, load_migrations, migrate, status
from sinks.sql import ChdbExecutor, quote, render, split_statements


def test_packaged_migrations_are_numbered_and_portable():
    ms = load_migrations()
    assert [m.version for m in ms] == list(range(1, len(ms) + 1))
    for m in ms:
        code = " ".join(m.statements)  # comments dropped: they may name what is avoided
        for banned in ("DateTime64", "Map(", "LowCardinality(", "WITH FILL", " OVER ("):
            assert banned not in code, (m.name, banned)  # not in 18.16
        for stmt in m.statements:
            # re-runnable after an interruption: IF NOT EXISTS, or one ADD COLUMN (the runner skips it when present)
            assert "IF NOT EXISTS" in stmt or _ADD_COLUMN.match(stmt), (m.name, stmt)


def test_split_statements_ignores_comments():
    assert split_statements("-- a; comment\nSELECT 1;\n\nSELECT 'x;'\n;\nSELECT 3") == ["SELECT 1", "SELECT 'x;'", "SELECT 3"]


def test_bad_file_names_and_duplicate_versions(tmp_path):
    (tmp_path / "1_bad.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="NNNN"):
        load_migrations(tmp_path)
    (tmp_path / "1_bad.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0001_b.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="version 1"):
        load_migrations(tmp_path)


def test_changed_migration_is_refused_and_new_ones_apply(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = MergeTree ORDER BY x;")
    ex = ChdbExecutor(str(tmp_path / "db"))
    try:
        assert [m.name for m in migrate(ex, d)] == ["t"]
        (d / "0002_u.sql").write_text("CREATE TABLE IF NOT EXISTS u (x UInt8) ENGINE = MergeTree ORDER BY x;")
        assert [m.name for m in migrate(ex, d)] == ["u"]
        (d / "0001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t (x UInt16) ENGINE = MergeTree ORDER BY x;")
        assert [s.state for s in status(ex, d)] == ["CHANGED", "applied"]
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrate(ex, d)
        assert migrate(ex, d, allow_changed=True) == []
    finally:
        ex.close()


def test_quote_and_render():
    assert quote("it's a \\ path") == "'it\\'s a \\\\ path'"
    assert quote(3) == "3" and quote(True) == "1" and quote(None) == "NULL" and quote(["a", 1]) == "['a', 1]"
    assert render("x = {a} AND y = {b}", {"a": "o'k", "b": 2.5}) == "x = 'o\\'k' AND y = 2.5"
    with pytest.raises(KeyError):
        render("{missing}", {"other": 1})
    with pytest.raises(ValueError):
        quote(float("nan"))


def test_migrations_dir_is_packaged_path():
    assert MIGRATIONS_DIR.name == "migrations" and MIGRATIONS_DIR.parent.name == "schemas"


def test_an_added_column_is_not_added_twice(tmp_path):
    """18.16 has no ADD COLUMN IF NOT EXISTS: a migration interrupted after its first ALTER, applied again,
    skips the column that is there and adds the one that is not."""
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_t.sql").write_text("CREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = MergeTree ORDER BY x;")
    (d / "0002_cols.sql").write_text("ALTER TABLE t ADD COLUMN a String DEFAULT '';\n"
                                     "ALTER TABLE t ADD COLUMN b String DEFAULT 'b';")
    ex = ChdbExecutor(str(tmp_path / "db"))
    try:
        migrate(ex, d)
        ex.query("ALTER TABLE t DROP COLUMN b")  # as if interrupted between the two statements
        ex.query("TRUNCATE TABLE schema_migrations")  # ... before it was recorded
        assert [m.name for m in migrate(ex, d)] == ["t", "cols"]
        cols = ex.query("SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 't' ORDER BY name")
        assert [c[0] for c in cols] == ["a", "b", "x"]
        assert migrate(ex, d) == []
    finally:
        ex.close()
