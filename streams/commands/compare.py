"""`defectstream compare`: a replay run against production (or another run), part by part.

Reads both runs' part verdicts and confirmed defects from ClickHouse, de-duplicated by event id
(the tables are ReplacingMergeTree: correct before merges too), restricted to the parts the
candidate inspected, and prints the verdict confusion matrix, defects found by one side only,
class changes, defect rates per shift (or camera or class) and, with simulator ground truth,
each side's precision and recall. The SQL runs unchanged on ClickHouse 18.16 and current
releases. The comparison itself is `streams.replay.comparison` (pure).
"""
from __future__ import annotations

import argparse
import json
import sys

from streams.commands.options import UsageError, deprecated_alias, output_option
from streams.replay.comparison import Comparison
from streams.replay.queries import run_compare


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _pct(v: float) -> str:
    return f"{100 * v:6.2f}%"


def render_table(c: Comparison) -> str:
    """What a quality engineer reads: confusion matrix, defect diffs, rates per group, GT scores."""
    lines = [f"compare baseline {c.baseline!r} vs candidate {c.candidate!r}",
             f"parts compared {len(c.parts)} (only in baseline {c.only_in_baseline_parts}, "
             f"only in candidate {c.only_in_candidate_parts}); verdict agreement {_pct(c.agreement).strip()}", ""]
    m = c.confusion
    lines += ["verdicts            candidate PASS  candidate FAIL",
              f"  baseline PASS     {m['PASS']['PASS']:>14}  {m['PASS']['FAIL']:>14}",
              f"  baseline FAIL     {m['FAIL']['PASS']:>14}  {m['FAIL']['FAIL']:>14}", ""]
    lines.append(f"defects: matched {c.defects_matched}, only baseline {c.defects_only_baseline}, "
                 f"only candidate {c.defects_only_candidate}")
    if c.class_changes:
        lines.append("class changes: " + ", ".join(f"{b} → {k} ×{n}" for (b, k), n in sorted(c.class_changes.items())))
    for title, groups in ((f"by {c.by}", c.groups),) + ((("per shift", c.shifts),) if c.by != "shift" else ()):
        lines += ["", title]
        head = (f"  {'group':<24} {'parts':>6} {'base rate':>10} {'cand rate':>10} {'diff':>9} "
                f"{'base def':>8} {'cand def':>8} {'only b':>6} {'only c':>6} {'cls chg':>7}")
        lines += [head, "  " + "-" * (len(head) - 2)]
        for g in groups:
            lines.append(f"  {g.group:<24} {g.parts:>6} {_pct(g.baseline_rate):>10} {_pct(g.candidate_rate):>10} "
                         f"{100 * g.rate_diff:+8.2f}% {g.baseline_defects:>8} {g.candidate_defects:>8} "
                         f"{g.only_baseline:>6} {g.only_candidate:>6} {g.class_changes:>7}")
        if not groups:
            lines.append("  (no parts in common)")
    if c.ground_truth:
        lines += ["", f"against ground truth ({next(iter(c.ground_truth.values())).gt_parts} parts)",
                  f"  {'run':<24} {'def prec':>9} {'def rec':>9} {'class acc':>9} {'part prec':>9} {'part rec':>9}"]
        for run, s in c.ground_truth.items():
            lines.append(f"  {run:<24} {s.defect_precision:9.3f} {s.defect_recall:9.3f} {s.class_accuracy:9.3f} "
                         f"{s.part_precision:9.3f} {s.part_recall:9.3f}")
    return "\n".join(lines)


def render_json(c: Comparison) -> str:
    return json.dumps(c.to_dict(), indent=2)


def plot_comparison(c: Comparison, path: str) -> None:
    """Bar chart PNG: defect rate of both runs per group, with the difference annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = c.groups
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, 0.8 * len(groups) + 4)), 4.5), dpi=110)
    try:
        if not groups:
            ax.text(0.5, 0.5, "no parts in common", ha="center", va="center", transform=ax.transAxes)
        else:
            x = list(range(len(groups)))
            b = [100 * g.baseline_rate for g in groups]
            k = [100 * g.candidate_rate for g in groups]
            ax.bar([i - 0.2 for i in x], b, width=0.4, label=c.baseline, color="tab:gray")
            ax.bar([i + 0.2 for i in x], k, width=0.4, label=c.candidate, color="tab:blue")
            for i, g in enumerate(groups):
                ax.annotate(f"{100 * g.rate_diff:+.1f}", (i, max(b[i], k[i])), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=7)
            ax.set_xticks(x)
            ax.set_xticklabels([g.group for g in groups], rotation=30, ha="right", fontsize=7)
            ax.set_ylabel("defective parts (%)" if c.by != "class" else "parts with the class (%)")
            ax.set_ylim(0, max(max(b), max(k), 1.0) * 1.2)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8)
        ax.set_title(f"{c.candidate} vs {c.baseline} by {c.by} — agreement {100 * c.agreement:.1f}%", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare a replay run with production (or another run), part by part",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="production", help="run id of the reference (default production)")
    p.add_argument("--candidate", required=True, help="run id of the run to judge (e.g. a replay)")
    p.add_argument("--by", choices=["shift", "camera", "class"], default="shift", help="group the comparison by")
    p.add_argument("--camera", dest="cameras", action="append", metavar="ID",
                   help="only this camera (repeatable, or comma separated; default: every camera)")
    deprecated_alias(p, "--cameras", "--camera", "cameras", nargs="+", append=True)
    p.add_argument("--since", help="only parts whose first frame is at/after this (now, 7d, ISO)")
    p.add_argument("--until", help="only parts whose first frame is before this")
    p.add_argument("--ground-truth", help="simulator ground truth JSONL: precision/recall of each side")
    p.add_argument("--iou", type=float, default=0.3, help="IoU that matches two defects (default 0.3)")
    output_option(p, ["table", "json"])
    p.add_argument("--chart", metavar="FILE.png", help="also write a PNG bar chart of the rates per group here")
    p.add_argument("--database", help="ClickHouse database (default: settings)")
    p.set_defaults(func=cli_compare)


def cli_compare(args: argparse.Namespace) -> int:
    import time

    from sinks.sql import DriverExecutor
    from streams.commands.options import time_range, writable_file
    from streams.commands.report import parse_time
    from streams.settings import Settings
    from streams.sim.simulator import read_ground_truth

    settings = Settings()
    if args.baseline == args.candidate:
        print("error: --baseline and --candidate are the same run", file=sys.stderr)
        return 2
    now = int(time.time() * 1000)
    since = parse_time(args.since, settings.plant, now) if args.since else None
    until = parse_time(args.until, settings.plant, now) if args.until else None
    time_range(since, until)
    if args.chart:
        writable_file(args.chart, "--chart")
    cams = sorted({c for v in args.cameras for c in v.split(",") if c}) if args.cameras else None
    gts = read_ground_truth(args.ground_truth) if args.ground_truth else None
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        if cams:
            from streams.spc.report import check_filters

            unknown = [t for run in (args.baseline, args.candidate)
                       for t in check_filters(ex, run, cameras=cams).unknown]
            if unknown:
                raise UsageError("; ".join(unknown))
        cmp = run_compare(ex, args.baseline, args.candidate, settings.plant, by=args.by, cameras=cams,
                          since_ms=since, until_ms=until, ground_truth=gts, iou_min=args.iou,
                          travel_axis=settings.tracking.travel_axis)
    finally:
        ex.close()
    print(render_json(cmp) if args.output == "json" else render_table(cmp))
    if args.chart:
        plot_comparison(cmp, args.chart)
    if not cmp.parts:
        print(f"compare: no parts of {args.candidate!r} were also inspected by {args.baseline!r}", file=sys.stderr)
        return 1
    return 0
