"""The SPC report cache of the web view: fresh entries as they are, stale ones served while one background
recompute runs, too old ones recomputed in the request."""
from __future__ import annotations

import threading
import time

from streams.review.web.app import _ReportCache


class Calls:
    def __init__(self, delay_s: float = 0.0):
        self.n, self.delay_s, self.closed, self.threads = 0, delay_s, 0, set()

    def compute(self, e) -> dict:
        self.n += 1
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return {"n": self.n, "by": e}

    def connect(self):
        calls = self

        class Ex:
            def close(self):
                calls.closed += 1
        return Ex()


def _wait(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cond()


def test_a_report_younger_than_refresh_or_with_no_part_since_is_served_as_it_is():
    c, cache = Calls(), _ReportCache(refresh_s=0.05, max_stale_s=120)
    assert cache.get("k", (1, 10), c.compute, "req", c.connect)["n"] == 1
    assert cache.get("k", (2, 11), c.compute, "req", c.connect)["n"] == 1  # parts arrived, but it is fresh
    time.sleep(0.08)
    assert cache.get("k", (1, 10), c.compute, "req", c.connect)["n"] == 1  # older, but nothing new was stored
    time.sleep(0.05)
    assert c.n == 1


def test_new_parts_serve_the_kept_report_and_recompute_it_once_in_the_background():
    c, cache = Calls(delay_s=0.2), _ReportCache(refresh_s=0.05, max_stale_s=120)
    cache.get("k", (1, 10), c.compute, "req", c.connect)
    time.sleep(0.08)
    t0 = time.monotonic()
    got = [cache.get("k", (2, 11), c.compute, "req", c.connect)["n"] for _ in range(5)]
    assert got == [1] * 5 and time.monotonic() - t0 < 0.15  # no request waited for the recompute
    _wait(lambda: c.n == 2 and c.closed == 1)
    assert "spc-report-refresh" in c.threads
    assert cache.get("k", (2, 11), c.compute, "req", c.connect)["n"] == 2  # fresh again: as it is
    assert c.n == 2


def test_a_report_older_than_max_stale_is_computed_in_the_request():
    c, cache = Calls(), _ReportCache(refresh_s=0.01, max_stale_s=0.05)
    cache.get("k", (1, 10), c.compute, "req", c.connect)
    time.sleep(0.08)
    assert cache.get("k", (1, 10), c.compute, "req", c.connect) == {"n": 2, "by": "req"}


def test_a_failed_background_recompute_keeps_the_old_report_and_retries():
    c, cache = Calls(), _ReportCache(refresh_s=0.0, max_stale_s=60)
    cache.get("k", 1, c.compute, "req", c.connect)

    def boom(e):
        raise RuntimeError("ClickHouse went away")

    assert cache.get("k", 2, boom, "req", c.connect)["n"] == 1
    _wait(lambda: not cache._refreshing)
    assert cache.get("k", 2, c.compute, "req", c.connect)["n"] == 1
    _wait(lambda: c.n == 2)


def test_at_most_size_query_strings_are_kept_least_recently_used_out():
    c, cache = Calls(), _ReportCache(refresh_s=60, max_stale_s=120, size=2)
    for k in ("a", "b"):
        cache.get(k, 1, c.compute, "req", c.connect)
    cache.get("a", 1, c.compute, "req", c.connect)  # a used again: b is the oldest
    cache.get("c", 1, c.compute, "req", c.connect)
    assert set(cache._entries) == {"a", "c"}
