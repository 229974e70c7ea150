"""Every SQL query of the SPC report and the monitor, and the catalogue of them the dialect tests run.

The queries read de-duplicated parts (one verdict per part of a run, whatever the model version
that closed it: see `deduped_parts_sql`) and run unchanged on ClickHouse 18.16 and current releases (no window
functions, no WITH FILL, no DateTime64). `query_catalog` renders each of them, so one test can
run every statement on the ClickHouse server and on chdb (the current engine): a query that only
works on one of them fails there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from sinks.sql import Executor, render
from streams.spc.defect_set import winning_defects_sql  # noqa: F401  (also streams.spc.queries.winning_defects_sql)

By = Literal["shift", "hour", "day"]
HOUR_MS = 3_600_000

_PERIOD = {
    # (group key, label) per --by; s_date is the plant-local date the shift starts on.
    # Aliases never reuse a column name: ClickHouse substitutes aliases into WHERE.
    "shift": ("s_start", "any(s_name)"),
    "hour": (f"intDiv(ts, {HOUR_MS}) * {HOUR_MS}", "''"),
    "day": ("toUInt64(toYYYYMMDD(s_date))", "''"),
}


@dataclass(frozen=True)
class ReportFilters:
    """Which parts a report (or a monitor window) counts. Times are UTC epoch ms, `until` exclusive."""

    since_ms: int
    until_ms: int
    run_id: str = "production"
    line: str | None = None
    camera: str | tuple[str, ...] | None = None  # one camera, or several (`--camera` repeated)
    defect_class: str | None = None

    def where(self) -> tuple[str, dict]:
        conds = ["run_id = {run_id}", "first_frame_ts >= {since_ms}", "first_frame_ts < {until_ms}"]
        params: dict = {"run_id": self.run_id, "since_ms": self.since_ms, "until_ms": self.until_ms}
        if self.line is not None:
            conds.append("line_id = {line}")
            params["line"] = self.line
        if isinstance(self.camera, tuple):
            names = [f"camera_{i}" for i in range(len(self.camera))]
            conds.append("camera_id IN (" + ", ".join("{" + n + "}" for n in names) + ")")
            params.update(zip(names, self.camera))
        elif self.camera is not None:
            conds.append("camera_id = {camera}")
            params["camera"] = self.camera
        return " AND ".join(conds), params


def _part_measures(defect_class: str | None) -> tuple[str, str]:
    """SQL of (defective 0/1, defects) of one parts row, for all classes or one class."""
    if defect_class is None:
        return "verdict = 'FAIL'", "defects_total"
    n = "arraySum(arrayFilter((c, k) -> k = {defect_class}, defect_class_counts, defect_classes))"
    return f"{n} > 0", n


def deduped_parts_sql(filters: ReportFilters, extra_columns: Sequence[str] = ()) -> tuple[str, dict]:
    """Subquery: one row per part (camera × part id, within the run), all columns of its latest verdict.

    A part has one verdict whatever the model version: a part emitted under v2 and closed again
    under v1 by the worker that took over (v2 not loadable there) has two verdict event ids (the
    id hashes the model version) and counts once. Columns: event_id (of the winning verdict), ts,
    s_start, s_name, s_date, line, camera, defective, defects (+ x_<extra>). Every column comes from
    the same row: the delivery with the highest `version` (the later close), ties broken by the
    `emission_id` (so every query picks the same close of the part, whichever columns it reads, and
    `defect_set_sql` its defects), then by the row (deterministic whatever the read order, unlike `any()`).
    """
    where, params = filters.where()
    defective, defects = _part_measures(filters.defect_class)
    if filters.defect_class is not None:
        params["defect_class"] = filters.defect_class
    cols = [("first_frame_ts", "ts"), ("shift_start", "s_start"), ("shift_name", "s_name"), ("shift_date", "s_date"),
            ("line_id", "line"), ("camera_id", "camera"), (defective, "defective"), (defects, "defects"),
            *((c, f"x_{c}") for c in extra_columns)]
    picked = ",\n        ".join(f"tupleElement(v_row, {i}) AS {alias}" for i, (_e, alias) in enumerate(cols, 1))
    row = ", ".join(e for e, _a in cols)
    # grouped by (camera, part), not by event_id: the verdict's event id differs per model version.
    # The row of the greatest (version, emission_id, row) is the row argMax(row, (version, emission_id, row))
    # picks; max() of that one tuple reads it without a second copy of the row (~30% faster on 18.16).
    sql = f"""
    SELECT
        tupleElement(v_row, {len(cols) + 1}) AS event_id,
        {picked}
    FROM
    (
        SELECT tupleElement(max(tuple(version, emission_id, v_tuple)), 3) AS v_row
        FROM (SELECT camera_id, part_id, version, emission_id, tuple({row}, event_id) AS v_tuple
              FROM parts WHERE {where})
        GROUP BY camera_id, part_id
    )"""
    return sql, params


def subgroups_sql(by: By, filters: ReportFilters) -> str:
    """Rendered SQL: per period key → label, inspected, defective, defects (de-duplicated parts)."""
    key, label = _PERIOD[by]
    inner, params = deduped_parts_sql(filters)
    sql = f"""
SELECT
    {key} AS period,
    {label} AS label,
    count() AS inspected,
    sum(defective) AS defective,
    sum(defects) AS defects
FROM
({inner}
)
GROUP BY period
ORDER BY period"""
    return render(sql, params)


def part_sequence_sql(filters: ReportFilters, limit: int) -> str:
    """Rendered SQL: one row per de-duplicated part (time, 0/1 defective), in time order, at most `limit` rows.

    The per-part charts (G chart, Bernoulli CUSUM) of rare defects read it; ties in time are ordered
    by camera so every run reads the same sequence.
    """
    inner, params = deduped_parts_sql(filters)
    sql = f"""
SELECT ts, defective
FROM
({inner}
)
ORDER BY ts, camera, event_id
LIMIT {int(limit)}"""
    return render(sql, params)


def pareto_sql(filters: ReportFilters) -> str:
    """Rendered SQL: confirmed defects per class, most frequent first.

    Counted from each part's latest verdict (its per-class counts), so a part counts one defect set
    however often, under whichever model versions and track ids, it was re-emitted.
    """
    unfiltered = ReportFilters(filters.since_ms, filters.until_ms, filters.run_id, filters.line, filters.camera)
    inner, params = deduped_parts_sql(unfiltered, extra_columns=("defect_classes", "defect_class_counts"))
    sql = f"""
SELECT defect_class, sum(n_class) AS defects
FROM
({inner}
)
ARRAY JOIN x_defect_classes AS defect_class, x_defect_class_counts AS n_class
GROUP BY defect_class
HAVING defects > 0
ORDER BY defects DESC, defect_class"""
    return render(sql, params)


DEFECT_SET_COLUMNS = ("event_id", "camera_id", "line_id", "part_id", "track_id", "defect_class", "severity",
                      "confidence", "first_frame_ts", "shift_name", "shift_start")


def defect_set_sql(filters: ReportFilters) -> str:
    """Rendered SQL: the confirmed defects of the parts in `filters`, one defect set per part.

    One row per defect event id (columns `DEFECT_SET_COLUMNS`), only from the close of the part whose
    verdict wins in `deduped_parts_sql` (same camera, part, model version and `emission_id`): a part
    closed again after a crash with another defect set (other track ids, hence other defect ids)
    shows the defects of its winning verdict only, never those of both closes; a defect id re-emitted
    by both closes is taken from the winning one. Rows written before emission ids ('' on both sides)
    keep every defect of their part. A defect's time is never before its part's, so defects are
    read from `since_ms` on and the window is the parts'.
    """
    unfiltered = ReportFilters(filters.since_ms, filters.until_ms, filters.run_id, filters.line, filters.camera)
    inner, params = deduped_parts_sql(unfiltered, extra_columns=("part_id", "model_version", "emission_id"))
    conds = ["run_id = {run_id}", "first_frame_ts >= {since_ms}"]
    if filters.defect_class is not None:
        conds.append("defect_class = {defect_class}")
        params["defect_class"] = filters.defect_class
    cols = DEFECT_SET_COLUMNS[1:]
    picked = ", ".join(f"tupleElement(d_row, {i}) AS d_{c}" for i, c in enumerate(cols, 1))
    winners = f"SELECT camera, x_part_id, x_model_version, x_emission_id FROM ({inner}\n              )"
    sql = f"""
SELECT event_id, {picked}
FROM ({winning_defects_sql(cols, " AND ".join(conds), winners)}
)
ORDER BY d_camera_id, d_part_id, d_track_id, event_id"""
    return render(sql, params)


# -- monitor --------------------------------------------------------------------------------------
def _scoped_sql(filters: ReportFilters, bucket_ms: int | None) -> str:
    inner, params = deduped_parts_sql(filters, extra_columns=("model_version",))
    bucket = f"intDiv(ts, {int(bucket_ms)})" if bucket_ms else "0"
    sql = f"""
SELECT line, camera, {bucket} AS bucket, count() AS inspected, sum(defective) AS defective, any(x_model_version) AS mv
FROM
({inner}
)
GROUP BY line, camera, bucket
ORDER BY line, camera, bucket"""
    return render(sql, params)


def window_sql(run_id: str, start_ms: int, end_ms: int) -> str:
    """Rendered SQL: inspected/defective per (line, camera) in [start, end)."""
    return _scoped_sql(ReportFilters(start_ms, end_ms, run_id), None)


def baseline_sql(run_id: str, start_ms: int, end_ms: int, subgroup_ms: int) -> str:
    """Rendered SQL: inspected/defective per (line, camera, subgroup bucket) in [start, end)."""
    return _scoped_sql(ReportFilters(start_ms, end_ms, run_id), subgroup_ms)


def ingest_mark_sql(run_id: str) -> str:
    """Rendered SQL: the newest `ingested_at` of the run's parts (the monitor's ingest watermark; 0 when none)."""
    return render("SELECT max(ingested_at) FROM parts WHERE run_id = {run_id}", {"run_id": run_id})


def late_rows_sql(run_id: str, ingested_after_ms: int, since_ms: int, until_ms: int) -> str:
    """Rendered SQL: (count, min and max first_frame_ts) of the run's part rows ingested after
    `ingested_after_ms` whose capture time lies in [since, until): where late rows fell."""
    return render(
        "SELECT count(), min(first_frame_ts), max(first_frame_ts) FROM parts WHERE run_id = {run_id} "
        "AND ingested_at > {after} AND first_frame_ts >= {since} AND first_frame_ts < {until}",
        {"run_id": run_id, "after": ingested_after_ms, "since": since_ms, "until": until_ms},
    )


def known_scopes_sql(run_id: str) -> str:
    """Rendered SQL: every (line, camera) the run has parts of, any time (to tell an unknown filter from an empty range)."""
    return render("SELECT DISTINCT line_id, camera_id FROM parts WHERE run_id = {run_id} ORDER BY line_id, camera_id",
                  {"run_id": run_id})


def known_classes_sql(run_id: str) -> str:
    """Rendered SQL: every defect class the run has recorded, any time."""
    return render("SELECT DISTINCT defect_class FROM defects WHERE run_id = {run_id} ORDER BY defect_class",
                  {"run_id": run_id})


def alert_state_sql(run_id: str) -> str:
    """Rendered SQL: per scope, the kind of the latest alert and the time of the latest SPIKE."""
    return render(
        """
SELECT a_line, a_camera, argMax(a_kind, a_created) AS last_kind, argMax(a_rule, a_created) AS last_rule,
       maxIf(a_created, a_kind = 'SPIKE') AS last_spike
FROM
(
    SELECT alert_id, any(line_id) AS a_line, any(camera_id) AS a_camera, any(kind) AS a_kind,
           any(rule) AS a_rule, any(created_at) AS a_created
    FROM alerts
    WHERE run_id = {run_id} AND defect_class = ''
    GROUP BY alert_id
)
GROUP BY a_line, a_camera""",
        {"run_id": run_id},
    )


# -- the catalogue --------------------------------------------------------------------------------
def query_catalog(start_ms: int, end_ms: int) -> dict[str, str]:
    """Every SELECT of the report, the monitor and `compare`, rendered for [start, end): name → SQL."""
    out: dict[str, str] = {}
    variants = {
        "all": ReportFilters(start_ms, end_ms),
        "line": ReportFilters(start_ms, end_ms, line="line-1"),
        "camera": ReportFilters(start_ms, end_ms, line="line-1", camera="cam-1"),
        "class": ReportFilters(start_ms, end_ms, defect_class="crack"),
        "cameras": ReportFilters(start_ms, end_ms, camera=("cam-1", "cam'2")),
        "quote": ReportFilters(start_ms, end_ms, run_id="it's a \\ replay", camera="cam'1"),
    }
    for by in ("shift", "hour", "day"):
        for name, f in variants.items():
            out[f"report_{by}_{name}"] = subgroups_sql(by, f)
    for name, f in variants.items():
        out[f"pareto_{name}"] = pareto_sql(f)
        out[f"part_sequence_{name}"] = part_sequence_sql(f, 1000)
        out[f"defect_set_{name}"] = defect_set_sql(f)
    out["monitor_window"] = window_sql("production", start_ms, end_ms)
    out["monitor_baseline"] = baseline_sql("production", start_ms, end_ms, 3_600_000)
    out["monitor_alert_state"] = alert_state_sql("production")
    out["monitor_ingest_mark"] = ingest_mark_sql("production")
    out["monitor_late_rows"] = late_rows_sql("production", 0, start_ms, end_ms)
    out["known_scopes"] = known_scopes_sql("it's a \\ replay")
    out["known_classes"] = known_classes_sql("production")
    from streams.replay import queries as compare_queries  # `defectstream compare` reads the same tables

    scope = {"cameras": ["cam-1", "cam'1"], "since_ms": start_ms, "until_ms": end_ms}
    out["compare_parts"] = compare_queries.parts_sql("it's a \\ replay", restrict_to="production", **scope)
    out["compare_defects"] = compare_queries.defects_sql("it's a \\ replay", restrict_to="production", **scope)
    out["compare_defects_all"] = compare_queries.defects_sql("production")
    out["model_runs"] = (
        "SELECT run_id, model_version, min(first_event_ts), max(last_event_ts) FROM model_runs "
        "GROUP BY run_id, model_version ORDER BY run_id, model_version"
    )
    return out


# Queries that read when rows were stored, not what they say: a re-sent batch changes their answer on purpose.
INGEST_QUERIES = frozenset({"monitor_ingest_mark", "monitor_late_rows"})


def catalog_answers(ex: Executor, start_ms: int, end_ms: int) -> dict[str, list[tuple]]:
    """The answer of every catalogue query (rows sorted), to compare a database before and after a change
    (`INGEST_QUERIES`, which read the ingest times, left out)."""
    return {name: sorted(ex.query(sql), key=repr) for name, sql in query_catalog(start_ms, end_ms).items()
            if name not in INGEST_QUERIES}
