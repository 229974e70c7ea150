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
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


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
