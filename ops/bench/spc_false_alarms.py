"""Benchmark: false alarms per 100 subgroups of the SPC report on simulated in-control processes; prints JSON.

Run: .venv/bin/python ops/bench/spc_false_alarms.py [--reps 200] [--subgroups 48] [--seed 1] [--out out/bench/spc.json]

Each scenario simulates an in-control process (nothing changes: every alarm is false) and judges it
the way `defectstream report` does by default (chart chosen from the data, Test 1, Phase I with
out-of-control subgroups left out); `legacy` judges the same data the old way (p chart on every
subgroup, Western Electric rules 1–4, trial limits), for comparison. Rates are alarms (worse side
only for the default; any rule for legacy, as it used to report them) per 100 subgroups; for the
per-part charts a subgroup is a period of parts and alarms count G chart alarms plus CUSUM signals.
`bound` is what the default must stay under (a 3σ Shewhart chart's 0.27 per 100 with room for
small-sample skew and Phase I estimation); `ok` says whether it did. Exit status 1 when one did not.
"""
from __future__ import annotations

import argparse
import math
import random
import sys

from streams.spc import report
from streams.spc import rules as spc

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out

BOUND = 1.0  # alarms per 100 in-control subgroups the default may raise at most

SCENARIOS = {
    # name: (parts per subgroup (lo, hi), p, between-subgroup log-sd of p)
    "demo_hourly_3_parts_p2pct": ((2, 4), 0.02, 0.0),
    "demo_hourly_3_parts_p10pct": ((2, 4), 0.10, 0.0),
    "shift_200_parts_p5pct": ((150, 250), 0.05, 0.0),
    "shift_20000_parts_overdispersed": ((18000, 22000), 0.03, 0.2),
    "hourly_60_parts_rare_p0.2pct": ((60, 60), 0.002, 0.0),
}


def _binomial(rnd: random.Random, n: int, p: float) -> int:
    if n * p > 50:  # normal approximation: exact enough here and keeps 20 000-part subgroups fast
        return max(0, min(n, round(rnd.gauss(n * p, math.sqrt(n * p * (1 - p))))))
    return sum(1 for _ in range(n) if rnd.random() < p)


def simulate(rnd: random.Random, sizes: tuple[int, int], p: float, spread: float, m: int):
    groups, parts, t = [], [], 0
    for i in range(m):
        n = rnd.randint(*sizes)
        pi = min(0.5, p * math.exp(rnd.gauss(0, spread))) if spread else p
        if n <= 500:
            flags = [int(rnd.random() < pi) for _ in range(n)]
            parts += [(t + j, x) for j, x in enumerate(flags)]
            d = sum(flags)
        else:
            d = _binomial(rnd, n, pi)
        t += n
        groups.append(report.Subgroup(i * 3_600_000, f"h{i}", n, d, d))
    return groups, parts


def run(reps: int, m: int, seed: int) -> dict:
    rnd = random.Random(seed)
    out = {}
    for name, (sizes, p, spread) in SCENARIOS.items():
        alarms = legacy = 0
        kinds: dict[str, int] = {}
        for _ in range(reps):
            groups, parts = simulate(rnd, sizes, p, spread, m)
            rep = report.build_report(groups, by="hour", scope="sim", parts=parts or None)
            kinds[rep.chart_kind] = kinds.get(rep.chart_kind, 0) + 1
            alarms += len(rep.alarms) + (len(rep.cusum.signals) if rep.cusum else 0)
            # the old report judged every subgroup, however small, and counted any rule on either side
            counts, n = [g.defective for g in groups], [g.inspected for g in groups]
            if sum(counts):
                legacy += len(spc.p_chart(counts, n, rules=spc.WE_RULES).out_of_control)
        rate = 100 * alarms / (reps * m)
        out[name] = {
            "false_alarms_per_100_subgroups": round(rate, 3),
            "legacy_false_alarms_per_100_subgroups": round(100 * legacy / (reps * m), 3),
            "charts_chosen": kinds, "bound": BOUND, "ok": rate <= BOUND,
        }
    return {"benchmark": "spc_false_alarms", "reps": reps, "subgroups": m, "seed": seed, "scenarios": out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=200, help="simulated processes per scenario (default 200)")
    ap.add_argument("--subgroups", type=int, default=48, help="subgroups per process (default 48)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    res = run(a.reps, a.subgroups, a.seed)
    emit(res, a.out)
    return 0 if all(s["ok"] for s in res["scenarios"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
