"""streams.metrics (definitions, endpoint, scrape parser) and `defectstream status` against live endpoints."""
from __future__ import annotations

import json
import re
import socket

import pytest
from prometheus_client import generate_latest

from streams.cli import main
from streams.commands.status import format_table, sink_status, worker_status
from streams.metrics import ScrapeError, SinkMetrics, WorkerMetrics, parse, scrape, serve, total
from streams.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def endpoints():
    """A worker's and a sink's metrics served on free ports; yields (worker, sink, worker_url, sink_url)."""
    w, s = WorkerMetrics(), SinkMetrics()
    servers, urls = [], []
    for reg in (w.registry, s.registry):
        port = _free_port()
        servers.append(serve(reg, port, addr="127.0.0.1"))
        urls.append(f"http://127.0.0.1:{port}/metrics")
    assert all(servers)
    yield w, s, urls[0], urls[1]
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_every_metric_is_prefixed_documented_and_per_instance():
    for cls in (WorkerMetrics, SinkMetrics):
        a, b = cls(), cls()  # a second instance must not collide (no global registry)
        fams = list(a.registry.collect())
        assert fams
        for fam in fams:
            assert fam.name.startswith("defectstream_"), fam.name
            assert len(fam.documentation) > 15, fam.name
        assert a.registry is not b.registry
    w = WorkerMetrics()
    w.frames.inc(3)
    assert total(parse(generate_latest(WorkerMetrics().registry).decode()), "defectstream_frames_total") == 0


def test_default_ports_do_not_clash_with_the_stack_or_faust():
    s = Settings()
    taken = {19092, 19000, 18123, s.worker.web_port}
    assert s.worker.metrics_port not in taken and s.sink.metrics_port not in taken
    assert s.worker.metrics_port != s.sink.metrics_port


def test_lag_series_of_revoked_partitions_disappear():
    w = WorkerMetrics()
    w.set_lag({("frames", 0): 5, ("frames", 1): 2})
    w.set_lag({("frames", 1): 7})
    samples = parse(generate_latest(w.registry).decode())
    assert total(samples, "defectstream_consumer_lag", partition="0") is None
    assert total(samples, "defectstream_consumer_lag", partition="1") == 7


def test_serve_port_zero_or_taken_returns_none_instead_of_raising():
    assert serve(WorkerMetrics().registry, 0) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert serve(WorkerMetrics().registry, s.getsockname()[1], addr="127.0.0.1") is None


def test_scrape_of_an_unreachable_endpoint_says_so():
    with pytest.raises(ScrapeError, match="unreachable"):
        scrape(f"http://127.0.0.1:{_free_port()}/metrics", timeout_s=1)


def test_status_summaries_from_two_scrapes():
    w = WorkerMetrics()
    w.frames.inc(10)
    w.batch_seconds.labels(stage="batch").observe(0.5)
    before = parse(generate_latest(w.registry).decode())
    w.frames.inc(40)
    w.batch_seconds.labels(stage="batch").observe(0.1)
    w.batch_seconds.labels(stage="batch").observe(0.3)
    w.deadletters.labels(reason="late_frame").inc(2)
    w.open_parts.set(3)
    w.set_lag({("frames", 1): 12, ("frames", 0): 0})
    st = worker_status(parse(generate_latest(w.registry).decode()), before, interval_s=2.0)
    assert st.frames_total == 50 and st.frames_per_s == pytest.approx(20.0)
    assert st.batch_mean_s == pytest.approx(0.2)  # the two batches of the interval, not the earlier one
    assert st.deadletters == {"late_frame": 2} and st.open_parts == 3
    assert list(st.lag.items()) == [("frames[0]", 0), ("frames[1]", 12)]
    assert worker_status(before).frames_per_s is None  # one scrape: no rate

    s = SinkMetrics()
    s.queue.set(17)
    s.rows_written.inc(100)
    s.holding.set(1)
    ss = sink_status(parse(generate_latest(s.registry).decode()))
    assert ss.queue_rows == 17 and ss.rows_written == 100 and ss.holding
    text = format_table(st, ss, {})
    assert "frames[1] 12" in text and "20.0 frames/s" in text and "late_frame 2" in text and "HOLDING" in text


def test_status_command_prints_both_processes(endpoints, capsys):
    w, s, wurl, surl = endpoints
    w.frames.inc(5)
    w.deadletters.labels(reason="decode_error").inc()
    w.set_lag({("frames", 0): 4})
    s.queue.set(9)
    s.deadletters.labels(reason="sink_rejected").inc(2)
    rc = main(["status", "--worker-url", wurl, "--sink-url", surl, "--interval", "0", "--output", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert doc["worker"]["lag"] == {"frames[0]": 4} and doc["worker"]["deadletters"] == {"decode_error": 1}
    assert doc["worker"]["frames_total"] == 5 and doc["sink"]["queue_rows"] == 9
    assert doc["sink"]["deadletters"] == {"sink_rejected": 2}
    rc = main(["status", "--worker-url", wurl, "--sink-url", surl, "--interval", "0.2"])
    out = capsys.readouterr().out
    assert rc == 0 and "worker open parts" in out and re.search(r"sink queue \(rows\) +9\n", out)


def test_status_command_with_an_endpoint_down_exits_nonzero_without_traceback(endpoints, capsys):
    w, _s, wurl, _surl = endpoints
    down = f"http://127.0.0.1:{_free_port()}/metrics"
    rc = main(["status", "--worker-url", wurl, "--sink-url", down, "--interval", "0"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "UNREACHABLE" in captured.out and "worker frames/s" in captured.out
    assert f"error: {down} is unreachable" in captured.err and "Traceback" not in captured.err


def test_status_shows_promotions_not_loaded_and_bad_cameras_records():
    w = WorkerMetrics()
    w.control_rejected.labels(kind="promotion").inc(2)
    w.model_load_failures.labels(model_version="v2").inc(3)
    w.promotions_not_loaded.set(1)
    st = worker_status(parse(generate_latest(w.registry).decode()))
    assert st.control_rejected == {"promotion": 2} and st.model_load_failures == {"v2": 3}
    assert st.promotions_not_loaded == 1
    text = format_table(st, None, {})
    assert "1 NOT LOADED" in text and "v2 3" in text and "promotion 2" in text


def test_metrics_endpoints_bind_loopback_unless_configured(monkeypatch):
    """Issue 17 item 11: the worker's and the sink's endpoints listened on every address, on the local
    stack too. Loopback by default; DEFECTSTREAM_WORKER__METRICS_ADDR / DEFECTSTREAM_SINK__METRICS_ADDR widen it."""
    import sinks.metrics
    import sinks.runner
    from streams.settings import settings_with_env

    s = Settings()
    assert s.worker.metrics_addr == "127.0.0.1" and s.sink.metrics_addr == "127.0.0.1"
    wide = settings_with_env({"DEFECTSTREAM_WORKER__METRICS_ADDR": "0.0.0.0", "DEFECTSTREAM_SINK__METRICS_ADDR": "::"})
    assert (wide.worker.metrics_addr, wide.sink.metrics_addr) == ("0.0.0.0", "::")
    port = _free_port()
    server = serve(WorkerMetrics().registry, port)  # the default address
    try:
        assert server is not None and server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
    bound: list[tuple] = []
    monkeypatch.setattr(sinks.metrics, "serve", lambda reg, port, addr="?": bound.append((port, addr)))
    monkeypatch.setattr(sinks.runner.SinkRunner, "run", lambda self, **kw: None)
    sinks.runner.run_sink(s.clickhouse, s.sink, s.kafka.topics, timezone="UTC", consumer_factory=None,
                          producer_factory=None)
    assert bound == [(s.sink.metrics_port, "127.0.0.1")]
