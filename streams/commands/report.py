"""`defectstream report`: defect rates per shift/hour/day with control limits (`streams.spc.report`),
and the time arguments every command that takes a range reads (`parse_time`)."""
from __future__ import annotations

import argparse
import datetime as dt
import re
from zoneinfo import ZoneInfo

from streams.settings import PlantSettings
from streams.spc import report
from streams.spc.report import ReportFilters, make_report, plot_chart, render_csv, render_json, render_table

_REL = re.compile(r"^-?(\d+(?:\.\d+)?)([smhdw])$")


def parse_time(text: str, plant: PlantSettings, now_ms: int) -> int:
    """`now`, a relative `7d`/`-12h`/`30m` (before now), or an ISO date/datetime (plant-local if naive) → epoch ms."""
    text = text.strip()
    if text == "now":
        return now_ms
    m = _REL.match(text)
    if m:
        mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now_ms - int(float(m.group(1)) * mult * 1000)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read time {text!r}: use now, 7d, 12h or an ISO date/time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(plant.timezone))
    return int(when.timestamp() * 1000)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="defect rates per shift/hour/day with control limits (table, CSV, JSON, PNG chart)",
        description=report.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--by", choices=["shift", "hour", "day"], default="shift")
    p.add_argument("--line")
    p.add_argument("--camera")
    p.add_argument("--class", dest="defect_class", help="count only defects of this class")
    p.add_argument("--since", default="7d", help="start: now, 7d, 12h, or ISO date/time in plant time (default 7d)")
    p.add_argument("--until", default="now", help="end (exclusive), same forms (default now)")
    p.add_argument("--run-id", default="production", help="production or a replay run id")
    p.add_argument("--chart-kind", choices=["p", "laney_p", "u"], default="p",
                   help="p: fraction defective; laney_p: for very large subgroups; u: defects per part")
    p.add_argument("--baseline-since", help="Phase II: freeze limits from this baseline period instead")
    p.add_argument("--baseline-until")
    p.add_argument("--iterate", action="store_true", help="Phase I: drop out-of-control periods and re-estimate")
    p.add_argument("--rules", default="WE", help="run rules: WE (1-4), NELSON (1-8) or a list like WE1,N2")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.add_argument("--chart", metavar="FILE.png", help="also draw the control chart to this PNG")
    p.add_argument("--database", help="ClickHouse database (default: settings)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    import time

    from sinks.sql import DriverExecutor
    from streams.settings import Settings

    settings = Settings()
    now = int(time.time() * 1000)
    plant = settings.plant
    filters = ReportFilters(parse_time(args.since, plant, now), parse_time(args.until, plant, now), args.run_id,
                            args.line, args.camera, args.defect_class)
    baseline = None
    if args.baseline_since:
        baseline = (parse_time(args.baseline_since, plant, now), parse_time(args.baseline_until or "now", plant, now))
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        rep = make_report(ex, plant, args.by, filters, kind=args.chart_kind, baseline=baseline,
                          iterate=args.iterate, rules=rules)
    finally:
        ex.close()
    print({"table": render_table, "csv": render_csv, "json": render_json}[args.format](rep))
    if args.chart:
        plot_chart(rep, args.chart)
    return 0
