"""`defectstream monitor`: defect rates per line and camera against frozen SPC limits, alerts on spikes
(`streams.spc.monitor`)."""
from __future__ import annotations

import argparse
import time

from streams.commands.options import time_range
from streams.commands.report import parse_time
from streams.spc import monitor
from streams.spc.monitor import Monitor, kafka_publisher, pct


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="watch defect rates per line and camera against frozen SPC limits; alert on spikes",
        description=monitor.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--interval", type=float, help="seconds between evaluations (default: settings monitor.interval_s)")
    p.add_argument("--window", type=float, help="seconds of parts in each evaluated window")
    p.add_argument("--webhook", help="also POST each alert as JSON to this URL (a URL holding a token is better set "
                                     "in DEFECTSTREAM_MONITOR__WEBHOOK_URL: arguments show in process lists)")
    p.add_argument("--once", action="store_true", help="evaluate one window and exit")
    p.add_argument("--baseline-since", help="baseline start (now, 7d, ISO); default: window start − baseline_s")
    p.add_argument("--baseline-until", help="baseline end; default: start of the first window")
    p.add_argument("--cooldown", type=float, help="seconds before a scope may announce a new spike")
    p.add_argument("--no-kafka", action="store_true", help="do not publish to the alerts topic")
    p.add_argument("--database", help="ClickHouse database (default: settings)")
    p.set_defaults(func=run_monitor)


def run_monitor(args: argparse.Namespace) -> int:
    from sinks.sql import DriverExecutor
    from streams import preflight
    from streams.settings import Settings

    settings = Settings()
    m = settings.monitor
    for attr, val in (("interval_s", args.interval), ("window_s", args.window), ("cooldown_s", args.cooldown)):
        if val is not None:
            setattr(m, attr, val)
    now = int(time.time() * 1000)
    b_end = parse_time(args.baseline_until, settings.plant, now) if args.baseline_until else now - int(m.window_s * 1000)
    b_start = parse_time(args.baseline_since, settings.plant, now) if args.baseline_since else b_end - int(m.baseline_s * 1000)
    time_range(b_start, b_end)
    if not args.no_kafka:
        preflight.check_kafka(settings.kafka)
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    publish, close = (None, lambda: None) if args.no_kafka else kafka_publisher(settings)
    try:
        mon = Monitor(ex, m, publish=publish, webhook_url=args.webhook)
        limits = mon.freeze(b_start, b_end)
        if not limits:
            print("no scope has enough baseline parts; nothing to monitor")
            return 1
        mon.restore_state()
        for scope, lim in sorted(limits.items(), key=lambda kv: (kv[0].line_id, kv[0].camera_id or "")):
            print(f"{scope}: p̄ {pct(lim.center)} (Phase II, frozen)")
        mon.run(once=args.once)
    except KeyboardInterrupt:
        pass
    finally:
        close()
        ex.close()
    return 0
