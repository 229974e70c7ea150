"""Grafana provisioning (docker-compose): files parse, use the read-only datasource, and their SQL runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from sinks.migrations import migrate
from sinks.sql import ChdbExecutor
from sinks.testing import make_alert, sample_events, seed

GRAFANA = Path(__file__).resolve().parents[3] / "ops" / "grafana"
ALL_DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def _uses(path: Path, ds_type: str) -> bool:
    return any(p.get("datasource", {}).get("type") == ds_type for p in json.loads(path.read_text())["panels"])


# SPC dashboards read ClickHouse; the pipeline-health dashboard reads Prometheus (streams/metrics.py).
DASHBOARDS = [p for p in ALL_DASHBOARDS if _uses(p, "grafana-clickhouse-datasource")]
PROM_DASHBOARDS = [p for p in ALL_DASHBOARDS if _uses(p, "prometheus")]


def datasource() -> dict:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    assert doc["apiVersion"] == 1 and len(doc["datasources"]) == 1
    return doc["datasources"][0]


def test_datasource_is_the_clickhouse_plugin_as_reader():
    ds = datasource()
    assert ds["type"] == "grafana-clickhouse-datasource"
    assert ds["jsonData"]["username"] == "reader"  # readonly=1 in ops/clickhouse/users.xml
    assert ds["jsonData"]["protocol"] in ("native", "http") and ds["jsonData"]["host"] == "clickhouse"
    assert ds["jsonData"]["defaultDatabase"] == "defectstream"
    assert "password" in ds["secureJsonData"] and ds["editable"] is False


def test_dashboard_provider_points_at_the_mounted_folder():
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "defectstream.yaml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert DASHBOARDS


def targets(dash: dict):
    for panel in dash["panels"]:
        for t in panel["targets"]:
            yield panel, t
    for var in dash["templating"]["list"]:
        yield var, {"datasource": var["datasource"], "rawSql": var["query"]}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_uses_the_provisioned_datasource(path):
    dash = json.loads(path.read_text())
    uid = datasource()["uid"]
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    assert "shift" in titles and "pareto" in titles and "camera" in titles
    for owner, t in targets(dash):
        assert t["datasource"] == {"type": "grafana-clickhouse-datasource", "uid": uid}, owner.get("title")
        assert t["rawSql"].strip()


def grafana_to_sql(sql: str) -> str:
    """Expand the Grafana macros/variables the dashboard uses into plain SQL."""
    sql = re.sub(r"\$__timeFilter\((\w+)\)", r"\1 >= toDateTime(0)", sql)
    return sql.replace("${line:singlequote}", "'line-1'").replace("${camera:singlequote}", "'cam-1', 'cam-2'")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_sql_runs_on_current_clickhouse(path, tmp_path):
    ex = ChdbExecutor(str(tmp_path / "chdb"))
    try:
        migrate(ex)
        seed(ex, list(sample_events(1_763_700_000_000, 200, p=0.2)) + [make_alert(1_763_700_000_000)])
        for owner, t in targets(json.loads(path.read_text())):
            sql = grafana_to_sql(t["rawSql"])
            assert "$" not in sql, sql
            rows = ex.query(sql)
            assert rows, owner.get("title") or owner.get("name")
    finally:
        ex.close()


def test_every_dashboard_is_either_clickhouse_or_prometheus():
    assert set(DASHBOARDS) | set(PROM_DASHBOARDS) == set(ALL_DASHBOARDS)
    assert not set(DASHBOARDS) & set(PROM_DASHBOARDS)
    assert DASHBOARDS and PROM_DASHBOARDS


def _defined_series() -> set[str]:
    """Names of every series the worker's and the sink's registries expose (with _total/_bucket/... suffixes)."""
    from streams.metrics import SinkMetrics, WorkerMetrics

    names = set()
    for m in (WorkerMetrics(), SinkMetrics()):
        for fam in m.registry.collect():
            names.add(fam.name)
            names |= {f"{fam.name}{sfx}" for sfx in ("_total", "_bucket", "_sum", "_count")}
    return names


def test_pipeline_dashboard_queries_only_defined_metrics_through_the_prometheus_datasource():
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (ds,) = doc["datasources"]
    defined = _defined_series()
    used: set[str] = set()
    for path in PROM_DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for t in panel["targets"]:
                assert t["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, panel["title"]
                names = set(re.findall(r"\bdefectstream_\w+", t["expr"]))
                assert names and names <= defined, (panel["title"], names - defined)
                used |= names
    titles = " ".join(p["title"].lower() for path in PROM_DASHBOARDS for p in json.loads(path.read_text())["panels"])
    for what in ("lag", "frames", "dead letters", "latency", "open parts", "sink queue"):
        assert what in titles, what
    # every metric of the issue has a panel
    for metric in ("defectstream_consumer_lag", "defectstream_frames_total", "defectstream_deadletters_total",
                   "defectstream_batch_seconds_bucket", "defectstream_open_parts", "defectstream_sink_queue_rows",
                   "defectstream_sink_rows_written_total", "defectstream_sink_rows_rejected_total"):
        assert metric in used, metric


def test_dashboard_pareto_counts_a_reprocessed_part_once(tmp_path):
    """A part closed twice under other track ids (finding 6 of issue 12): the panel counts its latest verdict's set."""
    from sinks.testing import make_defect, make_part, write_through_sink

    (dash,) = [json.loads(p.read_text()) for p in DASHBOARDS if "defectstream-spc" in p.name]
    (pareto,) = [t["rawSql"] for panel, t in targets(dash) if "pareto" in panel.get("title", "").lower()]
    ex = ChdbExecutor(str(tmp_path / "chdb"))
    try:
        migrate(ex)
        t0 = 1_763_700_000_000
        first = make_part(1, t0, fail=True, counts={"crack": 1, "scratch": 1})
        write_through_sink(ex, [first, make_defect(first, 0, "crack"), make_defect(first, 1, "scratch")],
                           ingested_at_s=1_000_000.0)
        write_through_sink(ex, [first, make_defect(first, 0, "crack"), make_defect(first, 2, "scratch")],
                           ingested_at_s=1_000_050.0)
        assert dict(ex.query(grafana_to_sql(pareto))) == {"crack": 1, "scratch": 1}
        latest = make_part(1, t0, fail=True, counts={"crack": 1})
        write_through_sink(ex, [latest, make_defect(latest, 5, "crack")], ingested_at_s=1_000_100.0)
        assert dict(ex.query(grafana_to_sql(pareto))) == {"crack": 1}
    finally:
        ex.close()
