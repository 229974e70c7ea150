"""The replay gate of `models promote --require-replay RUN`: is the candidate no worse than production on
the parts reviewers judged?

Ground truth is the reviewed labels: a part is *defective* when the boxes its frames' labels leave
(`streams.review.export.frame_boxes`) are not empty, *good* when it was judged and none are left.
Both models are judged on the same reviewed parts, production by its own verdicts, the candidate by
the verdicts of its replay run `RUN`:

* recall = FAIL verdicts among defective parts;
* false alarms per 100 parts = 100 × FAIL verdicts on good parts / reviewed parts.

The decision (pure, `decide`) is a one-sided non-inferiority check with Wilson score bounds at
`confidence` (default 95 %): the candidate passes only when

* the lower Wilson bound of its recall ≥ production's recall − `recall_margin` (default 0.05), and
* the upper Wilson bound of its false-alarm rate ≤ production's rate + `false_alarm_margin` / 100
  (default 2 per 100 parts), and
* at least `min_defective` defective and `min_parts` reviewed parts were replayed (fewer prove nothing).

So the burden of proof is on the candidate: with few reviewed parts the bounds are wide and the gate
refuses, saying how many more it needs to see. Every reason is printed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable, NamedTuple, Sequence

from sinks.sql import Executor


class SideCounts(NamedTuple):
    """One model on the reviewed parts."""

    defective_parts: int
    caught: int  # FAIL on a defective part
    parts: int  # reviewed parts (defective + good)
    false_alarms: int  # FAIL on a good part

    @property
    def recall(self) -> float:
        return self.caught / self.defective_parts if self.defective_parts else float("nan")

    @property
    def false_alarms_per_100(self) -> float:
        return 100.0 * self.false_alarms / self.parts if self.parts else float("nan")


@dataclass(frozen=True)
class Margins:
    recall_margin: float = 0.05
    false_alarm_margin: float = 2.0  # per 100 parts
    confidence: float = 0.95
    min_defective: int = 10
    min_parts: int = 20


@dataclass
class GateDecision:
    allowed: bool
    production: SideCounts
    candidate: SideCounts
    margins: Margins
    recall_lower: float = float("nan")
    false_alarms_upper_per_100: float = float("nan")
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def side(s: SideCounts) -> dict[str, Any]:
            return {**s._asdict(), "recall": _r(s.recall), "false_alarms_per_100": _r(s.false_alarms_per_100)}

        return {"allowed": self.allowed, "production": side(self.production), "candidate": side(self.candidate),
                "candidate_recall_lower_bound": _r(self.recall_lower),
                "candidate_false_alarms_per_100_upper_bound": _r(self.false_alarms_upper_per_100),
                "margins": self.margins.__dict__, "reasons": self.reasons}


def _r(v: float) -> float | None:
    return None if v != v else round(v, 4)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a binomial proportion k/n at `confidence` each."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def decide(production: SideCounts, candidate: SideCounts, margins: Margins = Margins()) -> GateDecision:
    """Allow the candidate only when it is proven no worse than production (module doc); the reasons say why."""
    d = GateDecision(True, production, candidate, margins)
    conf = f"{100 * margins.confidence:.0f} %"
    if candidate.defective_parts < margins.min_defective or candidate.parts < margins.min_parts:
        d.allowed = False
        d.reasons.append(f"too few reviewed parts replayed: {candidate.defective_parts} defective and {candidate.parts} in all; "
                         f"the gate needs at least {margins.min_defective} defective and {margins.min_parts} in all")
    lo, _hi = wilson(candidate.caught, candidate.defective_parts, margins.confidence)
    d.recall_lower = lo
    need = production.recall - margins.recall_margin if production.defective_parts else 0.0
    if candidate.defective_parts:
        ok = lo >= need
        d.reasons.append(
            f"recall: candidate {candidate.caught}/{candidate.defective_parts} = {candidate.recall:.3f} (one-sided {conf} "
            f"lower bound {lo:.3f}) vs production {production.recall:.3f} − margin {margins.recall_margin:.3f} = {need:.3f}: "
            + ("no worse" if ok else "NOT proven no worse"))
        d.allowed &= ok
    _lo, hi = wilson(candidate.false_alarms, candidate.parts, margins.confidence)
    d.false_alarms_upper_per_100 = 100 * hi
    limit = production.false_alarms_per_100 + margins.false_alarm_margin if production.parts else margins.false_alarm_margin
    if candidate.parts:
        ok = 100 * hi <= limit
        d.reasons.append(
            f"false alarms: candidate {candidate.false_alarms} on {candidate.parts} parts = {candidate.false_alarms_per_100:.2f} "
            f"per 100 (one-sided {conf} upper bound {100 * hi:.2f}) vs production {production.false_alarms_per_100:.2f} + "
            f"margin {margins.false_alarm_margin:.2f} = {limit:.2f}: " + ("no worse" if ok else "NOT proven no worse"))
        d.allowed &= ok
    return d


def count_side(truth: dict[tuple[str, str], bool], verdicts: dict[tuple[str, str], str],
               parts: Iterable[tuple[str, str]]) -> SideCounts:
    """Counts of one model's verdicts on `parts` (keys of both `truth` and `verdicts`)."""
    keys = list(parts)
    defective = [k for k in keys if truth[k]]
    return SideCounts(len(defective), sum(verdicts[k] == "FAIL" for k in defective), len(keys),
                      sum(verdicts[k] == "FAIL" for k in keys if not truth[k]))


def part_truth(labels: Sequence[Any]) -> dict[tuple[str, str], bool]:
    """(camera, part) → defective, from the reviewed labels of its frames."""
    from streams.review.export import frame_boxes

    by_frame: dict[str, list[Any]] = {}
    part_of: dict[str, tuple[str, str]] = {}
    for lb in labels:
        by_frame.setdefault(lb.frame_id, []).append(lb)
        part_of[lb.frame_id] = (lb.camera_id, lb.part_id)
    out: dict[tuple[str, str], bool] = {}
    for fid, lbs in by_frame.items():
        key = part_of[fid]
        out[key] = out.get(key, False) or bool(frame_boxes(lbs))
    return out


class GateInputs(NamedTuple):
    run_id: str
    run_model_version: str
    reviewed_parts: int
    replayed_reviewed_parts: int
    production: SideCounts
    candidate: SideCounts


def gather(ex: Executor, run_id: str, plant: Any) -> GateInputs:
    """Both sides' counts on the reviewed parts of the replay's range and cameras.

    Raises:
        LookupError: `run_id` is no recorded replay run.
    """
    from streams.replay.queries import fetch_parts
    from streams.replay.runlog import load_run_record
    from streams.review.queries import fetch_labels_in_range

    rec = load_run_record(ex, run_id)
    if rec is None:
        raise LookupError(f"no replay run {run_id!r} in model_runs (run `defectstream replay --run-id {run_id}` first)")
    truth = part_truth(fetch_labels_in_range(ex, rec.from_ms, rec.until_ms, rec.cameras))
    scope = {"cameras": rec.cameras}
    prod = {(p.camera_id, p.part_id): p.verdict for p in fetch_parts(ex, "production", plant, **scope)}
    cand = {(p.camera_id, p.part_id): p.verdict for p in fetch_parts(ex, run_id, plant, **scope)}
    both = sorted(k for k in truth if k in prod and k in cand)
    return GateInputs(run_id, rec.model_version, len(truth), len(both), count_side(truth, prod, both),
                      count_side(truth, cand, both))


def check_replay(ex: Executor, run_id: str, model_version: str, plant: Any, margins: Margins = Margins()) -> GateDecision:
    """The whole gate: the run must have replayed `model_version`, then `decide` on the reviewed parts."""
    inputs = gather(ex, run_id, plant)
    d = decide(inputs.production, inputs.candidate, margins)
    d.reasons.insert(0, f"replay {run_id}: {inputs.replayed_reviewed_parts} of {inputs.reviewed_parts} reviewed parts "
                        "were inspected by both production and the replay")
    if inputs.run_model_version != model_version:
        d.allowed = False
        d.reasons.insert(0, f"replay {run_id} ran model {inputs.run_model_version}, not {model_version}: replay the model "
                            "you promote")
    return d
