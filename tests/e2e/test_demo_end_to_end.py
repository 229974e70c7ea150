"""`defectstream demo` end to end: simulator → Kafka → worker → sink → ClickHouse → report and monitor.

A simulated day (three shifts) with a defect-rate spike on the last camera in the last hour:
- every simulated part is stored once, per-shift inspected counts equal a hand count of the
  simulator's ground truth, defective counts equal a hand count of the verdicts on `parts`;
- the monitor raises exactly one alert for the spiking camera, none for the others, and the
  webhook receives it;
- redelivering every event (a second sink group re-reads the topics) changes no count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from streams.commands.demo import demo_env
from streams.settings import settings_with_env

ROOT = Path(__file__).resolve().parents[2]
CAMERAS = 3


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", _Hook.received
    server.shutdown()
    server.server_close()


def _shift_counts(summary: dict, settings) -> tuple[Counter, Counter]:
    """Ground truth by hand: parts and parts with a defect per shift start."""
    from streams.shifts import shift_at
    from streams.sim.simulator import read_ground_truth

    parts, defective = Counter(), Counter()
    for path in sorted(Path(summary["out"]).glob("ground-truth-*.jsonl")):
        for gt in read_ground_truth(path):
            start = shift_at(gt.capture_ts[0], settings.plant).start_ms
            parts[start] += 1
            defective[start] += bool(gt.defects)
    return parts, defective


def _verdicts_on_topic(settings) -> Counter:
    """Hand count of FAIL verdicts per shift start, straight from the `parts` topic."""
    from kafka import KafkaConsumer

    from schemas.events import PartInspected

    codec = PartInspected.codec()
    consumer = KafkaConsumer(settings.kafka.topics.parts, bootstrap_servers=settings.kafka.bootstrap_list,
                             group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    by_part = {}
    for m in consumer:
        rec = codec.decode(m.value)
        by_part[rec["event_id"]] = rec
    consumer.close()
    return Counter(r["shift_start"] for r in by_part.values() if r["verdict"] == "FAIL")


def _report_rows(settings, summary):
    from sinks.sql import DriverExecutor
    from streams.spc.report import ReportFilters, make_report

    ex = DriverExecutor.connect(settings.clickhouse, database=summary["database"])
    try:
        rep = make_report(ex, settings.plant, "shift", ReportFilters(summary["start_ms"], summary["end_ms"]), kind="p")
        return {row.start_ms: (row.inspected, row.defective) for row in rep.rows}
    finally:
        ex.close()


def test_demo_day_with_a_spike(stack_up, webhook, tmp_path):
    url, received = webhook
    tag = uuid.uuid4().hex[:8]
    prefix, database = f"e2e-{tag}", f"e2e_{tag}"
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "streams.cli", "demo", "--cameras", str(CAMERAS), "--parts-per-camera", "12",
           "--spike-parts-per-camera", "10", "--out", str(out), "--prefix", prefix, "--database", database,
           "--webhook", url, "--summary", str(tmp_path / "summary.json"), "--timeout", "420"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["out"] = str(out)
    settings = settings_with_env(demo_env(prefix, database, out / "worker-data"))
    try:
        assert summary["parts_stored"] == summary["parts_simulated"] == CAMERAS * 22

        # exactly one alert for the spiking camera, none for the others; the webhook got it
        spike_cam = f"cam-{CAMERAS}"
        per_camera = [a for a in summary["alerts"] if a["camera_id"] is not None]
        assert [(a["camera_id"], a["kind"]) for a in per_camera] == [(spike_cam, "SPIKE")], summary["alerts"]
        hooked = [a for a in received if a["camera_id"] is not None]
        assert [(a["camera_id"], a["kind"]) for a in hooked] == [(spike_cam, "SPIKE")]

        # per-shift counts: inspected = ground truth by hand, defective = verdicts on the topic by hand
        gt_parts, gt_defective = _shift_counts(summary, settings)
        fails = _verdicts_on_topic(settings)
        rows = _report_rows(settings, summary)
        assert len(rows) >= 3, rows  # the simulated day spans at least three shifts
        assert {s: n for s, (n, _d) in rows.items()} == dict(gt_parts)
        assert {s: d for s, (_n, d) in rows.items() if d} == {s: n for s, n in fails.items() if n}
        total_gt = sum(gt_defective.values()) / sum(gt_parts.values())
        total_reported = sum(d for _n, d in rows.values()) / sum(n for n, _d in rows.values())
        # Model accuracy is measured by `defectstream score` / `evaluate`; here it is only shown.
        print(f"defective parts: ground truth {total_gt:.3f}, reported {total_reported:.3f}")

        # redelivery: a second sink group re-reads every event; no count changes
        env = {**os.environ, **demo_env(prefix, database, out / "worker-data"),
               "DEFECTSTREAM_SINK__GROUP_ID": f"{prefix}-redeliver"}
        # --until-idle counts from start, group join included: on a loaded 2-core box joining can take > 5 s
        again = subprocess.run([sys.executable, "-m", "streams.cli", "sink", "--until-idle", "30"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "rows written 0" not in again.stdout  # it really wrote every event a second time
        assert _report_rows(settings, summary) == rows
    finally:
        from sinks.sql import DriverExecutor

        admin = DriverExecutor.connect(settings.clickhouse, database="default")
        admin.query(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()
        from kafka.admin import KafkaAdminClient

        ka = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_list)
        names = [t for t in ka.list_topics() if t.startswith(prefix)]
        if names:
            ka.delete_topics(names)
        ka.close()
