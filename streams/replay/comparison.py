"""Comparison of two inspection runs over the same parts (pure: rows in, a typed result out).

A *run* is the set of part verdicts and confirmed defects one model produced (`production` or a
replay). Parts are matched by (camera, part id); within a part, the two sides' defects are matched
one-to-one, greedily by score:

* on the same best frame: box IoU >= `iou_min`;
* on different best frames (the part has moved between them): the defects' tracks must overlap in
  time and their boxes overlap across the travel axis (1-D IoU >= `iou_min` on the axis the part
  does not move along) — the same physical defect stays at the same cross-axis position.

A same-class pair scores higher than a different-class pair, so a class change is reported only
when no same-class defect fits. Unmatched defects are "found only by" one side.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, NamedTuple, Sequence

from models.core.types import box_iou

GroupBy = Literal["shift", "camera", "class"]
VERDICTS = ("PASS", "FAIL")


class PartRow(NamedTuple):
    """One de-duplicated `parts` row."""

    camera_id: str
    part_id: str
    verdict: str
    shift_label: str  # e.g. "2025-11-21 early" (group key for --by shift)
    first_frame_ts: int
    defects_total: int
    model_version: str = ""


class DefectRow(NamedTuple):
    """One de-duplicated `defects` row."""

    event_id: str
    camera_id: str
    part_id: str
    track_id: int
    defect_class: str
    bbox: tuple[int, int, int, int]
    best_frame_seq: int
    first_frame_ts: int
    last_frame_ts: int
    severity: float = 0.0
    confidence: float = 0.0


class DefectMatch(NamedTuple):
    baseline: DefectRow
    candidate: DefectRow
    score: float


class PartDiff(NamedTuple):
    """How the two runs saw one part."""

    camera_id: str
    part_id: str
    shift_label: str
    baseline_verdict: str
    candidate_verdict: str
    matched: tuple[DefectMatch, ...]
    only_baseline: tuple[DefectRow, ...]
    only_candidate: tuple[DefectRow, ...]

    @property
    def class_changes(self) -> list[tuple[str, str]]:
        return [(m.baseline.defect_class, m.candidate.defect_class) for m in self.matched
                if m.baseline.defect_class != m.candidate.defect_class]


class GroupStats(NamedTuple):
    """Per group (shift, camera or defect class): rates of both sides and the defect diffs."""

    group: str
    parts: int
    baseline_defective: int
    candidate_defective: int
    baseline_defects: int
    candidate_defects: int
    only_baseline: int
    only_candidate: int
    class_changes: int

    @property
    def baseline_rate(self) -> float:
        return self.baseline_defective / self.parts if self.parts else 0.0

    @property
    def candidate_rate(self) -> float:
        return self.candidate_defective / self.parts if self.parts else 0.0

    @property
    def rate_diff(self) -> float:
        return self.candidate_rate - self.baseline_rate


class SideScore(NamedTuple):
    """One side against ground truth: defect level (scoring.score_part) and part level."""

    defect_precision: float
    defect_recall: float
    class_accuracy: float
    part_precision: float  # of parts the run reported a defect on, share that has one
    part_recall: float  # of parts with a defect, share the run reported a defect on
    gt_parts: int
    gt_defects: int


@dataclass
class Comparison:
    """The result of `compare_runs`."""

    baseline: str
    candidate: str
    by: str
    parts: list[PartDiff] = field(default_factory=list)
    only_in_baseline_parts: int = 0
    only_in_candidate_parts: int = 0
    groups: list[GroupStats] = field(default_factory=list)
    shifts: list[GroupStats] = field(default_factory=list)
    ground_truth: dict[str, SideScore] = field(default_factory=dict)

    @property
    def confusion(self) -> dict[str, dict[str, int]]:
        """baseline verdict → candidate verdict → parts."""
        m = {b: {c: 0 for c in VERDICTS} for b in VERDICTS}
        for p in self.parts:
            m.setdefault(p.baseline_verdict, {c: 0 for c in VERDICTS})
            m[p.baseline_verdict][p.candidate_verdict] = m[p.baseline_verdict].get(p.candidate_verdict, 0) + 1
        return m

    @property
    def agreement(self) -> float:
        if not self.parts:
            return 1.0
        return sum(p.baseline_verdict == p.candidate_verdict for p in self.parts) / len(self.parts)

    @property
    def defects_matched(self) -> int:
        return sum(len(p.matched) for p in self.parts)

    @property
    def defects_only_baseline(self) -> int:
        return sum(len(p.only_baseline) for p in self.parts)

    @property
    def defects_only_candidate(self) -> int:
        return sum(len(p.only_candidate) for p in self.parts)

    @property
    def class_changes(self) -> Counter:
        return Counter(c for p in self.parts for c in p.class_changes)

    def to_dict(self) -> dict[str, Any]:
        def group(g: GroupStats) -> dict[str, Any]:
            return {**g._asdict(), "baseline_rate": round(g.baseline_rate, 6),
                    "candidate_rate": round(g.candidate_rate, 6), "rate_diff": round(g.rate_diff, 6)}

        return {
            "baseline": self.baseline,
            "candidate": self.candidate,
            "by": self.by,
            "parts_compared": len(self.parts),
            "parts_only_in_baseline": self.only_in_baseline_parts,
            "parts_only_in_candidate": self.only_in_candidate_parts,
            "verdict_agreement": round(self.agreement, 6),
            "verdict_confusion": self.confusion,
            "defects": {"matched": self.defects_matched, "only_baseline": self.defects_only_baseline,
                        "only_candidate": self.defects_only_candidate},
            "class_changes": [{"baseline": b, "candidate": c, "count": n}
                              for (b, c), n in sorted(self.class_changes.items())],
            "groups": [group(g) for g in self.groups],
            "per_shift": [group(g) for g in self.shifts],
            "ground_truth": {k: {n: round(v, 6) if isinstance(v, float) else v for n, v in s._asdict().items()}
                             for k, s in self.ground_truth.items()},
            "verdict_changes": [
                {"camera_id": p.camera_id, "part_id": p.part_id, "baseline": p.baseline_verdict,
                 "candidate": p.candidate_verdict}
                for p in self.parts if p.baseline_verdict != p.candidate_verdict
            ],
        }


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------
def _iou_1d(a0: float, a1: float, b0: float, b1: float) -> float:
    inter = min(a1, b1) - max(a0, b0)
    if inter <= 0:
        return 0.0
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else 0.0


def match_score(a: DefectRow, b: DefectRow, *, iou_min: float = 0.3, travel_axis: str = "-x") -> float:
    """> 0 when `a` and `b` are the same physical defect (see module doc); higher is better."""
    if a.best_frame_seq == b.best_frame_seq:
        ov = box_iou(a.bbox, b.bbox)
        s = ov if ov >= iou_min else 0.0
    else:
        if min(a.last_frame_ts, b.last_frame_ts) < max(a.first_frame_ts, b.first_frame_ts):
            return 0.0  # the tracks never saw the part at the same time
        if travel_axis.endswith("x"):  # moves along x: compare y extents
            ov = _iou_1d(a.bbox[1], a.bbox[3], b.bbox[1], b.bbox[3])
        else:
            ov = _iou_1d(a.bbox[0], a.bbox[2], b.bbox[0], b.bbox[2])
        s = 0.5 * ov if ov >= iou_min else 0.0  # weaker evidence than a same-frame IoU
    if s > 0 and a.defect_class == b.defect_class:
        s += 1.0
    return s


def match_defects(baseline: Sequence[DefectRow], candidate: Sequence[DefectRow], *, iou_min: float = 0.3,
                  travel_axis: str = "-x") -> tuple[list[DefectMatch], list[DefectRow], list[DefectRow]]:
    """Greedy one-to-one matching of one part's defects: (matches, only baseline, only candidate)."""
    pairs = []
    for i, a in enumerate(baseline):
        for j, b in enumerate(candidate):
            s = match_score(a, b, iou_min=iou_min, travel_axis=travel_axis)
            if s > 0:
                pairs.append((s, i, j))
    pairs.sort(key=lambda t: (-t[0], t[1], t[2]))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for s, i, j in pairs:
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        matches.append(DefectMatch(baseline[i], candidate[j], s))
    return (matches, [a for i, a in enumerate(baseline) if i not in used_a],
            [b for j, b in enumerate(candidate) if j not in used_b])


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------
def _by_part(rows: Iterable[Any]) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        out.setdefault((r.camera_id, r.part_id), []).append(r)
    return out


def _one_part(rows: list[PartRow]) -> PartRow:
    # Several verdicts for one part in one run (a model switch re-inspected it): the latest model's.
    return max(rows, key=lambda r: (r.model_version, r.verdict))


def _group_stats(key: str, diffs: Sequence[PartDiff], by: GroupBy) -> GroupStats:
    def defective(verdicts_side: str, p: PartDiff) -> bool:
        return (p.baseline_verdict if verdicts_side == "b" else p.candidate_verdict) == "FAIL"

    if by == "class":
        # parts with a defect of this class on each side; defects of this class only
        def cls_defects(p: PartDiff, side: str) -> int:
            rows = [m.baseline if side == "b" else m.candidate for m in p.matched]
            rows += list(p.only_baseline if side == "b" else p.only_candidate)
            return sum(1 for r in rows if r.defect_class == key)

        return GroupStats(
            key, len(diffs), sum(1 for p in diffs if cls_defects(p, "b")), sum(1 for p in diffs if cls_defects(p, "c")),
            sum(cls_defects(p, "b") for p in diffs), sum(cls_defects(p, "c") for p in diffs),
            sum(1 for p in diffs for r in p.only_baseline if r.defect_class == key),
            sum(1 for p in diffs for r in p.only_candidate if r.defect_class == key),
            sum(1 for p in diffs for b, c in p.class_changes if key in (b, c)),
        )
    return GroupStats(
        key, len(diffs), sum(defective("b", p) for p in diffs), sum(defective("c", p) for p in diffs),
        sum(len(p.matched) + len(p.only_baseline) for p in diffs),
        sum(len(p.matched) + len(p.only_candidate) for p in diffs),
        sum(len(p.only_baseline) for p in diffs), sum(len(p.only_candidate) for p in diffs),
        sum(len(p.class_changes) for p in diffs),
    )


def group_stats(diffs: Sequence[PartDiff], by: GroupBy) -> list[GroupStats]:
    """Per shift / camera / defect class (sorted by key)."""
    if by == "class":
        classes = sorted({r.defect_class for p in diffs
                          for r in [*(m.baseline for m in p.matched), *(m.candidate for m in p.matched),
                                    *p.only_baseline, *p.only_candidate]})
        return [_group_stats(c, diffs, by) for c in classes]
    groups: dict[str, list[PartDiff]] = {}
    for p in diffs:
        groups.setdefault(p.shift_label if by == "shift" else p.camera_id, []).append(p)
    return [_group_stats(k, v, by) for k, v in sorted(groups.items())]


def compare_runs(baseline: str, candidate: str, *, baseline_parts: Iterable[PartRow],
                 candidate_parts: Iterable[PartRow], baseline_defects: Iterable[DefectRow],
                 candidate_defects: Iterable[DefectRow], by: GroupBy = "shift", iou_min: float = 0.3,
                 travel_axis: str = "-x") -> Comparison:
    """Compare two runs on the parts both inspected.

    Args:
        baseline / candidate: run ids (labels only).
        *_parts / *_defects: de-duplicated rows of each run (any order).
        by: grouping of `Comparison.groups`; `Comparison.shifts` always holds the per-shift rows.
    """
    bp = {k: _one_part(v) for k, v in _by_part(baseline_parts).items()}
    cp = {k: _one_part(v) for k, v in _by_part(candidate_parts).items()}
    bd = _by_part(baseline_defects)
    cd = _by_part(candidate_defects)
    common = sorted(set(bp) & set(cp), key=lambda k: (cp[k].first_frame_ts, k))
    diffs = []
    for key in common:
        b, c = bp[key], cp[key]
        matched, only_b, only_c = match_defects(sorted(bd.get(key, []), key=lambda r: r.track_id),
                                                sorted(cd.get(key, []), key=lambda r: r.track_id),
                                                iou_min=iou_min, travel_axis=travel_axis)
        diffs.append(PartDiff(key[0], key[1], c.shift_label or b.shift_label, b.verdict, c.verdict,
                              tuple(matched), tuple(only_b), tuple(only_c)))
    return Comparison(
        baseline=baseline, candidate=candidate, by=by, parts=diffs,
        only_in_baseline_parts=len(set(bp) - set(cp)), only_in_candidate_parts=len(set(cp) - set(bp)),
        groups=group_stats(diffs, by), shifts=group_stats(diffs, "shift"),
    )


def score_sides(comparison: Comparison, gt_parts: Sequence[Any], defects: dict[str, Iterable[DefectRow]]) -> dict[str, SideScore]:
    """Precision/recall of each side against simulator ground truth, on the compared parts.

    Defect level reuses `streams.sim.scoring.score_part` (a defect matches a ground-truth defect of the
    same part on its best frame); part level asks "did the run report any defect on a part that has
    one". Parts without ground truth are left out.
    """
    from streams.sim.scoring import Reported, Score, score_part

    compared = {p.part_id for p in comparison.parts}
    gts = {g.part_id: g for g in gt_parts if g.part_id in compared}
    out: dict[str, SideScore] = {}
    for side, rows in defects.items():
        per_part: dict[str, list[Any]] = {pid: [] for pid in gts}
        for r in rows:
            g = gts.get(r.part_id)
            if g is None:
                continue
            try:
                fi = g.frame_seqs.index(int(r.best_frame_seq))
            except ValueError:
                fi = -1
            per_part[r.part_id].append(Reported(r.part_id, fi, r.bbox, r.defect_class))
        s = Score()
        tp_parts = fp_parts = fn_parts = 0
        for pid, g in gts.items():
            score_part(g, per_part[pid], s, per_frame=False)
            has, said = bool(g.defects), bool(per_part[pid])
            tp_parts += has and said
            fp_parts += said and not has
            fn_parts += has and not said
        matched = s.reported - s.false_alarms
        out[side] = SideScore(
            defect_precision=matched / s.reported if s.reported else 1.0,
            defect_recall=s.recall,
            class_accuracy=s.class_accuracy,
            part_precision=tp_parts / (tp_parts + fp_parts) if tp_parts + fp_parts else 1.0,
            part_recall=tp_parts / (tp_parts + fn_parts) if tp_parts + fn_parts else 1.0,
            gt_parts=len(gts),
            gt_defects=s.gt_defects,
        )
    return out
