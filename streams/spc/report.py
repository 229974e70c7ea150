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
import math
from dataclasses import asdict, dataclass, field, replace
from typing import NamedTuple, Sequence
from zoneinfo import ZoneInfo

from sinks.sql import Executor
from streams.settings import PlantSettings
from streams.spc import rules as spc
from streams.spc.queries import HOUR_MS, By, ReportFilters, deduped_parts_sql, pareto_sql, part_sequence_sql, subgroups_sql  # noqa: F401


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
MIN_POINTS = 8  # fewer (pooled) subgroups than this cannot set limits: the rare-defect charts take over
LANEY_SIGMA_Z = 1.5  # σ_z (robust estimate) above which subgroups vary more than binomial: Laney p′
RARE_P = 0.01  # below this p̄, periods too small to judge alone call for the per-part charts
PER_PART_LIMIT = 2_000_000  # parts the per-part charts read at most
ARL0_SUBGROUPS = 370.4  # in-control ARL of a 3σ Shewhart chart; the CUSUM matches it in parts


class ReportRow(NamedTuple):
    period: str
    start_ms: int
    inspected: int
    defective: int
    rate: float  # defective / inspected
    defects_per_part: float
    lcl: float | None  # None: not judged (subgroup too small)
    cl: float | None
    ucl: float | None
    violations: tuple[str, ...]
    value: float = 0.0  # the plotted statistic (rate, count, defects per part, or the G chart's gap)
    z: float | None = None
    side: str = ""  # above / below / on the centre line ("" when not judged)
    status: str = "in_control"  # alarm / improvement / pattern / in_control / too_small
    in_limits: bool = True  # used to estimate the Phase I limits
    periods: int = 1  # periods pooled into this row


@dataclass(frozen=True)
class ChartChoice:
    """Which chart a report draws and why (the report and the chart's subtitle say it)."""

    kind: spc.ChartKind
    reason: str
    n_min: int | None = None  # the smallest subgroup judged (0.5 / p̄ rule), None when not applied
    pooled: bool = False  # adjacent too-small periods were pooled
    per_part: bool = False  # G chart on the parts between defective parts (+ Bernoulli CUSUM)


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
    choice: ChartChoice | None = None
    rules: tuple[str, ...] = ()
    cusum: spc.Cusum | None = None
    cusum_labels: tuple[str, ...] = ()  # the time of each CUSUM signal

    @property
    def title(self) -> str:
        what = {"p": "p chart (fraction defective)", "laney_p": "Laney p′ chart (fraction defective)",
                "u": "u chart (defects per part)", "np": "np chart (defective parts)", "c": "c chart",
                "g": "G chart (good parts between defective parts)"}[self.chart_kind]
        per = "per defective part" if self.chart_kind == "g" else f"per {self.by}"
        return f"{what} {per} — {self.scope}"

    @property
    def subtitle(self) -> str:
        """Why this chart and which rules: the chart's second line."""
        rules = ", ".join(self.rules) or "none"
        why = self.choice.reason if self.choice else ""
        return f"{why} Rules: {rules}." if why else f"Rules: {rules}."

    @property
    def alarms(self) -> tuple[ReportRow, ...]:
        return tuple(r for r in self.rows if r.status == "alarm")


def _counts(kind: spc.ChartKind, groups: Sequence[Subgroup]) -> tuple[list[int], list[int]]:
    if kind in ("u", "c"):
        return [g.defects for g in groups], [g.inspected for g in groups]
    return [g.defective for g in groups], [g.inspected for g in groups]


def n_min_for(center: float) -> int | None:
    """Smallest subgroup a p (or u) chart judges: n ≥ 0.5 / p̄ (Minitab's Assistant data check for P charts:
    fewer parts make the normal-approximation limits meaningless; None when p̄ is 0)."""
    return math.ceil(0.5 / center - 1e-9) if center > 0 else None


def pool(groups: Sequence[Subgroup], n_min: int) -> list[tuple[Subgroup, int]]:
    """Adjacent periods pooled until each has at least `n_min` parts: [(pooled subgroup, periods)].

    A period large enough on its own stays alone (a spike hour is never diluted by its quiet
    neighbours): the small periods before it join the previous pooled group, and small periods left
    at the end join the last one.
    """
    out: list[list[Subgroup]] = []
    pending: list[Subgroup] = []
    for g in groups:
        if g.inspected >= n_min and pending and sum(x.inspected for x in pending) < n_min:
            (out[-1].extend if out else (lambda xs: out.append(list(xs))))(pending)
            pending = []
        pending.append(g)
        if sum(x.inspected for x in pending) >= n_min:
            out.append(pending)
            pending = []
    if pending:
        (out[-1].extend if out else (lambda xs: out.append(list(xs))))(pending)
    merged = []
    for grp in out:
        label = grp[0].label if len(grp) == 1 else f"{grp[0].label} (+{len(grp) - 1})"
        merged.append((Subgroup(grp[0].start_ms, label, sum(g.inspected for g in grp), sum(g.defective for g in grp),
                                sum(g.defects for g in grp)), len(grp)))
    return merged


def _robust_sigma_z(defective: Sequence[int], inspected: Sequence[int], p: float) -> float:
    """Laney's σ_z from the median moving range (/0.954), so one spike does not look like overdispersion."""
    if not 0 < p < 1 or len(defective) < 3:
        return 1.0
    z = [(d / n - p) / math.sqrt(p * (1 - p) / n) for d, n in zip(defective, inspected)]
    mr = sorted(abs(b - a) for a, b in zip(z, z[1:]))
    mid = len(mr) // 2
    med = mr[mid] if len(mr) % 2 else (mr[mid - 1] + mr[mid]) / 2
    return med / 0.954


def choose_chart(groups: Sequence[Subgroup], *, by: str, has_parts: bool = True) -> tuple[ChartChoice, list[tuple[Subgroup, int]]]:
    """Pick the chart from the data: subgroup sizes and p̄ (Phase I, out-of-control periods left out).

    * p̄ from all periods, then from the Phase I limits, sets n_min = ⌈0.5 / p̄⌉; periods below it
      are pooled with their neighbours (`pool`), re-estimated until n_min settles.
    * rare defects — fewer than `MIN_POINTS` pooled subgroups, or p̄ < `RARE_P` with most periods
      below n_min: G chart on the good parts between defective parts, judged at each defective part
      instead of waiting for pooled periods, with a Bernoulli CUSUM part by part (when `has_parts`).
    * overdispersed (robust σ_z > `LANEY_SIGMA_Z`, typical of very large subgroups): Laney p′;
    * one constant subgroup size: np chart; otherwise a p chart with stepped limits.
    """
    tot_n = sum(g.inspected for g in groups)
    tot_d = sum(g.defective for g in groups)
    single = [(g, 1) for g in groups]
    if tot_d == 0:
        return ChartChoice("p", f"p chart: no defective part in {tot_n} parts, nothing to judge."), single
    p = tot_d / tot_n
    pooled, n_min = single, 1
    for _ in range(6):
        n_min = n_min_for(p) or 1
        pooled = pool(groups, n_min)
        if len(pooled) < MIN_POINTS:
            break
        one = spc.phase_one("p", [g.defective for g, _ in pooled], [g.inspected for g, _ in pooled], iterate=True)
        new_p = one.limits.center
        if new_p <= 0 or (n_min_for(new_p) or 1) == n_min:
            break
        p = new_p
    merged = sum(1 for _, k in pooled if k > 1)
    base = f"p̄ {100 * p:.2f}% → n ≥ 0.5/p̄ = {n_min} parts per subgroup (Minitab's rule)"
    small = sum(1 for g in groups if g.inspected < n_min)
    rare = len(pooled) < MIN_POINTS or (p < RARE_P and small > len(groups) / 2)
    if rare and has_parts:
        return ChartChoice("g", f"{base}: {small} of {len(groups)} {by}s fall short, defects are rare for the volume — "
                                "G chart of the good parts between defective parts, with a Bernoulli CUSUM part by part.",
                           n_min, per_part=True), pooled
    pool_note = f"; {merged} pooled groups of adjacent small {by}s" if merged else ""
    d = [g.defective for g, _ in pooled]
    n = [g.inspected for g, _ in pooled]
    sz = _robust_sigma_z(d, n, p)
    if sz > LANEY_SIGMA_Z:
        return ChartChoice("laney_p", f"{base}{pool_note}; σ_z {sz:.2f} > {LANEY_SIGMA_Z}: the {by}s vary more "
                                      "than binomial — Laney p′ chart.", n_min, bool(merged)), pooled
    if len(set(n)) == 1:
        return ChartChoice("np", f"{base}{pool_note}; constant n = {n[0]} — np chart.", n_min, bool(merged)), pooled
    return ChartChoice("p", f"{base}{pool_note}; sizes vary — p chart with stepped limits.", n_min, bool(merged)), pooled


def _row(g: Subgroup, periods: int, pt: spc.ChartPoint | None, ch: spc.ControlChart | None, kind: str,
         in_limits: bool, value: float) -> ReportRow:
    rate, dpp = g.defective / g.inspected, g.defects / g.inspected
    if pt is None or ch is None:
        return ReportRow(g.label, g.start_ms, g.inspected, g.defective, rate, dpp, None, None, None, (), value,
                         None, "", "too_small", False, periods)
    vs = ch.violations_at(pt.index)
    return ReportRow(g.label, g.start_ms, g.inspected, g.defective, rate, dpp, pt.lcl, pt.center, pt.ucl,
                     tuple(v.rule for v in vs), pt.value, pt.z, spc.side_text(pt.z, kind), spc.classify(vs, kind),
                     in_limits, periods)


def default_rules(kind: str) -> tuple[str, ...]:
    """Test 1 only for attribute charts, Tests 1 and 2 (9 on one side) for a G chart — Minitab's defaults."""
    return spc.G_DEFAULT_RULES if kind == "g" else spc.ATTRIBUTE_DEFAULT_RULES


def build_report(groups: Sequence[Subgroup], *, by: str, scope: str, kind: spc.ChartKind | str = "auto",
                 limits: spc.Limits | None = None, iterate: bool = True, rules: Sequence[str] | None = None,
                 phase_note: str = "", parts: Sequence[tuple[int, int]] | None = None, tz: str = "UTC") -> Report:
    """Rows with limits, sides and rule statuses: Phase II against `limits`, else Phase I on `groups`.

    `kind` "auto" chooses the chart (`choose_chart`); a named kind is drawn as asked, its subgroups
    below n ≥ 0.5/p̄ marked `too_small` (not judged). `parts` [(ts_ms, 0/1)] in time order feed the
    per-part charts of rare defects. Phase I leaves out-of-control subgroups out of the limits
    (`iterate`, the default) and charts every subgroup against them.
    """
    groups = [g for g in groups if g.inspected > 0]
    if not groups:
        return Report(by, "p" if kind == "auto" else kind, scope, (), None, "— (no data, no limits)")
    if limits is not None and kind == "auto":
        kind = limits.kind  # Phase II draws the chart its limits were frozen for
    if kind == "auto":
        choice, pooled = choose_chart(groups, by=by, has_parts=parts is not None)
    else:
        counts, sizes = _counts(kind, groups)
        n_min = None
        if kind in ("p", "np", "laney_p", "u") and sum(counts):  # from the Phase I centre, as for "auto"
            n_min = n_min_for(sum(counts) / sum(sizes))
            big = [i for i, n in enumerate(sizes) if n >= (n_min or 1)]
            if len(big) >= 2 and kind != "np":
                center = spc.phase_one(kind, [counts[i] for i in big], [sizes[i] for i in big]).limits.center
                n_min = n_min_for(center) or n_min
        choice, pooled = ChartChoice(kind, f"{kind} chart as asked" + (
            f"; subgroups under n = 0.5/p̄ = {n_min} parts are not judged." if n_min and n_min > 1 else "."), n_min), \
            [(g, 1) for g in groups]
    kind = choice.kind
    rules = tuple(rules) if rules is not None else default_rules(kind)
    if choice.per_part:
        return _per_part_report(groups, parts or [], by=by, scope=scope, choice=choice, rules=rules,
                                limits=limits, iterate=iterate, phase_note=phase_note, tz=tz)
    judged = [i for i, (g, _) in enumerate(pooled) if choice.n_min is None or g.inspected >= choice.n_min]
    sub = [pooled[i][0] for i in judged]
    rows: list[ReportRow] = []
    if not sub:
        rows = [_row(g, k, None, None, kind, False, g.defective / g.inspected) for g, k in pooled]
        return Report(by, kind, scope, tuple(rows), None, "— (no subgroup large enough to judge)", choice=choice,
                      rules=rules)
    counts, sizes = _counts(kind, sub)
    if limits is None:
        one = spc.phase_one(kind, counts, sizes, iterate=iterate, rules=rules)
        ch = one.chart
        excluded = set(one.excluded)
        phase = f"I (limits from {len(sub) - len(excluded)} of {len(sub)} {by}s" + (
            f"; {len(excluded)} out-of-control left out)" if excluded else ")")
    else:
        ch, excluded = spc.phase_two(limits, counts, sizes, rules=rules), set()
        phase = f"II (frozen limits{phase_note})"
    at = {i: j for j, i in enumerate(judged)}
    for i, (g, k) in enumerate(pooled):
        j = at.get(i)
        if j is None:
            rows.append(_row(g, k, None, None, kind, False, g.defective / g.inspected))
        else:
            rows.append(_row(g, k, ch.points[j], ch, kind, j not in excluded and limits is None, ch.points[j].value))
    return Report(by, kind, scope, tuple(rows), ch, phase, choice=choice, rules=rules)


def _per_part_report(groups: Sequence[Subgroup], parts: Sequence[tuple[int, int]], *, by: str, scope: str,
                     choice: ChartChoice, rules: tuple[str, ...], limits: spc.Limits | None, iterate: bool,
                     phase_note: str, tz: str) -> Report:
    """G chart over the defective parts, Bernoulli CUSUM over every part."""
    zone = ZoneInfo(tz)
    flags = [int(x) for _, x in parts]
    gaps = spc.gaps_between(flags)
    when = [ts for ts, x in parts if x]
    mean_n = sum(g.inspected for g in groups) / len(groups)

    def label(ts: int) -> str:
        return dt.datetime.fromtimestamp(ts / 1000, zone).strftime("%Y-%m-%d %H:%M")

    if len(gaps) < 2:
        phase = "— (fewer than 2 defective parts: no G chart)"
        return Report(by, "g", scope, (), None, phase, choice=choice, rules=rules)
    if limits is None:
        one = spc.phase_one("g", gaps, None, iterate=iterate, rules=rules)
        ch, excluded = one.chart, set(one.excluded)
        phase = f"I (limits from {len(gaps) - len(excluded)} of {len(gaps)} gaps" + (
            f"; {len(excluded)} out-of-control left out)" if excluded else ")")
    else:
        ch, excluded = spc.phase_two(limits, gaps, None, rules=rules), set()
        phase = f"II (frozen limits{phase_note})"
    rows = []
    for pt, ts in zip(ch.points, when):
        vs = ch.violations_at(pt.index)
        g = int(pt.value)
        rows.append(ReportRow(label(ts), ts, g + 1, 1, 1 / (g + 1), 1 / (g + 1), pt.lcl, pt.center, pt.ucl,
                              tuple(v.rule for v in vs), pt.value, pt.z, spc.side_text(pt.z, "g"),
                              spc.classify(vs, "g"), pt.index not in excluded and limits is None, 1))
    p0 = 1.0 / (ch.limits.center + 1.0)
    cusum = spc.bernoulli_cusum(flags, p0, arl0=ARL0_SUBGROUPS * mean_n) if p0 < 0.5 else None
    labels = tuple(label(parts[i][0]) for i in cusum.signals) if cusum else ()
    return Report(by, "g", scope, tuple(rows), ch, phase, choice=choice, rules=rules, cusum=cusum, cusum_labels=labels)


def _pct_chart(kind: str) -> bool:
    return kind in ("p", "laney_p")


STATUS_MARK = {"alarm": "!! ", "improvement": "?+ ", "pattern": "?~ ", "too_small": "-- "}


def render_table(rep: Report) -> str:
    """Fixed-width table a quality engineer reads at a glance."""
    lines = [rep.title, rep.subtitle, f"Phase {rep.phase}", ""]
    if not rep.rows:
        return "\n".join(lines + ["no inspected parts in this range" if rep.chart is None and not rep.choice
                                   or "no data" in rep.phase else "nothing to chart"])
    pct = _pct_chart(rep.chart_kind)
    g = rep.chart_kind == "g"
    head = (f"{'period':<24} {'inspected':>9} {'defective':>9} {'rate':>8} {'def/part':>8} "
            f"{'value' if g else 'LCL':>8} {'LCL' if g else 'CL':>8} {'CL' if g else 'UCL':>8}{' ' * 9 + 'UCL' if g else ''}  side   rules")

    def fmt(v: float | None) -> str:
        if v is None:
            return f"{'—':>8}"
        return f"{100 * v:7.2f}%" if pct else f"{v:8.4g}" if g else f"{v:8.4f}"

    lines += [head, "-" * len(head)]
    for r in rep.rows:
        mark = STATUS_MARK.get(r.status, "")
        what = ",".join(r.violations) if r.violations else ("n too small" if r.status == "too_small" else "")
        lims = f"{fmt(r.value)} {fmt(r.lcl)} {fmt(r.cl)} {fmt(r.ucl)}" if g else f"{fmt(r.lcl)} {fmt(r.cl)} {fmt(r.ucl)}"
        lines.append(f"{r.period:<24} {r.inspected:>9} {r.defective:>9} {100 * r.rate:7.2f}% {r.defects_per_part:8.4f} "
                     f"{lims}  {r.side or '—':<6} {mark}{what}".rstrip())
    if not g:
        tot_n = sum(r.inspected for r in rep.rows)
        tot_d = sum(r.defective for r in rep.rows)
        tot_c = sum(r.defects_per_part * r.inspected for r in rep.rows)
        lines += ["-" * len(head), f"{'total':<24} {tot_n:>9} {tot_d:>9} {100 * tot_d / tot_n:7.2f}% {tot_c / tot_n:8.4f}"]
    else:
        lines.append("-" * len(head))
    unit = "defective parts" if g else f"{rep.by}s"
    alarms = rep.alarms
    lines.append(f"{len(alarms)} of {len(rep.rows)} {unit} out of control (worse)" + (
        ": " + "; ".join(f"{r.period} {','.join(r.violations)}" for r in alarms) if alarms else ""))
    better = [r for r in rep.rows if r.status in ("improvement", "pattern")]
    if better:
        lines.append(f"{len(better)} possible improvement(s)/pattern(s) to verify (not alarms): "
                     + "; ".join(f"{r.period} {','.join(r.violations)}" for r in better))
    small = [r for r in rep.rows if r.status == "too_small"]
    if small:
        lines.append(f"{len(small)} {unit} under n = {rep.choice.n_min if rep.choice else '?'} parts not judged")
    if rep.cusum is not None:
        c = rep.cusum
        lines.append(f"Bernoulli CUSUM part by part (p0 {100 * c.p0:.3f}% → p1 {100 * c.p1:.3f}%, h {c.h:.3f}, "
                     f"in-control ARL {c.arl0:.0f} parts): " + (
                         f"{len(c.signals)} signal(s) at " + ", ".join(rep.cusum_labels) if c.signals else "no signal"))
    if rep.pareto:
        lines += ["", "defects by class: " + ", ".join(f"{c} {n}" for c, n in rep.pareto)]
    return "\n".join(lines)


CSV_COLUMNS = ("period", "start_ms", "inspected", "defective", "rate", "defects_per_part", "value", "lcl", "cl", "ucl",
               "z", "side", "status", "violations", "in_limits", "periods")


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"


def render_csv(rep: Report) -> str:
    """One line per point: its counts, limits, side of the centre line, status and the rules that fired."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rep.rows:
        w.writerow([r.period, r.start_ms, r.inspected, r.defective, f"{r.rate:.6f}", f"{r.defects_per_part:.6f}",
                    _num(r.value), _num(r.lcl), _num(r.cl), _num(r.ucl), _num(r.z), r.side, r.status,
                    " ".join(r.violations), int(r.in_limits), r.periods])
    return buf.getvalue()


def _finite(v: float | None) -> float | str | None:
    if v is None or math.isfinite(v):
        return v
    return "inf" if v > 0 else "-inf"


def render_json(rep: Report) -> str:
    doc = {
        "title": rep.title, "subtitle": rep.subtitle, "by": rep.by, "chart": rep.chart_kind, "scope": rep.scope,
        "phase": rep.phase, "rules": list(rep.rules),
        "choice": asdict(rep.choice) if rep.choice else None,
        "rows": [{**r._asdict(), "z": _finite(r.z), "violations": list(r.violations),
                  "rule_text": [spc.RULE_TEXT[v] for v in r.violations]} for r in rep.rows],
        "limits": asdict(rep.chart.limits) if rep.chart else None,
        "cusum": None if rep.cusum is None else {
            "p0": rep.cusum.p0, "p1": rep.cusum.p1, "h": rep.cusum.h, "gamma": rep.cusum.gamma,
            "arl0_parts": rep.cusum.arl0, "signals": list(rep.cusum_labels)},
        "pareto": [{"defect_class": c, "defects": n} for c, n in rep.pareto],
    }
    return json.dumps(doc, indent=2)


STATUS_STYLE = {  # marker colour and legend text per status
    "alarm": ("#d62728", "out of control (worse)"),
    "improvement": ("#2ca02c", "possible improvement to verify"),
    "pattern": ("#9467bd", "pattern to verify"),
    "too_small": ("#b0b0b0", "too few parts: not judged"),
}


def plot_chart(rep: Report, path: str) -> None:
    """Control chart PNG: points in time order, centre line, UCL (red, dashed) and LCL (blue, dotted),
    alarms red, possible improvements green, unjudged subgroups grey; the subtitle says why this chart.

    Raises:
        OSError: the folder of `path` does not exist or is not writable.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(16.0, max(9.0, 0.3 * len(rep.rows) + 4)), 5.4), dpi=110)
    try:
        if not rep.rows:
            ax.text(0.5, 0.5, "no inspected parts in this range", ha="center", va="center", transform=ax.transAxes)
        else:
            pct = _pct_chart(rep.chart_kind)
            scale = 100.0 if pct else 1.0
            x = list(range(len(rep.rows)))
            y = [r.value * scale for r in rep.rows]
            nan = float("nan")

            def line(attr: str) -> list[float]:
                return [nan if getattr(r, attr) is None else getattr(r, attr) * scale for r in rep.rows]

            ucl, lcl, cl = line("ucl"), line("lcl"), line("cl")
            ax.step(x, ucl, where="mid", color="#d62728", lw=1.3, ls="--", label="UCL")
            ax.step(x, lcl, where="mid", color="#1f77b4", lw=1.3, ls=":", label="LCL")
            c0 = next((c for c in cl if c == c), 0.0)
            ax.step(x, cl, where="mid", color="#2f7d32", lw=1.4,
                    label=f"CL {c0:.3g}{'%' if pct else ''}" + (" (median)" if rep.chart_kind == "g" else ""))
            ax.plot(x, y, color="#555555", marker="o", ms=4, lw=0.9, label="subgroup" if rep.chart_kind != "g" else "gap")
            top = max([v for v in y + ucl if v == v] or [1.0])
            for status, (colour, text) in STATUS_STYLE.items():
                idx = [i for i, r in enumerate(rep.rows) if r.status == status]
                if not idx:
                    continue
                face = "white" if status == "too_small" else colour
                ax.scatter([x[i] for i in idx], [y[i] for i in idx], s=60, facecolors=face, edgecolors=colour,
                           zorder=5, label=text)
                if status in ("alarm", "improvement", "pattern"):
                    for k, i in enumerate(idx):  # alternate heights so neighbouring labels do not overlap
                        ax.annotate(",".join(rep.rows[i].violations), (x[i], y[i]), textcoords="offset points",
                                    xytext=(0, 8 + 9 * (k % 2)), ha="center", fontsize=7, color=colour)
            step = max(1, len(x) // 24)
            ax.set_xticks(x[::step])
            ax.set_xticklabels([r.period for r in rep.rows][::step], rotation=45, ha="right", fontsize=7)
            ax.set_ylabel({"p": "fraction defective (%)", "laney_p": "fraction defective (%)", "u": "defects per part",
                           "np": "defective parts", "c": "defects", "g": "good parts between defective parts"}[rep.chart_kind])
            ax.set_xlabel("defective part (time)" if rep.chart_kind == "g" else rep.by)
            ax.set_ylim(0, top * 1.22 or 1.0)  # headroom for the rule labels
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", ncol=4, framealpha=0.9)
        import textwrap

        why = "\n".join(textwrap.wrap(rep.subtitle, 150))
        ax.set_title(f"{rep.title} — Phase {rep.phase}\n{why}", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# -- the library form of `defectstream report` -----------------------------------------------
class FilterCheck(NamedTuple):
    """What the data knows of a report's filters: `unknown` (no line/camera of that name in the run, ever) and
    `unseen` (a class never recorded in the run: its rates are 0, which may be right)."""

    unknown: list[str]
    unseen: list[str]


def _listed(values: Sequence[str], limit: int = 12) -> str:
    vals = sorted(set(values))
    return ", ".join(vals[:limit]) + (f" … ({len(vals)} in all)" if len(vals) > limit else "") if vals else "none"


def check_filters(ex: Executor, run_id: str, *, line: str | None = None, cameras: Sequence[str] = (),
                  defect_class: str | None = None) -> FilterCheck:
    """Compare the line/camera/class filters with what run `run_id` ever recorded (any time range)."""
    from streams.spc.queries import known_classes_sql, known_scopes_sql

    unknown, unseen = [], []
    if line is not None or cameras:
        rows = ex.query(known_scopes_sql(run_id))
        lines = {r[0] for r in rows}
        cams = {r[1] for r in rows if line is None or r[0] == line}
        if line is not None and line not in lines:
            unknown.append(f"no line {line!r} in run {run_id} (lines: {_listed(lines)})")
        else:
            for c in cameras:
                if c not in cams:
                    where = f" on line {line}" if line is not None else ""
                    unknown.append(f"no camera {c!r}{where} in run {run_id} (cameras: {_listed(cams)})")
    if defect_class is not None:
        classes = [r[0] for r in ex.query(known_classes_sql(run_id))]
        if defect_class not in classes:
            unseen.append(f"class {defect_class!r} was never recorded in run {run_id} (recorded: {_listed(classes)}); "
                          "its rates are 0")
    return FilterCheck(unknown, unseen)


def scope_text(f: ReportFilters) -> str:
    parts = [f"line {f.line}" if f.line else "all lines"]
    if isinstance(f.camera, tuple):
        parts.append(f"cameras {', '.join(f.camera)}")
    elif f.camera:
        parts.append(f"camera {f.camera}")
    if f.defect_class:
        parts.append(f"class {f.defect_class}")
    if f.run_id != "production":
        parts.append(f"run {f.run_id}")
    return ", ".join(parts)


def make_report(ex: Executor, plant: PlantSettings, by: By, filters: ReportFilters, *, kind: spc.ChartKind | str = "auto",
                baseline: tuple[int, int] | None = None, iterate: bool = True,
                rules: Sequence[str] | None = None) -> Report:
    """Query and judge: the library form of `defectstream report`.

    With "auto", the per-part sequence is read only when the subgroups call for the rare-defect charts.
    """
    groups = fetch_subgroups(ex, by, filters, plant)
    limits, note = None, ""
    live = [g for g in groups if g.inspected > 0]
    parts = None
    if kind == "auto" and live:
        choice, _ = choose_chart(live, by=by)
        kind = choice.kind if not choice.per_part else "auto"
        if choice.per_part:
            parts = [(int(ts), int(d)) for ts, d in ex.query(part_sequence_sql(filters, PER_PART_LIMIT))]
    if baseline is not None:
        bf = ReportFilters(baseline[0], baseline[1], filters.run_id, filters.line, filters.camera, filters.defect_class)
        base = [g for g in fetch_subgroups(ex, by, bf, plant) if g.inspected > 0]
        if base and parts is None and kind != "auto":
            counts, sizes = _counts(kind, base)
            limits = spc.phase_one(kind, counts, sizes, iterate=True).limits
            note = f" from {len(base)} baseline {by}s"
        elif base and parts is not None:
            seq = [int(d) for _ts, d in ex.query(part_sequence_sql(bf, PER_PART_LIMIT))]
            gaps = spc.gaps_between(seq)
            if len(gaps) >= 2:
                limits = spc.phase_one("g", gaps, None, iterate=True, rules=rules or spc.G_DEFAULT_RULES).limits
                note = f" from {len(gaps)} baseline gaps"
    rep = build_report(groups, by=by, scope=scope_text(filters), kind=kind, limits=limits, iterate=iterate,
                       rules=rules, phase_note=note, parts=parts, tz=plant.timezone)
    pareto = tuple((str(c), int(n)) for c, n in ex.query(pareto_sql(filters)))
    return replace(rep, pareto=pareto)
