"""The queries of `defectstream compare`: both runs' part verdicts and confirmed defects from ClickHouse.

One verdict per part (its winning delivery) and only that close's defects (the tables are
ReplacingMergeTree: correct before merges too), the
baseline restricted to the parts the candidate inspected; the comparison itself is
`streams.replay.comparison` (pure), rendering and the command `streams.commands.compare`. The SQL
runs unchanged on ClickHouse 18.16 and current releases.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Sequence
from zoneinfo import ZoneInfo

from sinks.sql import Executor, render
from streams.replay.comparison import Comparison, DefectRow, PartRow, compare_runs, score_sides
from streams.settings import PlantSettings
from streams.spc.defect_set import winning_defects_sql


def _time_filter(since_ms: int | None, until_ms: int | None) -> tuple[str, dict[str, Any]]:
    conds, params = [], {}
    if since_ms is not None:
        conds.append("first_frame_ts >= {since_ms}")
        params["since_ms"] = since_ms
    if until_ms is not None:
        conds.append("first_frame_ts < {until_ms}")
        params["until_ms"] = until_ms
    return "".join(f" AND {c}" for c in conds), params


def _scope(run_id: str, restrict_to: str | None, cameras: Sequence[str] | None, since_ms: int | None,
           until_ms: int | None) -> tuple[str, dict[str, Any]]:
    """WHERE clause: the run, optionally only parts that run `restrict_to` inspected."""
    extra, params = _time_filter(since_ms, until_ms)
    where = "run_id = {run}" + extra
    params["run"] = run_id
    if cameras:
        where += " AND camera_id IN (" + ", ".join("{cam%d}" % i for i in range(len(cameras))) + ")"
        params.update({f"cam{i}": c for i, c in enumerate(cameras)})
    if restrict_to is not None:
        where += " AND part_id IN (SELECT part_id FROM parts WHERE run_id = {restrict})"
        params["restrict"] = restrict_to
    return where, params


_PART_COLUMNS = ("camera_id", "part_id", "verdict", "shift_name", "shift_start", "first_frame_ts", "defects_total",
                 "model_version", "emission_id")


def _winning_verdicts(where: str) -> str:
    """One row per part (camera × part id of the run, whatever the model version that closed it): the
    columns of its winning delivery (highest `version`, ties broken by `emission_id`, then the row) and
    its verdict's `event_id`, as in `streams.spc.queries.deduped_parts_sql`."""
    cols = ", ".join(_PART_COLUMNS)
    return f"""
    SELECT tupleElement(p_row, {len(_PART_COLUMNS) + 1}) AS event_id, p_row
    FROM (
        SELECT argMax(p_tuple, (version, emission_id, p_tuple)) AS p_row
        FROM (SELECT camera_id, part_id, version, emission_id, tuple({cols}, event_id) AS p_tuple
              FROM parts WHERE {where})
        GROUP BY camera_id, part_id
    )"""


def parts_sql(run_id: str, *, restrict_to: str | None = None, cameras: Sequence[str] | None = None,
              since_ms: int | None = None, until_ms: int | None = None) -> str:
    """Rendered SQL: one row per part of `run_id` (its winning verdict's event id, camera, part, verdict,
    shift, ts, defects, model), every column from the part's winning verdict."""
    where, params = _scope(run_id, restrict_to, cameras, since_ms, until_ms)
    picked = ", ".join(f"tupleElement(p_row, {i})" for i in range(1, len(_PART_COLUMNS)))
    return render(f"""
SELECT event_id, {picked}
FROM ({_winning_verdicts(where)}
)""", params)


def defects_sql(run_id: str, *, restrict_to: str | None = None, cameras: Sequence[str] | None = None,
                since_ms: int | None = None, until_ms: int | None = None) -> str:
    """Rendered SQL: one row per defect event id of `run_id`, only from the close of its part whose verdict
    wins (a part closed again after a crash shows one defect set, never both; rows written before
    emission ids, '' on both sides, keep all their defects)."""
    where, params = _scope(run_id, restrict_to, cameras, since_ms, until_ms)
    part_where, _ = _scope(run_id, restrict_to, cameras, None, None)
    cols = ("camera_id", "part_id", "track_id", "defect_class", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
            "best_frame_seq", "first_frame_ts", "last_frame_ts", "severity", "confidence")
    picked = ", ".join(f"tupleElement(d_row, {i})" for i in range(1, len(cols) + 1))
    winners = ("SELECT tupleElement(p_row, 1), tupleElement(p_row, 2), tupleElement(p_row, 8), tupleElement(p_row, 9)"
               f" FROM ({_winning_verdicts(part_where)}\n)")
    return render(f"""
SELECT event_id, {picked}
FROM ({winning_defects_sql(cols, where, winners)}
)""", params)


def _shift_label(name: str, start_ms: int, tz: ZoneInfo) -> str:
    local = dt.datetime.fromtimestamp(int(start_ms) / 1000, tz)
    return f"{local:%Y-%m-%d %H:%M} {name}".strip()


def fetch_parts(ex: Executor, run_id: str, plant: PlantSettings, **scope: Any) -> list[PartRow]:
    tz = ZoneInfo(plant.timezone)
    return [PartRow(cam, pid, v, _shift_label(s_name, s_start, tz), int(ts), int(n), mv)
            for _id, cam, pid, v, s_name, s_start, ts, n, mv in ex.query(parts_sql(run_id, **scope))]


def fetch_defects(ex: Executor, run_id: str, **scope: Any) -> list[DefectRow]:
    return [DefectRow(eid, cam, pid, int(tid), cls, (int(x0), int(y0), int(x1), int(y1)), int(best), int(t0), int(t1),
                      float(sev), float(conf))
            for eid, cam, pid, tid, cls, x0, y0, x1, y1, best, t0, t1, sev, conf in ex.query(defects_sql(run_id, **scope))]


def run_compare(ex: Executor, baseline: str, candidate: str, plant: PlantSettings, *, by: str = "shift",
                cameras: Sequence[str] | None = None, since_ms: int | None = None, until_ms: int | None = None,
                ground_truth: Sequence[Any] | None = None, iou_min: float = 0.3, travel_axis: str = "-x") -> Comparison:
    """Fetch both runs (baseline restricted to the candidate's parts) and compare them."""
    scope = {"cameras": cameras, "since_ms": since_ms, "until_ms": until_ms}
    cand_parts = fetch_parts(ex, candidate, plant, **scope)
    cand_defects = fetch_defects(ex, candidate, **scope)
    base_parts = fetch_parts(ex, baseline, plant, restrict_to=candidate, **scope)
    base_defects = fetch_defects(ex, baseline, restrict_to=candidate, **scope)
    cmp = compare_runs(baseline, candidate, baseline_parts=base_parts, candidate_parts=cand_parts,
                       baseline_defects=base_defects, candidate_defects=cand_defects, by=by,  # type: ignore[arg-type]
                       iou_min=iou_min, travel_axis=travel_axis)
    if ground_truth and cmp.parts:
        cmp.ground_truth = score_sides(cmp, ground_truth, {baseline: base_defects, candidate: cand_defects})
    return cmp
