"""Every review-loop query (streams.review.queries) on chdb, the current ClickHouse engine in-process.

tests/integration/test_review_web.py runs the same catalog on the ClickHouse 18.16 server.
"""
from __future__ import annotations

import pytest

from sinks.migrations import migrate
from sinks.sql import ChdbExecutor
from streams.review import queries as q

T0 = 1_763_700_000_000


@pytest.fixture(scope="module")
def chdb_ex(tmp_path_factory):
    ex = ChdbExecutor(str(tmp_path_factory.mktemp("chdb-review")))
    migrate(ex)
    yield ex
    ex.close()


@pytest.mark.parametrize("name", sorted(q.query_catalog()))
def test_every_review_query_runs(chdb_ex, name):
    chdb_ex.query(q.query_catalog(T0, T0 + 60_000)[name])
