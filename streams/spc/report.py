"""`defectstream report`: defect rates per shift / hour / day from ClickHouse, with control limits.

Counts come from the `parts` table (one verdict per inspected part, the rate's denominator),
de-duplicated by event id so a part delivered twice counts once before any merge. A part's event id
is (camera, part, model version, run), so that is exactly one verdict per part and model version:
the latest delivered (highest `version`, ties broken by the row itself, so the choice never depends
on the order ClickHouse reads rows in), every column taken from that one row. Defect counts, the
Pareto included, come from that verdict's per-class counts, not from the `defects` rows: a part
re-processed after a crash may get other track ids (other batch boundaries, fp16), hence other
DefectEvent ids, and counting `defects` rows would count its defects twice. The SQL runs
unchanged on ClickHouse 18.16 and current releases (no window functions, no WITH FILL, no
DateTime64): a period without parts is simply absent.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence
from zoneinfo import ZoneInfo

from sinks.sql import Executor
from streams.settings import PlantSettings
from streams.spc import rules as spc
from streams.spc.queries import HOUR_MS, By, ReportFilters, deduped_parts_sql, pareto_sql, subgroups_sql  # noqa: F401


class Subgroup(NamedTuple):
    """Counts of one period."""

    start_ms: int  # UTC epoch ms the period starts at (shift start, hour, plant-local midnight)
    label: str  # human label in plant time
    inspected: int
    defective: int
    defects: int


def _period_start(by: By, key: int, tz: ZoneInfo) -> int:
    if by == "day":
        d = dt.date(key // 10000, key // 100 % 100, key % 100)
        return int(dt.datetime.combine(d, dt.time(), tzinfo=tz).timestamp() * 1000)
    return int(key)


def _label(by: By, start_ms: int, name: str, tz: ZoneInfo) -> str:
    local = dt.datetime.fromtimestamp(start_ms / 1000, tz)
    if by == "day":
        return local.strftime("%Y-%m-%d")
    if by == "hour":
        return local.strftime("%Y-%m-%d %H:00")
    return f"{local:%Y-%m-%d} {name}"


def fetch_subgroups(ex: Executor, by: By, filters: ReportFilters, plant: PlantSettings) -> list[Subgroup]:
    """Per-period counts, in time order; labels in the plant's timezone."""
    tz = ZoneInfo(plant.timezone)
    out = []
    for key, name, inspected, defective, defects in ex.query(subgroups_sql(by, filters)):
        start = _period_start(by, int(key), tz)
        out.append(Subgroup(start, _label(by, start, name, tz), int(inspected), int(defective), int(defects)))
    return out


# -- the report ------------------------------------------------------------------------------
class ReportRow(NamedTuple):
    period: str
    start_ms: int
    inspected: int
    defective: int
    rate: float  # defective / inspected
    defects_per_part: float
    lcl: float
    cl: float
    ucl: float
    violations: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """A report's rows with the chart they were judged on."""

    by: str
    chart_kind: spc.ChartKind
    scope: str
    rows: tuple[ReportRow, ...]
    chart: spc.ControlChart | None
    phase: str  # "I (trial limits)" or "II (frozen limits from …)"
    pareto: tuple[tuple[str, int], ...] = field(default=())

    @property
    def title(self) -> str:
        what = {"p": "p chart (fraction defective)", "laney_p": "Laney p′ chart (fraction defective)",
                "u": "u chart (defects per part)", "np": "np chart", "c": "c chart"}[self.chart_kind]
        return f"{what} per {self.by} — {self.scope}"


def _counts(kind: spc.ChartKind, groups: Sequence[Subgroup]) -> tuple[list[int], list[int]]:
    if kind in ("u", "c"):
        return [g.defects for g in groups], [g.inspected for g in groups]
    return [g.defective for g in groups], [g.inspected for g in groups]


def build_report(groups: Sequence[Subgroup], *, by: str, scope: str, kind: spc.ChartKind = "p",
                 limits: spc.Limits | None = None, iterate: bool = False,
                 rules: Sequence[str] = spc.WE_RULES, phase_note: str = "") -> Report:
    """Rows with limits and rule violations: Phase II against `limits`, else Phase I on `groups`."""
    groups = [g for g in groups if g.inspected > 0]
    if not groups:
        return Report(by, kind, scope, (), None, "— (no data, no limits)")
    counts, sizes = _counts(kind, groups)
    if limits is None:
        one = spc.phase_one(kind, counts, sizes, iterate=iterate, rules=rules)
        ch, phase = one.chart, "I (trial limits from the periods shown" + (", out-of-control periods dropped)" if iterate and one.excluded else ")")
    else:
        ch, phase = spc.phase_two(limits, counts, sizes, rules=rules), f"II (frozen limits{phase_note})"
    rows = []
    for g, pt in zip(groups, ch.points):
        rows.append(ReportRow(
            g.label, g.start_ms, g.inspected, g.defective, g.defective / g.inspected, g.defects / g.inspected,
            pt.lcl, pt.center, pt.ucl, tuple(v.rule for v in ch.violations_at(pt.index)),
        ))
    return Report(by, kind, scope, tuple(rows), ch, phase)


def render_table(rep: Report) -> str:
    """Fixed-width table a quality engineer reads at a glance."""
    lines = [rep.title, f"Phase {rep.phase}", ""]
    if not rep.rows:
        return "\n".join(lines + ["no inspected parts in this range"])
    pct = rep.chart_kind in ("p", "laney_p")
    head = f"{'period':<18} {'inspected':>9} {'defective':>9} {'rate':>8} {'def/part':>8} {'LCL':>8} {'CL':>8} {'UCL':>8}  rules"
    lines += [head, "-" * len(head)]

    def fmt(v: float) -> str:
        return f"{100 * v:7.2f}%" if pct else f"{v:8.4f}"

    for r in rep.rows:
        flag = ",".join(r.violations)
        lines.append(
            f"{r.period:<18} {r.inspected:>9} {r.defective:>9} {100 * r.rate:7.2f}% {r.defects_per_part:8.4f} "
            f"{fmt(r.lcl)} {fmt(r.cl)} {fmt(r.ucl)}  {('!! ' + flag) if flag else ''}"
        )
    tot_n = sum(r.inspected for r in rep.rows)
    tot_d = sum(r.defective for r in rep.rows)
    tot_c = sum(r.defects_per_part * r.inspected for r in rep.rows)
    lines += ["-" * len(head), f"{'total':<18} {tot_n:>9} {tot_d:>9} {100 * tot_d / tot_n:7.2f}% {tot_c / tot_n:8.4f}"]
    ooc = [r for r in rep.rows if r.violations]
    lines.append(f"{len(ooc)} of {len(rep.rows)} periods out of control" + (
        ": " + "; ".join(f"{r.period} {','.join(r.violations)}" for r in ooc) if ooc else ""))
    if rep.pareto:
        lines += ["", "defects by class: " + ", ".join(f"{c} {n}" for c, n in rep.pareto)]
    return "\n".join(lines)


def render_csv(rep: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["period", "start_ms", "inspected", "defective", "rate", "defects_per_part", "lcl", "cl", "ucl", "violations"])
    for r in rep.rows:
        w.writerow([r.period, r.start_ms, r.inspected, r.defective, f"{r.rate:.6f}", f"{r.defects_per_part:.6f}",
                    f"{r.lcl:.6f}", f"{r.cl:.6f}", f"{r.ucl:.6f}", " ".join(r.violations)])
    return buf.getvalue()


def render_json(rep: Report) -> str:
    doc = {
        "title": rep.title, "by": rep.by, "chart": rep.chart_kind, "scope": rep.scope, "phase": rep.phase,
        "rows": [{**r._asdict(), "violations": list(r.violations)} for r in rep.rows],
        "limits": asdict(rep.chart.limits) if rep.chart else None,
        "pareto": [{"defect_class": c, "defects": n} for c, n in rep.pareto],
    }
    return json.dumps(doc, indent=2)


def plot_chart(rep: Report, path: str) -> None:
    """Control chart PNG: points joined in time order, centre line, stepped limits, violations in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(16.0, max(8.0, 0.3 * len(rep.rows) + 4)), 5.0), dpi=110)
    try:
        if not rep.rows:
            ax.text(0.5, 0.5, "no inspected parts in this range", ha="center", va="center", transform=ax.transAxes)
        else:
            pct = rep.chart_kind in ("p", "laney_p")
            scale = 100.0 if pct else 1.0
            x = list(range(len(rep.rows)))
            y = [(r.rate if pct or rep.chart_kind == "np" else r.defects_per_part) * scale for r in rep.rows]
            if rep.chart and rep.chart_kind in ("np", "c"):
                y = [p.value for p in rep.chart.points]
            ucl = [r.ucl * scale for r in rep.rows]
            lcl = [r.lcl * scale for r in rep.rows]
            cl = [r.cl * scale for r in rep.rows]
            ax.step(x, ucl, where="mid", color="tab:red", lw=1.2, ls="--", label="UCL")
            ax.step(x, lcl, where="mid", color="tab:red", lw=1.2, ls="--", label="LCL")
            ax.plot(x, cl, color="tab:green", lw=1.4, label=f"CL {cl[0]:.3g}{'%' if pct else ''}")
            ax.plot(x, y, color="tab:blue", marker="o", ms=4, lw=1.0, label="subgroup")
            bad = [i for i, r in enumerate(rep.rows) if r.violations]
            if bad:
                ax.scatter([x[i] for i in bad], [y[i] for i in bad], s=60, color="red", zorder=5, label="out of control")
                for i in bad:
                    ax.annotate(",".join(rep.rows[i].violations), (x[i], y[i]), textcoords="offset points",
                                xytext=(0, 7), ha="center", fontsize=7, color="red")
            step = max(1, len(x) // 20)
            ax.set_xticks(x[::step])
            ax.set_xticklabels([r.period for r in rep.rows][::step], rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("fraction defective (%)" if pct else ("defects per part" if rep.chart_kind == "u" else rep.chart_kind))
            ax.set_xlabel(rep.by)
            ax.set_ylim(0, max(max(y), max(ucl)) * 1.15 or 1.0)  # headroom for the rule labels
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", ncol=3)
        ax.set_title(f"{rep.title}\nPhase {rep.phase}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# -- the library form of `defectstream report` -----------------------------------------------
def scope_text(f: ReportFilters) -> str:
    parts = [f"line {f.line}" if f.line else "all lines"]
    if f.camera:
        parts.append(f"camera {f.camera}")
    if f.defect_class:
        parts.append(f"class {f.defect_class}")
    if f.run_id != "production":
        parts.append(f"run {f.run_id}")
    return ", ".join(parts)


def make_report(ex: Executor, plant: PlantSettings, by: By, filters: ReportFilters, *, kind: spc.ChartKind = "p",
                baseline: tuple[int, int] | None = None, iterate: bool = False,
                rules: Sequence[str] = spc.WE_RULES) -> Report:
    """Query and judge: the library form of `defectstream report`."""
    groups = fetch_subgroups(ex, by, filters, plant)
    limits, note = None, ""
    if baseline is not None:
        bf = ReportFilters(baseline[0], baseline[1], filters.run_id, filters.line, filters.camera, filters.defect_class)
        base = [g for g in fetch_subgroups(ex, by, bf, plant) if g.inspected > 0]
        if base:
            counts, sizes = _counts(kind, base)
            limits = spc.phase_one(kind, counts, sizes, iterate=True).limits
            note = f" from {len(base)} baseline periods"
    rep = build_report(groups, by=by, scope=scope_text(filters), kind=kind, limits=limits, iterate=iterate,
                       rules=rules, phase_note=note)
    pareto = tuple((str(c), int(n)) for c, n in ex.query(pareto_sql(filters)))
    return Report(rep.by, rep.chart_kind, rep.scope, rep.rows, rep.chart, rep.phase, pareto)
