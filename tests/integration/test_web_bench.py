"""ops/bench/web_bench.py at tiny scale on the local stack: it seeds, serves and times every page, and prints JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_web_bench_times_every_page(stack, fresh_database):
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "bench" / "web_bench.py"), "--host", stack.host, "--port",
         str(stack.clickhouse_port), "--database", fresh_database, "--defects", "200", "--queue", "50",
         "--labelled", "5", "--repeats", "2", "--live"],
        capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    assert doc["seeded"]["defects"] == 200 and doc["seeded"]["review_queue"] == 55
    assert len(doc["load_avg_start"]) == 3
    want = {"login", "root", "favicon", "static_css", "queue", "queue_camera", "queue_page_5", "queue_next", "review",
            "frame_image", "part", "part_with_review", "defects", "defects_filtered", "defects_page_5", "spc",
            "spc_hour_line", "spc_day_camera", "spc_chart", "spc_chart_hour_line", "spc_chart_day_camera", "live", "models"}
    assert want <= set(doc["pages"])
    for name, page in doc["pages"].items():
        assert page["status"] in (200, 204, 303), (name, page)
        assert page["n"] == 2
        for k in ("first_ms", "p50_ms", "p95_ms", "max_ms"):
            assert isinstance(page[k], float) and page[k] > 0, (name, k, page)
    assert doc["pages"]["spc_chart"]["url"].startswith("/spc/chart.png?")
    assert doc["live"]["probes"] == 5 and doc["live"]["write_to_page_max_ms"] > 0
