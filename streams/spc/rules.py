"""Statistical process control for attribute data: p, np, c, u and Laney p′ charts, run rules, Phase I/II.

Pure functions, no I/O. Formulas as in Montgomery, *Introduction to Statistical Quality Control*
(ch. 7) and Laney (2002), *Improved control charts for attributes*, Quality Engineering 14(4):

* p chart: p̄ = Σd / Σn, limits p̄ ± k·√(p̄(1−p̄)/nᵢ) — they step with each subgroup's size.
* np chart: constant n, n·p̄ ± k·√(n·p̄(1−p̄)).
* c chart: c̄ ± k·√c̄ (defects per constant inspection unit).
* u chart: ū = Σc / Σn, ū ± k·√(ū/nᵢ) (defects per part).
* Laney p′: zᵢ = (pᵢ − p̄)/σ_pᵢ, σ_z = mean moving range of z / 1.128, limits p̄ ± k·σ_pᵢ·σ_z —
  for the very large subgroups of an automated line, where the p chart's limits get so narrow
  that between-subgroup variation alone puts every point out of control.

* G chart (rare defects): good parts between defective parts, geometric probability limits
  (Kaminsky et al. 1992; Benneyan 2001); Bernoulli CUSUM part by part (Reynolds & Stoumbos 1999).

Sides: a rule firing on the worse side (above the centre for p, np, c, u, p′; below it for G) is an
alarm; on the better side it is a *possible improvement to verify*, never an alarm (`classify`).
Lower limits are clipped at 0 (and p-chart upper limits at 1). Rules work on each point's z-score
(distance from the centre line in its own sigma units), so they hold with stepped limits too.
Phase I estimates limits from a baseline (optionally dropping out-of-control subgroups and
re-estimating); Phase II charts new subgroups against those frozen limits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Sequence

ChartKind = Literal["p", "np", "c", "u", "laney_p", "g"]
D2_MR = 1.128  # d2 for moving ranges of span 2

WE_RULES = ("WE1", "WE2", "WE3", "WE4")
NELSON_RULES = ("N1", "N2", "N3", "N4", "N5", "N6", "N7", "N8")
RULE_TEXT = {
    "WE1": "1 point beyond 3σ",
    "WE2": "2 of 3 points beyond 2σ, same side",
    "WE3": "4 of 5 points beyond 1σ, same side",
    "WE4": "8 points in a row on one side of the centre line",
    "N1": "1 point beyond 3σ",
    "N2": "9 points in a row on one side of the centre line",
    "N3": "6 points in a row steadily increasing or decreasing",
    "N4": "14 points in a row alternating up and down",
    "N5": "2 of 3 points beyond 2σ, same side",
    "N6": "4 of 5 points beyond 1σ, same side",
    "N7": "15 points in a row within 1σ",
    "N8": "8 points in a row beyond 1σ, either side",
}


class ChartPoint(NamedTuple):
    """One subgroup on a chart."""

    index: int
    value: float  # the plotted statistic (p, np, c or u)
    n: float  # subgroup size (parts inspected, or inspection units)
    center: float
    lcl: float
    ucl: float
    sigma: float  # sigma of this point's statistic (Laney: already times σ_z)
    z: float  # (value − centre) / sigma; ±inf when sigma is 0 and value ≠ centre


class RuleViolation(NamedTuple):
    """A run rule that fired at a point (the point that completed the pattern)."""

    index: int
    rule: str  # WE1..WE4, N1..N8
    side: int  # +1 above centre / rising, −1 below / falling, 0 either (N4, N7, N8)

    @property
    def text(self) -> str:
        return RULE_TEXT[self.rule]


@dataclass(frozen=True)
class Limits:
    """Frozen chart parameters (the result of Phase I, the input of Phase II)."""

    kind: ChartKind
    center: float  # p̄ (p, laney_p), c̄ (c), ū (u); for np the fraction p̄ too
    sigma_z: float = 1.0  # Laney's between-subgroup inflation; 1 for the classic charts
    k: float = 3.0  # sigma multiple of the limits
    n: float | None = None  # the constant subgroup size of an np chart


@dataclass(frozen=True)
class ControlChart:
    """A chart: its points with their limits, and the rule violations found on them."""

    limits: Limits
    points: tuple[ChartPoint, ...]
    violations: tuple[RuleViolation, ...] = ()

    @property
    def kind(self) -> ChartKind:
        return self.limits.kind

    @property
    def center(self) -> float:
        return self.points[0].center if self.points else self._center_value()

    def _center_value(self) -> float:
        lim = self.limits
        return lim.center * lim.n if lim.kind == "np" and lim.n else lim.center

    @property
    def out_of_control(self) -> tuple[int, ...]:
        """Indexes of points with any violation, in order."""
        return tuple(sorted({v.index for v in self.violations}))

    def beyond_limits(self) -> tuple[int, ...]:
        """Indexes of points outside their control limits."""
        return tuple(p.index for p in self.points if p.value > p.ucl or p.value < p.lcl)

    def violations_at(self, index: int) -> tuple[RuleViolation, ...]:
        return tuple(v for v in self.violations if v.index == index)

    def status(self, index: int) -> str:
        """`alarm`, `improvement`, `pattern` or `in_control` of a point (see `classify`)."""
        return classify(self.violations_at(index), self.kind)

    @property
    def alarms(self) -> tuple[int, ...]:
        """Indexes of points where a rule fired on the worse side: the only alarms of a chart."""
        return tuple(i for i in self.out_of_control if self.status(i) == "alarm")


# -- helpers -------------------------------------------------------------------------------
def _z(value: float, center: float, sigma: float) -> float:
    if sigma > 0:
        return (value - center) / sigma
    if math.isclose(value, center, rel_tol=0.0, abs_tol=1e-12):
        return 0.0
    return math.inf if value > center else -math.inf


def _check_lengths(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} counts but {len(b)} subgroup sizes")


def _point(i: int, value: float, n: float, center: float, sigma: float, k: float, upper_cap: float | None) -> ChartPoint:
    ucl = center + k * sigma
    if upper_cap is not None:
        ucl = min(ucl, upper_cap)
    lcl = max(0.0, center - k * sigma)
    return ChartPoint(i, value, n, center, lcl, ucl, sigma, _z(value, center, sigma))


def _finish(limits: Limits, points: list[ChartPoint], rules: Sequence[str]) -> ControlChart:
    return ControlChart(limits, tuple(points), tuple(evaluate_rules([p.z for p in points], rules)))


# -- charts --------------------------------------------------------------------------------
def p_chart(defective: Sequence[int], inspected: Sequence[int], *, limits: Limits | None = None,
            k: float = 3.0, rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Fraction-defective chart with limits that step with each subgroup's size.

    Args:
        defective: defective parts per subgroup.
        inspected: parts inspected per subgroup (> 0).
        limits: frozen Phase II limits (kind "p"); None = estimate p̄ from these subgroups.
    Raises:
        ValueError: lengths differ, a subgroup is empty, or defective > inspected.
    """
    _check_lengths(defective, inspected)
    if any(n <= 0 for n in inspected) or any(d < 0 or d > n for d, n in zip(defective, inspected)):
        raise ValueError("every subgroup needs 0 <= defective <= inspected and inspected > 0")
    if limits is None:
        limits = Limits("p", sum(defective) / sum(inspected) if inspected else 0.0, k=k)
    p = limits.center
    pts = [
        _point(i, d / n, n, p, math.sqrt(p * (1 - p) / n), limits.k, 1.0)
        for i, (d, n) in enumerate(zip(defective, inspected))
    ]
    return _finish(limits, pts, rules)


def np_chart(defective: Sequence[int], n: int, *, limits: Limits | None = None, k: float = 3.0,
             rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Number-defective chart for subgroups of one constant size `n`."""
    if n <= 0 or any(d < 0 or d > n for d in defective):
        raise ValueError("np chart needs n > 0 and 0 <= defective <= n")
    if limits is None:
        limits = Limits("np", sum(defective) / (n * len(defective)) if defective else 0.0, k=k, n=n)
    p = limits.center
    center, sigma = n * p, math.sqrt(n * p * (1 - p))
    pts = [_point(i, float(d), n, center, sigma, limits.k, float(n)) for i, d in enumerate(defective)]
    return _finish(limits, pts, rules)


def c_chart(counts: Sequence[int], *, limits: Limits | None = None, k: float = 3.0,
            rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Defects per (constant) inspection unit."""
    if any(c < 0 for c in counts):
        raise ValueError("counts must be >= 0")
    if limits is None:
        limits = Limits("c", sum(counts) / len(counts) if counts else 0.0, k=k)
    c = limits.center
    pts = [_point(i, float(x), 1, c, math.sqrt(c), limits.k, None) for i, x in enumerate(counts)]
    return _finish(limits, pts, rules)


def u_chart(defects: Sequence[int], units: Sequence[float], *, limits: Limits | None = None, k: float = 3.0,
            rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Defects per unit (per part) with limits stepping with the number of units inspected."""
    _check_lengths(defects, units)
    if any(n <= 0 for n in units) or any(c < 0 for c in defects):
        raise ValueError("u chart needs units > 0 and defects >= 0")
    if limits is None:
        limits = Limits("u", sum(defects) / sum(units) if units else 0.0, k=k)
    u = limits.center
    pts = [_point(i, c / n, n, u, math.sqrt(u / n), limits.k, None) for i, (c, n) in enumerate(zip(defects, units))]
    return _finish(limits, pts, rules)


def laney_sigma_z(defective: Sequence[int], inspected: Sequence[int], p_bar: float) -> float:
    """σ_z of Laney's p′ chart: mean moving range of the subgroups' z-scores / 1.128 (1.0 if < 2 points)."""
    if not 0 < p_bar < 1 or len(defective) < 2:
        return 1.0
    z = [(d / n - p_bar) / math.sqrt(p_bar * (1 - p_bar) / n) for d, n in zip(defective, inspected)]
    mr = [abs(b - a) for a, b in zip(z, z[1:])]
    return (sum(mr) / len(mr)) / D2_MR


def laney_p_chart(defective: Sequence[int], inspected: Sequence[int], *, limits: Limits | None = None,
                  k: float = 3.0, rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Laney p′ chart: p chart limits widened (or narrowed) by σ_z, for large subgroups."""
    _check_lengths(defective, inspected)
    if any(n <= 0 for n in inspected) or any(d < 0 or d > n for d, n in zip(defective, inspected)):
        raise ValueError("every subgroup needs 0 <= defective <= inspected and inspected > 0")
    if limits is None:
        p = sum(defective) / sum(inspected) if inspected else 0.0
        limits = Limits("laney_p", p, sigma_z=laney_sigma_z(defective, inspected, p), k=k)
    p, sz = limits.center, limits.sigma_z
    pts = [
        _point(i, d / n, n, p, math.sqrt(p * (1 - p) / n) * sz, limits.k, 1.0)
        for i, (d, n) in enumerate(zip(defective, inspected))
    ]
    return _finish(limits, pts, rules)


def chart(kind: ChartKind, counts: Sequence[int], sizes: Sequence[float] | None = None, *,
          limits: Limits | None = None, k: float = 3.0, rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Dispatch by kind: counts are defective parts (p, np, laney_p) or defects (c, u); sizes the n's."""
    if kind == "p":
        return p_chart(counts, sizes or [], limits=limits, k=k, rules=rules)
    if kind == "laney_p":
        return laney_p_chart(counts, sizes or [], limits=limits, k=k, rules=rules)
    if kind == "u":
        return u_chart(counts, sizes or [], limits=limits, k=k, rules=rules)
    if kind == "c":
        return c_chart(counts, limits=limits, k=k, rules=rules)
    if kind == "g":
        return g_chart(counts, limits=limits, k=k, rules=rules)
    if kind == "np":
        ns = set(sizes or [])
        if len(ns) > 1:
            raise ValueError("np chart needs one constant subgroup size; use a p chart")
        n = int(limits.n) if limits and limits.n else int(next(iter(ns)))
        return np_chart(counts, n, limits=limits, k=k, rules=rules)
    raise ValueError(f"unknown chart kind {kind!r}")


# -- run rules -----------------------------------------------------------------------------
def _side(z: float) -> int:
    return 1 if z > 0 else (-1 if z < 0 else 0)


def _k_of_m(z: Sequence[float], i: int, k: int, m: int, beyond: float) -> int:
    """Side (+1/−1) if point i and at least k of the (up to) m points ending at i are beyond `beyond`σ on its side."""
    s = _side(z[i])
    if s == 0 or abs(z[i]) <= beyond:
        return 0
    window = z[max(0, i - m + 1) : i + 1]  # the first points of a chart count too
    hits = sum(1 for v in window if _side(v) == s and abs(v) > beyond)
    return s if hits >= k else 0


def _run_same_side(z: Sequence[float], i: int, length: int) -> int:
    if i + 1 < length:
        return 0
    s = _side(z[i])
    if s == 0:
        return 0
    return s if all(_side(v) == s for v in z[i - length + 1 : i + 1]) else 0


def _trend(z: Sequence[float], i: int, length: int) -> int:
    if i + 1 < length:
        return 0
    w = z[i - length + 1 : i + 1]
    if all(b > a for a, b in zip(w, w[1:])):
        return 1
    if all(b < a for a, b in zip(w, w[1:])):
        return -1
    return 0


def _alternating(z: Sequence[float], i: int, length: int) -> bool:
    if i + 1 < length:
        return False
    w = z[i - length + 1 : i + 1]
    d = [b - a for a, b in zip(w, w[1:])]
    return all(x != 0 for x in d) and all((a > 0) != (b > 0) for a, b in zip(d, d[1:]))


def _check(rule: str, z: Sequence[float], i: int) -> int | None:
    """Side of a violation of `rule` completed at point i, or None."""
    if rule in ("WE1", "N1"):
        return _side(z[i]) if abs(z[i]) > 3 else None
    if rule in ("WE2", "N5"):
        return _k_of_m(z, i, 2, 3, 2.0) or None
    if rule in ("WE3", "N6"):
        return _k_of_m(z, i, 4, 5, 1.0) or None
    if rule == "WE4":
        return _run_same_side(z, i, 8) or None
    if rule == "N2":
        return _run_same_side(z, i, 9) or None
    if rule == "N3":
        return _trend(z, i, 6) or None
    if rule == "N4":
        return 0 if _alternating(z, i, 14) else None
    if rule == "N7":
        return 0 if i + 1 >= 15 and all(abs(v) < 1 for v in z[i - 14 : i + 1]) else None
    if rule == "N8":
        return 0 if i + 1 >= 8 and all(abs(v) > 1 for v in z[i - 7 : i + 1]) else None
    raise ValueError(f"unknown rule {rule!r}; known: {', '.join(WE_RULES + NELSON_RULES)}")


def evaluate_rules(z: Sequence[float], rules: Sequence[str] = WE_RULES) -> list[RuleViolation]:
    """Run rules over a sequence of z-scores (σ units from the centre line, in time order).

    Each violation names the point that completed the pattern. Rule names: `WE1`–`WE4`
    (Western Electric), `N1`–`N8` (Nelson); the shorthands `WE` and `NELSON` expand to all of them.
    """
    names: list[str] = []
    for r in rules:
        names.extend(WE_RULES if r == "WE" else NELSON_RULES if r == "NELSON" else (r,))
    out = []
    for i in range(len(z)):
        for r in names:
            side = _check(r, z, i)
            if side is not None:
                out.append(RuleViolation(i, r, side))
    return out


def western_electric(z: Sequence[float], rules: Sequence[str] = WE_RULES) -> list[RuleViolation]:
    """Western Electric rules 1–4 on z-scores."""
    return evaluate_rules(z, rules)


def nelson(z: Sequence[float], rules: Sequence[str] = NELSON_RULES) -> list[RuleViolation]:
    """Nelson rules 1–8 on z-scores."""
    return evaluate_rules(z, rules)


# -- Phase I / Phase II ---------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseOne:
    """Limits estimated from a baseline, with the subgroups left out of the estimate."""

    limits: Limits
    chart: ControlChart  # all baseline subgroups against the final limits
    excluded: tuple[int, ...] = field(default=())
    iterations: int = 1


def phase_one(kind: ChartKind, counts: Sequence[int], sizes: Sequence[float] | None = None, *,
              k: float = 3.0, iterate: bool = True, drop_rules: Sequence[str] = ("WE1",),
              max_iterations: int = 10, rules: Sequence[str] = ("WE1",)) -> PhaseOne:
    """Estimate control limits from a baseline.

    With `iterate`, subgroups violating `drop_rules` are excluded and the limits re-estimated until
    none is left (or `max_iterations`) — the textbook practice when the out-of-control subgroups
    have assignable causes. Without it, the limits are the trial limits of all subgroups.

    Raises:
        ValueError: bad counts/sizes, or every subgroup was excluded.
    """
    sizes_l = list(sizes) if sizes is not None else [1.0] * len(counts)
    keep = list(range(len(counts)))
    limits: Limits | None = None
    iterations = 0
    while True:
        iterations += 1
        sub = chart(kind, [counts[i] for i in keep], [sizes_l[i] for i in keep], k=k, rules=drop_rules)
        limits = sub.limits
        bad = {keep[i] for i in sub.out_of_control}
        if not iterate or not bad or iterations >= max_iterations:
            break
        keep = [i for i in keep if i not in bad]
        if not keep:
            raise ValueError("every baseline subgroup was out of control; no limits can be estimated")
    full = chart(kind, counts, sizes_l, limits=limits, rules=rules)
    kept = set(keep)
    excluded = tuple(i for i in range(len(counts)) if i not in kept)
    return PhaseOne(limits, full, excluded, iterations)


def phase_two(limits: Limits, counts: Sequence[int], sizes: Sequence[float] | None = None, *,
              rules: Sequence[str] = ("WE1",)) -> ControlChart:
    """Chart new subgroups against frozen limits (their centre and σ_z do not move)."""
    sizes_l = list(sizes) if sizes is not None else [1.0] * len(counts)
    return chart(limits.kind, counts, sizes_l, limits=limits, k=limits.k, rules=rules)


# -- which side is worse, and what a violation means ------------------------------------------
ATTRIBUTE_DEFAULT_RULES = ("WE1",)  # Test 1 only: Minitab's default for P, NP, C and U charts
G_DEFAULT_RULES = ("WE1", "N2")  # Test 1 and 9 points on one side: Minitab's default for G charts
STATUS_TEXT = {
    "alarm": "out of control (worse)",
    "improvement": "possible improvement to verify",
    "pattern": "non-random pattern to verify",
    "in_control": "in control",
    "too_small": "subgroup too small to judge",
}


def worse_side(kind: str) -> int:
    """+1 when a larger statistic means more defects (p, np, c, u, p′), −1 for a G chart (fewer parts between defects)."""
    return -1 if kind == "g" else 1


def classify(violations: Sequence[RuleViolation], kind: str) -> str:
    """`alarm` (a rule fired on the worse side), `improvement` (only on the better side), `pattern` (a
    rule with no side: N4, N7, N8), or `in_control` (none fired). Only `alarm` is an alarm."""
    worse = worse_side(kind)
    sides = {v.side for v in violations}
    if worse in sides:
        return "alarm"
    if -worse in sides:
        return "improvement"
    return "pattern" if sides else "in_control"


def side_text(z: float, kind: str) -> str:
    """`above`/`below`/`on` the centre line."""
    return "above" if z > 0 else ("below" if z < 0 else "on")


# -- G chart (parts between defective parts) --------------------------------------------------
def _norm_score(prob: float) -> float:
    from statistics import NormalDist

    prob = min(max(prob, 1e-15), 1 - 1e-15)
    return NormalDist().inv_cdf(prob)


def geometric_quantile(p: float, prob: float) -> float:
    """Continuous quantile of the number of good parts before a defective one (geometric on 0, 1, …):
    the g with P(G ≤ g) = 1 − (1−p)^(g+1) = prob, floored at 0."""
    if not 0 < p < 1:
        return 0.0
    return max(0.0, math.log(1 - prob) / math.log(1 - p) - 1)


def g_chart(gaps: Sequence[int], *, limits: Limits | None = None, k: float = 3.0,
            rules: Sequence[str] = G_DEFAULT_RULES) -> ControlChart:
    """G chart: good parts between consecutive defective parts, for rare defects.

    The gaps of an in-control process are geometric with p̂ = 1/(ḡ + 1) (Kaminsky et al. 1992,
    *Statistical control charts based on a geometric distribution*, JQT 24(2)). The limits are
    the geometric's probability limits at the tail areas of ±k normal sigmas (0.135 % each for k = 3)
    and the centre line its median, as Benneyan (2001) and Minitab do: the geometric is so skewed
    that mean ± 3σ has no lower limit and 63 % of gaps fall below the mean, so runs against the
    mean would alarm all the time. A point's z is the normal score of its mid-CDF, so the run rules
    apply unchanged. Short gaps (below the centre line) mean more defects: the worse side is −1.
    """
    if any(g < 0 for g in gaps):
        raise ValueError("gaps must be >= 0")
    if limits is None:
        limits = Limits("g", sum(gaps) / len(gaps) if gaps else 0.0, k=k)
    gbar = limits.center
    p = 1.0 / (gbar + 1.0)
    tail = 1 - NormalCDF(limits.k)
    lcl, ucl = geometric_quantile(p, tail), geometric_quantile(p, 1 - tail)
    med = geometric_quantile(p, 0.5)
    sigma = math.sqrt(gbar * (gbar + 1.0))
    pts = []
    for i, g in enumerate(gaps):
        below = 1 - (1 - p) ** g  # P(G < g)
        at = p * (1 - p) ** g  # P(G = g)
        z = _norm_score(below + 0.5 * at) if p < 1 else 0.0
        pts.append(ChartPoint(i, float(g), 1, med, lcl, ucl, sigma, z))
    return _finish(limits, pts, rules)


def NormalCDF(x: float) -> float:  # noqa: N802 - mathematical name
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def gaps_between(defective: Sequence[int]) -> list[int]:
    """Good parts before each defective part of a per-part 0/1 sequence (the G chart's data)."""
    out, run = [], 0
    for x in defective:
        if x:
            out.append(run)
            run = 0
        else:
            run += 1
    return out


# -- Bernoulli CUSUM (part by part) -------------------------------------------------------------
@dataclass(frozen=True)
class Cusum:
    """A Bernoulli CUSUM over parts in time order (Reynolds & Stoumbos 1999)."""

    p0: float  # in-control fraction defective
    p1: float  # the fraction defective it is tuned to detect
    gamma: float  # reference value, 1/m
    m: int
    h: float  # decision limit
    arl0: float  # in-control average run length (parts) of this (γ, h), exact Markov chain
    stats: tuple[float, ...]  # B_t after each part
    signals: tuple[int, ...]  # part indexes where B_t ≥ h (the statistic restarts at 0 after each)


def cusum_gamma(p0: float, p1: float) -> float:
    """Reference value of the Bernoulli CUSUM: ln((1−p0)/(1−p1)) / ln(p1(1−p0) / (p0(1−p1)))."""
    return math.log((1 - p0) / (1 - p1)) / math.log(p1 * (1 - p0) / (p0 * (1 - p1)))


def cusum_arl(p: float, m: int, big_h: int) -> float:
    """Average parts to a signal from B = 0 when each part is defective with probability p.

    B lives on the lattice s/m (γ = 1/m): a defective part adds m − 1 steps, a good one takes one
    away (floored at 0); a signal is s ≥ H. Solves the Markov chain's ARL equations exactly.
    """
    import numpy as np

    a = np.eye(big_h)
    for s in range(big_h):
        up = s + m - 1
        if up < big_h:
            a[s, up] -= p
        a[s, max(0, s - 1)] -= 1 - p
    return float(np.linalg.solve(a, np.ones(big_h))[0])


def cusum_design(p0: float, p1: float, arl0: float, *, max_states: int = 3000) -> tuple[int, float, float]:
    """(m, h, ARL0) of the smallest decision limit h (a multiple of 1/m) whose in-control ARL ≥ `arl0`.

    The lattice is coarsened (a larger γ step) when it would need more than `max_states` states.
    """
    m = max(2, round(1 / cusum_gamma(p0, p1)))
    lo, hi = 1, m  # in lattice steps
    while cusum_arl(p0, m, hi) < arl0:
        lo, hi = hi, hi * 2
        if hi > max_states:
            hi = max_states
            break
    while hi - lo > max(1, m // 20):
        mid = (lo + hi) // 2
        if cusum_arl(p0, m, mid) >= arl0:
            hi = mid
        else:
            lo = mid
    return m, hi / m, cusum_arl(p0, m, hi)


def bernoulli_cusum(defective: Sequence[int], p0: float, *, p1: float | None = None, arl0: float = 10_000.0) -> Cusum:
    """Upper Bernoulli CUSUM B_t = max(0, B_{t−1} + x_t − γ), signal at B_t ≥ h (Reynolds & Stoumbos 1999,
    *A CUSUM chart for monitoring a proportion when inspecting continuously*, JQT 31(1)).

    It reads every part as it comes, so it needs no subgroups: the chart for defects too rare for a
    p chart. Tuned to detect p1 (default 2·p0); h is the smallest limit giving an in-control ARL of
    at least `arl0` parts. Only increases signal: it is one-sided on the worse side.
    Raises:
        ValueError: p0 not in (0, 1) or p1 not in (p0, 1).
    """
    p1 = min(2 * p0, (1 + p0) / 2) if p1 is None else p1
    if not 0 < p0 < 1 or not p0 < p1 < 1:
        raise ValueError(f"Bernoulli CUSUM needs 0 < p0 < p1 < 1 (p0={p0}, p1={p1})")
    m, h, arl = cusum_design(p0, p1, arl0)
    gamma = 1.0 / m
    b, stats, signals = 0.0, [], []
    for i, x in enumerate(defective):
        b = max(0.0, b + (1.0 if x else 0.0) - gamma)
        if b >= h - 1e-9:
            signals.append(i)
            stats.append(b)
            b = 0.0
        else:
            stats.append(b)
    return Cusum(p0, p1, gamma, m, h, arl, tuple(stats), tuple(signals))
