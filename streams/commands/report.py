"""`defectstream report`: defect rates per shift/hour/day with control limits (`streams.spc.report`),
and the time arguments every command that takes a range reads (`parse_time`)."""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from zoneinfo import ZoneInfo

from streams.commands.options import (DefaultsHelpFormatter, UsageError, cameras, deprecated_alias, output_option,
                                      time_range, writable_file)
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
        raise UsageError(f"cannot read time {text!r}: use now, 7d, 12h, 30m or an ISO date/time "
                         "such as 2026-12-01 or 2026-12-01T06:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(plant.timezone))
    return int(when.timestamp() * 1000)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="defect rates per shift/hour/day with control limits (table, CSV, JSON, PNG chart)",
        description=report.__doc__,
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--by", choices=["shift", "hour", "day"], default="shift", help="subgroup period")
    p.add_argument("--line", help="only this line (default: all lines)")
    p.add_argument("--camera", action="append", metavar="ID",
                   help="only this camera (repeatable; default: every camera)")
    p.add_argument("--class", dest="defect_class", help="count only defects of this class (default: all classes)")
    p.add_argument("--since", default="7d", help="start: now, 7d, 12h, 30m, or ISO date/time in plant time")
    p.add_argument("--until", default="now", help="end (exclusive), same forms")
    p.add_argument("--run-id", default="production", help="production or a replay run id")
    p.add_argument("--chart-kind", choices=["auto", "p", "np", "laney_p", "u", "c", "g"], default="auto",
                   help="auto: chosen from subgroup sizes and p̄ (see README, SPC); p/np: fraction/number defective; "
                        "laney_p: overdispersed large subgroups; u/c: defects; g: parts between defective parts")
    p.add_argument("--baseline-since", help="Phase II: freeze limits from this baseline period instead")
    p.add_argument("--baseline-until", default="now", help="end of the baseline period")
    p.add_argument("--no-iterate", dest="iterate", action="store_false",
                   help="Phase I: keep out-of-control subgroups in the limits (trial limits; default: left out)")
    deprecated_alias(p, "--iterate", "(the default now)", "iterate_old", nargs=0)
    p.add_argument("--rules", default="default",
                   help="run rules: default (Test 1 for attribute charts, Tests 1 and 2 for G), WE (Tests 1-4), "
                        "NELSON (1-8) or a list like WE1,WE2,N2")
    output_option(p, ["table", "csv", "json"])
    p.add_argument("--chart", metavar="FILE.png", help="also draw the control chart to this PNG")
    p.add_argument("--database", help="ClickHouse database (default: settings clickhouse.database)")
    p.set_defaults(func=run_report)


def parse_rules(text: str) -> list[str] | None:
    """`default` → None (the chart's own defaults), else the list, each name checked."""
    from streams.spc import rules as spc

    names = [r.strip().upper() for r in text.split(",") if r.strip()]
    if not names or names == ["DEFAULT"]:
        return None
    known = set(spc.WE_RULES + spc.NELSON_RULES + ("WE", "NELSON"))
    bad = [r for r in names if r not in known]
    if bad:
        raise UsageError(f"unknown rule {', '.join(bad)}: use default, WE, NELSON or names among "
                         f"{', '.join(spc.WE_RULES + spc.NELSON_RULES)}")
    return names


def run_report(args: argparse.Namespace) -> int:
    import time

    from sinks.sql import DriverExecutor
    from streams.settings import Settings

    settings = Settings()
    now = int(time.time() * 1000)
    plant = settings.plant
    # every argument is checked before ClickHouse is asked anything
    since, until = parse_time(args.since, plant, now), parse_time(args.until, plant, now)
    time_range(since, until)
    rules = parse_rules(args.rules)
    if args.chart:
        writable_file(args.chart, "--chart")
    cams = cameras(args.camera)
    camera = None if not cams else cams[0] if len(cams) == 1 else tuple(cams)  # several: their parts pooled
    filters = ReportFilters(since, until, args.run_id, args.line, camera, args.defect_class)
    baseline = None
    if args.baseline_since:
        baseline = (parse_time(args.baseline_since, plant, now), parse_time(args.baseline_until, plant, now))
        time_range(*baseline)
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        check = report.check_filters(ex, args.run_id, line=args.line, cameras=cams or (), defect_class=args.defect_class)
        if check.unknown:  # a typo in an id: say so, instead of an empty report
            raise UsageError("; ".join(check.unknown))
        for text in check.unseen:
            print(f"warning: {text}", file=sys.stderr)
        rep = make_report(ex, plant, args.by, filters, kind=args.chart_kind, baseline=baseline,
                          iterate=args.iterate, rules=rules)
    finally:
        ex.close()
    print({"table": render_table, "csv": render_csv, "json": render_json}[args.output](rep))
    if not rep.rows and (args.line or cams):
        print(f"note: no parts for {report.scope_text(filters)} in this range (check the line/camera id, "
              "--run-id and --database)")
    if args.chart:
        plot_chart(rep, args.chart)
    return 0
