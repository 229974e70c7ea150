"""Benchmark of the web view (`defectstream web`) on a seeded ClickHouse: response times of every page; prints JSON.

Run (after `ops/stack up`):
    .venv/bin/python ops/bench/web_bench.py [--defects 100000] [--queue 10000] [--repeats 20] [--check]

It creates its own database (--database, dropped at the end unless --keep), migrates it, and seeds,
with the test helpers and the sink's row mapping (`sinks.testing`, `streams.review.testing`):
`--defects` defects on defective parts (1–3 each), good parts so that `--fail-fraction` of the parts
fail, spread over the last `--days` days on `--cameras` cameras on two lines; `--queue` pending review
candidates with their sampled frames (PNG), `--labelled` more candidates already judged (labels), and a
few alerts. It then serves the app in-process (FastAPI's TestClient, the same app `defectstream web`
serves), logs in and requests every GET page of the app (`PAGES`; the bench fails if a GET route of the
app is not covered) `--repeats` times, round-robin, after one warm-up request each (reported as
`first_ms`). The SPC chart is requested with the query string the SPC page's <img> really carries.

JSON: per page p50/p95/max/first ms and the status code, the rows seeded and how long seeding took,
the load average at the start and at the end. With `--check` the exit status is 1 when a page's p95
is over `--bar-ms`.

`--live` adds the live-page lag: how far behind the worker the live page is (see `live_lag`).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out

REASONS = ("uncertain", "track_dropped", "class_flipped", "random_good")
CLASSES = ("crack", "scratch", "inclusion", "pit")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(len(xs) - 1, int(k) + 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def seed_database(ex: Any, *, defects: int, queue: int, labelled: int, fail_fraction: float, days: float,
                  cameras: int, now_ms: int, batch: int = 20_000, seed: int = 1) -> dict[str, Any]:
    """Seed parts, defects, review frames and candidates, labels and alerts; what was written."""
    from sinks.clickhouse import LABEL_COLUMNS
    from sinks.testing import make_alert, make_defect, make_part
    from sinks.testing import seed as seed_events
    from streams.review import queries as q
    from streams.review.testing import make_review, seed_review

    rng = random.Random(seed)
    cams = [(f"cam-{i + 1}", f"line-{i % 2 + 1}") for i in range(cameras)]
    # defective parts first (how many the defects need), then good parts around them
    per_part: list[int] = []
    left = defects
    while left > 0:
        k = min(left, rng.choice((1, 2, 2, 3)))
        per_part.append(k)
        left -= k
    n_fail = len(per_part)
    n_parts = max(n_fail, round(n_fail / fail_fraction))
    fail_at = set(rng.sample(range(n_parts), n_fail))
    span = int(days * 86_400_000)
    step = span / n_parts
    t0 = now_ms - span
    counts = {"parts": 0, "defects": 0, "review_frames": 0, "review_queue": 0, "labels": 0, "alerts": 0}
    events: list[Any] = []
    defective: list[Any] = []
    k_iter = iter(per_part)

    def flush() -> None:
        for table, n in seed_events(ex, events, ingested_at=now_ms).items():
            counts[table] += n
        events.clear()

    for i in range(n_parts):
        cam, line = cams[i % cameras]
        ts = int(t0 + i * step)
        if i in fail_at:
            k = next(k_iter)
            classes = [rng.choice(CLASSES) for _ in range(k)]
            c: dict[str, int] = {}
            for cls in classes:
                c[cls] = c.get(cls, 0) + 1
            part = make_part(i, ts, camera=cam, line=line, fail=True, counts=c)
            events.append(part)
            defective.append(part)
            for track, cls in enumerate(sorted(classes)):
                events.append(make_defect(part, track, cls))
        else:
            events.append(make_part(i, ts, camera=cam, line=line))
        if len(events) >= batch:
            flush()
    for j in range(20):  # a few alerts of the monitor
        events.append(make_alert(t0 + (j + 1) * span // 21, line=cams[j % cameras][1], camera=cams[j % cameras][0]))
    flush()
    # review candidates on the newest defective parts: `queue` pending, `labelled` already judged
    chosen = defective[-(queue + labelled):] if queue + labelled else []
    frames, cands, all_cands = [], [], []
    for j, part in enumerate(chosen):
        cls = sorted(part.defect_counts)[0]
        x0, y0 = rng.randint(0, 60), rng.randint(0, 24)
        f, cand = make_review(part.camera_id, part.part_id, 3, part.first_frame_ts + 150, line=part.line_id,
                              reason=REASONS[j % len(REASONS)], score=round(rng.random(), 4),
                              detections=((cls, round(rng.uniform(0.3, 0.7), 3), (x0, y0, x0 + 20, y0 + 16)),))
        frames.append(f)
        cands.append(cand)
        all_cands.append(cand)
        if len(frames) >= 2_000:
            for table, n in seed_review(ex, frames, cands, ingested_at=now_ms).items():
                counts[table] += n
            frames.clear()
            cands.clear()
    if frames:
        for table, n in seed_review(ex, frames, cands, ingested_at=now_ms).items():
            counts[table] += n
    judged = []
    for j, part in enumerate(chosen[:labelled]):
        cand = all_cands[j]
        frame = SimpleNamespace(frame_id=cand.frame_id, camera_id=part.camera_id, line_id=part.line_id,
                                part_id=part.part_id, model_version=part.model_version)
        cid = cand.candidate_id
        judged.append(q.new_label(frame, cid, "confirm", sorted(part.defect_counts)[0], q.Box(1, 1, 9, 9), "bench",  # type: ignore[arg-type]
                                  now_ms - 1000 + j).row())
    counts["labels"] = ex.insert("labels", LABEL_COLUMNS, judged)
    counts["defective_parts"] = n_fail
    counts["cameras"] = cameras
    return {"counts": counts, "pending": all_cands[labelled:], "defective": defective}


def pages(pending: list[Any], defective: list[Any]) -> dict[str, str]:
    """name → URL of every page to time (every GET route of the app, some with their filters)."""
    top = max(pending, key=lambda c: (c.score, c.candidate_id)) if pending else None
    part = defective[len(defective) // 2]
    cam, line = part.camera_id, part.line_id
    out = {
        "login": "/login",
        "root": "/",
        "favicon": "/favicon.ico",
        "static_css": "/static/app.css",
        "queue": "/queue",
        "queue_camera": f"/queue?camera={cam}",
        "queue_page_5": "/queue?page_no=5",
        "queue_next": "/queue/next",
        "part": f"/part?camera={cam}&part={part.part_id}",
        "defects": "/defects",
        "defects_filtered": f"/defects?line={line}&camera={cam}&defect_class=crack&shift=early&since=7d",
        "defects_page_5": "/defects?page_no=5",
        "spc": "/spc",
        "spc_hour_line": f"/spc?by=hour&line={line}&since=2d",
        "spc_day_camera": f"/spc?by=day&camera={cam}",
        "live": "/live",
        "models": "/models",
    }
    if top is not None:
        out["review"] = f"/review/{top.candidate_id}"
        out["frame_image"] = f"/frames/{top.frame_id}/image"
        qpart = pending[0]
        out["part_with_review"] = f"/part?camera={qpart.camera_id}&part={qpart.part_id}"
    return out


def uncovered_routes(app: Any, urls: dict[str, str]) -> list[str]:
    """GET routes of the app no URL of `urls` reaches."""
    from starlette.routing import Mount, Route

    missing = []
    for r in app.routes:
        if isinstance(r, Mount):
            if not any(u.startswith(r.path + "/") for u in urls.values()):
                missing.append(r.path)
            continue
        if not isinstance(r, Route) or "GET" not in (r.methods or ()):
            continue
        if not any(r.path_regex.match(u.split("?", 1)[0]) for u in urls.values()):
            missing.append(r.path)
    return missing


def time_pages(client: Any, urls: dict[str, str], repeats: int, *, chart_from: dict[str, str]) -> dict[str, Any]:
    """Warm up each page once, then time `repeats` rounds of every page; per page ms statistics."""
    first: dict[str, float] = {}
    status: dict[str, int] = {}
    times: dict[str, list[float]] = {n: [] for n in urls}

    def get(url: str) -> tuple[float, Any]:
        t = time.perf_counter()
        r = client.get(url, follow_redirects=False)
        _ = r.content
        return (time.perf_counter() - t) * 1000, r

    for name, url in list(urls.items()):
        ms, r = get(url)
        first[name], status[name] = ms, r.status_code
        for chart_name, spc_name in chart_from.items():  # the chart URL the SPC page's <img> carries
            if spc_name == name:
                m = re.search(r'id="spc-chart" src="([^"]+)"', r.text)
                if not m:
                    raise SystemExit(f"no chart <img> on {url} ({r.status_code})")
                urls[chart_name] = m.group(1).replace("&amp;", "&")
                times[chart_name] = []
    for name in [n for n in urls if n not in first]:
        first[name], r = get(urls[name])
        status[name] = r.status_code
    for _ in range(repeats):
        for name, url in urls.items():
            ms, r = get(url)
            times[name].append(ms)
            if r.status_code != status[name]:
                raise SystemExit(f"{url}: status {r.status_code}, was {status[name]}")
    return {name: {"url": urls[name], "status": status[name], "first_ms": round(first[name], 1),
                   "p50_ms": round(statistics.median(ts), 1), "p95_ms": round(_pct(ts, 0.95), 1),
                   "max_ms": round(max(ts), 1), "n": len(ts)} for name, ts in times.items()}


def login(client: Any, user: str, password: str) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)  # type: ignore[union-attr]
    r = client.post("/login", data={"username": user, "password": password, "csrf": token, "next": "/queue"},
                    follow_redirects=False)
    if r.status_code != 303 or r.headers.get("location") != "/queue":
        raise SystemExit(f"login failed: {r.status_code} {r.text[:200]}")


def live_lag(client: Any, ex: Any, *, probes: int, interval_s: float, clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """How long after a part's verdict row is written the live page shows it: write one part (the sink's
    row mapping, last frame at the wall-clock time) on a camera of its own, then request /live until
    that camera's row is on it; `probes` times.

    The live page reads ClickHouse only (`camera_activity_sql`: the parts of the last `window_s`
    seconds), so its lag behind the worker is: worker → Kafka → sink (buffered until `batch_size` records
    or `flush_interval_s`) → INSERT, then this write → page step, then the page's own refresh
    (`static/app.js` fetches it again every 500 ms). This measures the write → page step; the page's
    "behind" column (now − newest verdict's last frame) is reported as the page printed it.
    """
    from sinks.testing import make_part
    from sinks.testing import seed as seed_events

    lags, behind = [], []
    for i in range(probes):
        ts = int(clock() * 1000)
        cam = f"cam-live-{i}"
        part = make_part(900_000_000 + i, ts - 400, camera=cam, line="line-1")  # last frame at ts
        seed_events(ex, [part], ingested_at=ts)
        t = time.perf_counter()
        while True:
            html = client.get("/live").text
            m = re.search(r"<tr><td>" + re.escape(cam) + r"</td>.*?<td>([0-9.]+) s</td></tr>", html)
            if m:
                behind.append(float(m.group(1)))
                break
            if time.perf_counter() - t > 30:
                raise SystemExit(f"the live page did not show {cam} within 30 s")
        lags.append((time.perf_counter() - t) * 1000)
        time.sleep(interval_s)
    return {"probes": probes, "write_to_page_p50_ms": round(statistics.median(lags), 1),
            "write_to_page_max_ms": round(max(lags), 1), "page_behind_s": behind,
            "note": "lag behind the worker = sink buffering (flush_interval_s, default 1 s) + Kafka/INSERT + "
                    "write_to_page + the page's 0.5 s update"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("DEFECTSTREAM_STACK_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("DEFECTSTREAM_STACK_CLICKHOUSE_PORT", 19000)),
                    help="ClickHouse native port")
    ap.add_argument("--database", default="bench_web", help="created, seeded and dropped (unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the database at the end")
    ap.add_argument("--defects", type=int, default=100_000)
    ap.add_argument("--queue", type=int, default=10_000, help="pending review candidates (with their frames)")
    ap.add_argument("--labelled", type=int, default=500, help="candidates already judged (labels written)")
    ap.add_argument("--fail-fraction", type=float, default=0.2, help="fraction of the parts that are defective")
    ap.add_argument("--days", type=float, default=6.0, help="the seeded parts span the last DAYS days")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--bar-ms", type=float, default=300.0)
    ap.add_argument("--check", action="store_true", help="exit 1 when a page's p95 is over --bar-ms")
    ap.add_argument("--report-cache-s", type=float, default=None,
                    help="the app's SPC report/chart refresh (create_app's report_cache_s; default: the setting "
                         "web.spc_refresh_s; 0 times every request uncached)")
    ap.add_argument("--live", action="store_true", help="also probe the live page's lag (see live_lag)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    from clickhouse_driver import Client
    from fastapi.testclient import TestClient

    from sinks.migrations import migrate
    from sinks.sql import DriverExecutor
    from streams.review.passwords import hash_password
    from streams.review.web.app import create_app
    from streams.settings import ClickHouseSettings, PlantSettings, Settings, WebSettings

    load_start = os.getloadavg()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.database):
        raise SystemExit(f"--database {args.database!r}: letters, digits and _ only")
    admin = Client(args.host, port=args.port, connect_timeout=5, send_receive_timeout=300)
    admin.execute(f"DROP DATABASE IF EXISTS {args.database}")
    admin.execute(f"CREATE DATABASE {args.database}")
    cfg = ClickHouseSettings(host=args.host, port=args.port, database=args.database)
    ex = DriverExecutor.connect(cfg)
    now_ms = int(time.time() * 1000)
    try:
        migrate(ex)
        t = time.perf_counter()
        seeded = seed_database(ex, defects=args.defects, queue=args.queue, labelled=args.labelled,
                               fail_fraction=args.fail_fraction, days=args.days, cameras=args.cameras, now_ms=now_ms)
        seed_s = time.perf_counter() - t
        settings = Settings(clickhouse=cfg, plant=PlantSettings(),
                            web=WebSettings(users={"bench": hash_password("bench-pass")}, secret_key="w" * 40))
        app = create_app(settings, lambda: DriverExecutor.connect(cfg), report_cache_s=args.report_cache_s)
        urls = pages(seeded["pending"], seeded["defective"])
        chart_from = {"spc_chart": "spc", "spc_chart_hour_line": "spc_hour_line", "spc_chart_day_camera": "spc_day_camera"}
        with TestClient(app, base_url="http://127.0.0.1") as client:
            login(client, "bench", "bench-pass")
            missing = uncovered_routes(app, {**urls, **{k: "/spc/chart.png" for k in chart_from}})
            if missing:
                raise SystemExit(f"GET routes the bench does not cover: {', '.join(missing)}")
            t = time.perf_counter()
            timed = time_pages(client, urls, args.repeats, chart_from=chart_from)
            bench_s = time.perf_counter() - t
            live = live_lag(client, ex, probes=5, interval_s=0.5) if args.live else None
        worst = max(timed.items(), key=lambda kv: kv[1]["p95_ms"])
        over = sorted(n for n, r in timed.items() if r["p95_ms"] > args.bar_ms)
        result = {
            "bench": "web", "database": args.database, "clickhouse": admin.execute("SELECT version()")[0][0],
            "seeded": seeded["counts"], "seed_s": round(seed_s, 1), "repeats": args.repeats, "report_cache_s": args.report_cache_s,
            "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(), "bench_s": round(bench_s, 1), "bar_ms": args.bar_ms,
            "worst_p95": {"page": worst[0], "p95_ms": worst[1]["p95_ms"]}, "over_bar": over, "ok": not over,
            "pages": timed,
        }
        if live is not None:
            result["live"] = live
    finally:
        ex.close()
        if not args.keep:
            admin.execute(f"DROP DATABASE IF EXISTS {args.database}")
        admin.disconnect()
    emit(result, args.out)
    if args.check and over:
        sys.exit(1)


if __name__ == "__main__":
    main()
