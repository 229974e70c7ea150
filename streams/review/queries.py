"""Every SQL statement of the review loop (web view, data set export, promotion gate), with typed rows.

Values are rendered as literals by `sinks.sql.render` (never formatted into the text by hand), so
the same text runs on the ClickHouse 18.16 test server, a current server and chdb. The statements
are plain SELECT / GROUP BY / argMax / LIMIT BY (no window functions, no DateTime64, no Map, no
JOIN): every table is ReplacingMergeTree and rows are de-duplicated by their id at read time,
so an answer never depends on whether ClickHouse merged yet. `query_catalog` renders each one for
the dialect tests.

Labels: one row per judgement (`labels`, migration 0006). A candidate is *done* once it has a
confirm / reject / relabel label; "missed" labels add boxes and leave the candidate in the queue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from schemas.events import deterministic_id
from sinks.sql import Executor, render

ACTIONS = ("confirm", "reject", "relabel", "missed")
DONE_ACTIONS = ("confirm", "reject", "relabel")


# ------------------------------------------------------------------------------------- typed rows
class Box(NamedTuple):
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


class Candidate(NamedTuple):
    """One pending entry of the review queue."""

    candidate_id: str
    frame_id: str
    reason: str
    score: float
    camera_id: str
    line_id: str
    part_id: str
    frame_seq: int
    capture_ts: int
    model_version: str
    defect_class: str
    confidence: float
    box: Box
    note: str
    created_at: int


class Detection(NamedTuple):
    defect_class: str
    confidence: float
    box: Box


class FrameInfo(NamedTuple):
    """A stored frame without its pixels."""

    frame_id: str
    camera_id: str
    line_id: str
    part_id: str
    frame_seq: int
    capture_ts: int
    encoding: str
    width: int
    height: int
    channels: int
    model_version: str
    run_id: str
    detections: tuple[Detection, ...]


class Label(NamedTuple):
    """One reviewer judgement."""

    label_id: str
    frame_id: str
    candidate_id: str
    camera_id: str
    line_id: str
    part_id: str
    action: str
    defect_class: str
    box: Box
    model_version: str
    reviewer: str
    created_at: int

    def row(self) -> tuple:
        """`labels` row (sinks.clickhouse.LABEL_COLUMNS); version = created_at."""
        return (self.label_id, self.frame_id, self.candidate_id, self.camera_id, self.line_id, self.part_id,
                self.action, self.defect_class, *self.box, self.model_version, self.reviewer, self.created_at,
                self.created_at)


def new_label(frame: FrameInfo, candidate_id: str, action: str, defect_class: str, box: Box, reviewer: str,
              created_at: int) -> Label:
    """A label with its deterministic id (the same form posted twice in one millisecond is one row)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown label action {action!r}: one of {', '.join(ACTIONS)}")
    lid = deterministic_id("label", frame.frame_id, candidate_id, reviewer, action, defect_class, *box, created_at)
    return Label(lid, frame.frame_id, candidate_id, frame.camera_id, frame.line_id, frame.part_id, action,
                 defect_class, box, frame.model_version, reviewer, created_at)


class PartVerdict(NamedTuple):
    run_id: str
    verdict: str
    model_version: str
    defects_total: int
    closed_reason: str
    first_frame_ts: int
    shift_name: str
    emission_id: str


class DefectInfo(NamedTuple):
    event_id: str
    run_id: str
    camera_id: str
    line_id: str
    part_id: str
    defect_class: str
    confidence: float
    severity: float
    box: Box
    best_frame_seq: int
    first_frame_ts: int
    model_version: str
    shift_name: str
    emission_id: str
    frames_seen: int
    frames_total: int


@dataclass(frozen=True)
class DefectFilters:
    """Gallery filters; None = any. Times are UTC epoch ms on the defect's first frame."""

    run_id: str = "production"
    line: str | None = None
    camera: str | None = None
    defect_class: str | None = None
    shift: str | None = None
    model_version: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        conds, params = ["run_id = {run_id}"], {"run_id": self.run_id}
        for col, name, val in (("line_id", "line", self.line), ("camera_id", "camera", self.camera),
                               ("defect_class", "defect_class", self.defect_class), ("shift_name", "shift", self.shift),
                               ("model_version", "model_version", self.model_version)):
            if val is not None:
                conds.append(f"{col} = {{{name}}}")
                params[name] = val
        if self.since_ms is not None:
            conds.append("first_frame_ts >= {since_ms}")
            params["since_ms"] = self.since_ms
        if self.until_ms is not None:
            conds.append("first_frame_ts < {until_ms}")
            params["until_ms"] = self.until_ms
        return " AND ".join(conds), params


# ------------------------------------------------------------------------------------- statements
def _in_list(prefix: str, values: Sequence[Any], params: dict[str, Any]) -> str:
    names = [f"{prefix}{i}" for i in range(len(values))]
    params.update(zip(names, values))
    return "(" + ", ".join("{" + n + "}" for n in names) + ")"


def _queue_where(camera: str | None, line: str | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {}
    where = "candidate_id NOT IN (SELECT candidate_id FROM labels WHERE action IN " + _in_list("done", DONE_ACTIONS, params) + ")"
    if camera is not None:
        where += " AND camera_id = {camera}"
        params["camera"] = camera
    if line is not None:
        where += " AND line_id = {line}"
        params["line"] = line
    return where, params


def queue_sql(*, camera: str | None = None, line: str | None = None, limit: int = 60, offset: int = 0) -> str:
    """Pending candidates, most worth a look first (highest score, then oldest)."""
    where, params = _queue_where(camera, line)
    params.update(limit=int(limit), offset=int(offset))
    return render(f"""
SELECT candidate_id, any(frame_id), any(reason), max(score) AS q_score, any(camera_id), any(line_id), any(part_id),
       any(frame_seq), any(capture_ts), any(model_version), any(defect_class), any(confidence),
       any(bbox_x0), any(bbox_y0), any(bbox_x1), any(bbox_y1), any(note), min(created_at) AS q_created
FROM review_queue
WHERE {where}
GROUP BY candidate_id
ORDER BY q_score DESC, q_created, candidate_id
LIMIT {{offset}}, {{limit}}""", params)


def queue_count_sql(*, camera: str | None = None, line: str | None = None) -> str:
    where, params = _queue_where(camera, line)
    return render(f"SELECT uniqExact(candidate_id) FROM review_queue WHERE {where}", params)


def candidate_sql(candidate_id: str) -> str:
    return render("""
SELECT candidate_id, any(frame_id), any(reason), max(score), any(camera_id), any(line_id), any(part_id),
       any(frame_seq), any(capture_ts), any(model_version), any(defect_class), any(confidence),
       any(bbox_x0), any(bbox_y0), any(bbox_x1), any(bbox_y1), any(note), min(created_at)
FROM review_queue WHERE candidate_id = {id} GROUP BY candidate_id""", {"id": candidate_id})


def candidates_of_part_sql(camera_id: str, part_id: str) -> str:
    return render("""
SELECT candidate_id, any(frame_id), any(reason), max(score), any(camera_id), any(line_id), any(part_id),
       any(frame_seq), any(capture_ts), any(model_version), any(defect_class), any(confidence),
       any(bbox_x0), any(bbox_y0), any(bbox_x1), any(bbox_y1), any(note), min(created_at) AS q_created
FROM review_queue WHERE camera_id = {camera} AND part_id = {part}
GROUP BY candidate_id ORDER BY q_created, candidate_id""", {"camera": camera_id, "part": part_id})


_FRAME_COLS = ("camera_id", "line_id", "part_id", "frame_seq", "capture_ts", "encoding", "width", "height", "channels",
               "model_version", "run_id", "det_class", "det_confidence", "det_x0", "det_y0", "det_x1", "det_y1")


def _frames_select(where: str) -> str:
    cols = ", ".join(f"argMax({c}, version) AS f_{c}" for c in _FRAME_COLS)
    return f"SELECT frame_id, {cols} FROM review_frames WHERE {where} GROUP BY frame_id"


def frames_sql(frame_ids: Sequence[str]) -> str:
    """The stored frames (no pixels) with these ids."""
    params: dict[str, Any] = {}
    if not frame_ids:
        return render(_frames_select("0"))
    return render(_frames_select("frame_id IN " + _in_list("f", list(frame_ids), params)), params)


def frames_of_part_sql(camera_id: str, part_id: str) -> str:
    return render(f"SELECT * FROM ({_frames_select('camera_id = {camera} AND part_id = {part}')}) ORDER BY f_frame_seq",
                  {"camera": camera_id, "part": part_id})


def latest_frames_sql(since_ms: int, per_camera: int = 3) -> str:
    """The latest stored frames of every camera since `since_ms` (LIMIT BY: 18.16 has it)."""
    return render(f"""
SELECT * FROM ({_frames_select('capture_ts >= {since}')})
ORDER BY f_camera_id, f_capture_ts DESC, frame_id
LIMIT {{n}} BY f_camera_id""", {"since": since_ms, "n": int(per_camera)})


def frame_image_sql(frame_id: str) -> str:
    """(encoding, hex of the camera's bytes) of one frame: hex, because the String column holds binary."""
    return render("""
SELECT argMax(encoding, version), hex(argMax(image, version)), argMax(width, version), argMax(height, version),
       argMax(channels, version)
FROM review_frames WHERE frame_id = {id}""", {"id": frame_id})


_LABEL_COLS = ("frame_id", "candidate_id", "camera_id", "line_id", "part_id", "action", "defect_class", "bbox_x0",
               "bbox_y0", "bbox_x1", "bbox_y1", "model_version", "reviewer", "created_at")


def _labels_select(where: str) -> str:
    cols = ", ".join(f"argMax({c}, version)" for c in _LABEL_COLS)
    return f"SELECT label_id, {cols}, max(created_at) AS l_at FROM labels WHERE {where} GROUP BY label_id"


def labels_of_frames_sql(frame_ids: Sequence[str]) -> str:
    params: dict[str, Any] = {}
    if not frame_ids:
        return render(_labels_select("0"))
    return render(f"SELECT * FROM ({_labels_select('frame_id IN ' + _in_list('f', list(frame_ids), params))}) "
                  "ORDER BY l_at, label_id", params)


def labels_of_part_sql(camera_id: str, part_id: str) -> str:
    return render(f"SELECT * FROM ({_labels_select('camera_id = {camera} AND part_id = {part}')}) ORDER BY l_at, label_id",
                  {"camera": camera_id, "part": part_id})


def labels_in_range_sql(since_ms: int, until_ms: int, cameras: Sequence[str] | None = None) -> str:
    """Labels of frames captured in [since, until) (the frame's capture time, read from review_frames)."""
    params: dict[str, Any] = {"since": since_ms, "until": until_ms}
    frames = "SELECT frame_id FROM review_frames WHERE capture_ts >= {since} AND capture_ts < {until}"
    if cameras:
        frames += " AND camera_id IN " + _in_list("cam", list(cameras), params)
    return render(f"SELECT * FROM ({_labels_select('frame_id IN (' + frames + ')')}) ORDER BY l_at, label_id", params)


def part_verdicts_sql(camera_id: str, part_id: str) -> str:
    """Each run's winning verdict of one part (highest version, then emission id)."""
    cols = ("verdict", "model_version", "defects_total", "closed_reason", "first_frame_ts", "shift_name", "emission_id")
    picked = ", ".join(f"tupleElement(p_row, {i + 1})" for i in range(len(cols)))
    return render(f"""
SELECT run_id, {picked} FROM (
    SELECT run_id, argMax(tuple({', '.join(cols)}), (version, emission_id)) AS p_row
    FROM parts WHERE camera_id = {{camera}} AND part_id = {{part}}
    GROUP BY run_id
) ORDER BY run_id""", {"camera": camera_id, "part": part_id})


_DEFECT_COLS = ("run_id", "camera_id", "line_id", "part_id", "defect_class", "confidence", "severity", "bbox_x0",
                "bbox_y0", "bbox_x1", "bbox_y1", "best_frame_seq", "first_frame_ts", "model_version", "shift_name",
                "emission_id", "frames_seen", "frames_total")


def _defects_select(where: str) -> str:
    cols = ", ".join(f"argMax({c}, version) AS d_{c}" for c in _DEFECT_COLS)
    return f"SELECT event_id, {cols} FROM defects WHERE {where} GROUP BY event_id"


def defects_of_part_sql(camera_id: str, part_id: str) -> str:
    return render(f"SELECT * FROM ({_defects_select('camera_id = {camera} AND part_id = {part}')}) "
                  "ORDER BY d_run_id, d_first_frame_ts, event_id", {"camera": camera_id, "part": part_id})


def defects_sql(filters: DefectFilters, *, limit: int = 60, offset: int = 0) -> str:
    """The gallery: newest defects first (every delivery of a defect counts once)."""
    where, params = filters.where()
    params.update(limit=int(limit), offset=int(offset))
    # the page's event ids first, from two columns; then every column of those ids only (de-duplicating every
    # column of every defect in range to keep 60 was most of the page's time)
    page = (f"SELECT event_id FROM (SELECT event_id, argMax(first_frame_ts, version) AS p_ts FROM defects WHERE {where} "
            "GROUP BY event_id ORDER BY p_ts DESC, event_id LIMIT {offset}, {limit})")
    return render(f"SELECT * FROM ({_defects_select(f'({where}) AND event_id IN ({page})')}) "
                  "ORDER BY d_first_frame_ts DESC, event_id", params)


def defects_count_sql(filters: DefectFilters) -> str:
    where, params = filters.where()
    return render(f"SELECT uniqExact(event_id) FROM defects WHERE {where}", params)


def defect_facets_sql(run_id: str = "production") -> str:
    """The values each gallery filter can take."""
    return render("""
SELECT groupUniqArray(line_id), groupUniqArray(camera_id), groupUniqArray(defect_class), groupUniqArray(shift_name),
       groupUniqArray(model_version)
FROM defects WHERE run_id = {run}""", {"run": run_id})


def stored_frames_sql(frame_ids: Sequence[str]) -> str:
    """Which of these frame ids are in review_frames."""
    params: dict[str, Any] = {}
    if not frame_ids:
        return "SELECT DISTINCT frame_id FROM review_frames WHERE 0"
    return render("SELECT DISTINCT frame_id FROM review_frames WHERE frame_id IN " + _in_list("f", list(frame_ids), params),
                  params)


def camera_activity_sql(since_ms: int, run_id: str = "production") -> str:
    """Per camera since `since_ms`: parts (distinct), failed parts, the newest frame time and the model on it."""
    return render("""
SELECT camera_id, any(line_id), uniqExact(part_id), uniqExactIf(part_id, verdict = 'FAIL'), max(last_frame_ts),
       argMax(model_version, last_frame_ts), max(ingested_at)
FROM parts WHERE run_id = {run} AND last_frame_ts >= {since}
GROUP BY camera_id ORDER BY camera_id""", {"run": run_id, "since": since_ms})


def camera_models_sql(run_id: str = "production") -> str:
    """Per camera: the model of its newest verdict, when that was, and its parts so far."""
    return render("""
SELECT camera_id, any(line_id), argMax(model_version, last_frame_ts), max(last_frame_ts), uniqExact(part_id)
FROM parts WHERE run_id = {run} GROUP BY camera_id ORDER BY camera_id""", {"run": run_id})


def model_runs_sql(limit: int = 50) -> str:
    """Runs and promotions recorded in model_runs, newest first."""
    return render("""
SELECT run_id, model_version, kind, min(first_event_ts), max(last_event_ts), argMax(note, version), max(recorded_at) AS r_at
FROM model_runs GROUP BY run_id, model_version, kind ORDER BY r_at DESC, run_id LIMIT {n}""", {"n": int(limit)})


def alerts_sql(since_ms: int, until_ms: int, *, line: str | None = None, camera: str | None = None,
               limit: int = 100) -> str:
    params: dict[str, Any] = {"since": since_ms, "until": until_ms, "n": int(limit)}
    where = "created_at >= {since} AND created_at < {until}"
    if line is not None:
        where += " AND line_id = {line}"
        params["line"] = line
    if camera is not None:
        where += " AND camera_id = {camera}"
        params["camera"] = camera
    return render(f"""
SELECT alert_id, argMax(kind, version), argMax(line_id, version), argMax(camera_id, version),
       argMax(defect_class, version), argMax(rate, version), argMax(limit_value, version), argMax(rule, version),
       max(created_at) AS a_at, argMax(message, version)
FROM alerts WHERE {where} GROUP BY alert_id ORDER BY a_at DESC, alert_id LIMIT {{n}}""", params)


def parts_mark_sql(run_id: str = "production") -> str:
    """Rendered SQL: (newest ingested_at, rows) of the run's parts; a new INSERT changes it (the SPC page's cache key)."""
    return render("SELECT max(ingested_at), count() FROM parts WHERE run_id = {run}", {"run": run_id})


def query_catalog(t0: int = 0, t1: int = 1) -> dict[str, str]:
    """Every statement above, rendered with sample arguments (the dialect tests run each one)."""
    f = DefectFilters(line="l", camera="c", defect_class="k", shift="s", model_version="m", since_ms=t0, until_ms=t1)
    return {
        "queue": queue_sql(camera="c", line="l"), "queue_count": queue_count_sql(), "candidate": candidate_sql("x"),
        "candidates_of_part": candidates_of_part_sql("c", "p"), "frames": frames_sql(["a", "b"]),
        "frames_none": frames_sql([]), "frames_of_part": frames_of_part_sql("c", "p"),
        "latest_frames": latest_frames_sql(t0), "frame_image": frame_image_sql("a"),
        "labels_of_frames": labels_of_frames_sql(["a"]), "labels_of_part": labels_of_part_sql("c", "p"),
        "labels_in_range": labels_in_range_sql(t0, t1, ["c"]), "part_verdicts": part_verdicts_sql("c", "p"),
        "defects_of_part": defects_of_part_sql("c", "p"), "defects": defects_sql(f), "defects_all": defects_sql(DefectFilters()),
        "defects_count": defects_count_sql(f), "defect_facets": defect_facets_sql(), "stored_frames": stored_frames_sql(["a"]),
        "camera_activity": camera_activity_sql(t0), "camera_models": camera_models_sql(), "model_runs": model_runs_sql(),
        "alerts": alerts_sql(t0, t1, line="l", camera="c"), "parts_mark": parts_mark_sql(),
    }


# ------------------------------------------------------------------------------------- fetchers
def _candidate(r: tuple) -> Candidate:
    return Candidate(r[0], r[1], r[2], float(r[3]), r[4], r[5], r[6], int(r[7]), int(r[8]), r[9], r[10], float(r[11]),
                     Box(int(r[12]), int(r[13]), int(r[14]), int(r[15])), r[16], int(r[17]))


def _frame(r: tuple) -> FrameInfo:
    (fid, cam, line, part, seq, ts, enc, w, h, ch, mv, run, cls, conf, x0, y0, x1, y1) = r
    dets = tuple(Detection(c, float(p), Box(int(a), int(b), int(cc), int(d)))
                 for c, p, a, b, cc, d in zip(cls, conf, x0, y0, x1, y1))
    return FrameInfo(fid, cam, line, part, int(seq), int(ts), enc, int(w), int(h), int(ch), mv, run, dets)


def _label(r: tuple) -> Label:
    return Label(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], Box(int(r[8]), int(r[9]), int(r[10]), int(r[11])),
                 r[12], r[13], int(r[14]))


def _defect(r: tuple) -> DefectInfo:
    (eid, run, cam, line, part, cls, conf, sev, x0, y0, x1, y1, best, ts, mv, shift, em, seen, total) = r
    return DefectInfo(eid, run, cam, line, part, cls, float(conf), float(sev), Box(int(x0), int(y0), int(x1), int(y1)),
                      int(best), int(ts), mv, shift, em, int(seen), int(total))


def fetch_queue(ex: Executor, **kw: Any) -> list[Candidate]:
    return [_candidate(r) for r in ex.query(queue_sql(**kw))]


def count_queue(ex: Executor, **kw: Any) -> int:
    rows = ex.query(queue_count_sql(**kw))
    return int(rows[0][0]) if rows else 0


def fetch_candidate(ex: Executor, candidate_id: str) -> Candidate | None:
    rows = ex.query(candidate_sql(candidate_id))
    return _candidate(rows[0]) if rows else None


def fetch_candidates_of_part(ex: Executor, camera_id: str, part_id: str) -> list[Candidate]:
    return [_candidate(r) for r in ex.query(candidates_of_part_sql(camera_id, part_id))]


def fetch_frames(ex: Executor, frame_ids: Sequence[str]) -> dict[str, FrameInfo]:
    return {f.frame_id: f for f in (_frame(r) for r in ex.query(frames_sql(frame_ids)))}


def fetch_frame(ex: Executor, frame_id: str) -> FrameInfo | None:
    return fetch_frames(ex, [frame_id]).get(frame_id)


def fetch_frames_of_part(ex: Executor, camera_id: str, part_id: str) -> list[FrameInfo]:
    return [_frame(r) for r in ex.query(frames_of_part_sql(camera_id, part_id))]


def fetch_latest_frames(ex: Executor, since_ms: int, per_camera: int = 3) -> list[FrameInfo]:
    return [_frame(r) for r in ex.query(latest_frames_sql(since_ms, per_camera))]


class FrameImage(NamedTuple):
    encoding: str
    data: bytes
    width: int
    height: int
    channels: int


def fetch_image(ex: Executor, frame_id: str) -> FrameImage | None:
    rows = ex.query(frame_image_sql(frame_id))
    if not rows or not rows[0][1]:
        return None
    enc, hexed, w, h, ch = rows[0]
    return FrameImage(enc, bytes.fromhex(hexed), int(w), int(h), int(ch))


def fetch_labels(ex: Executor, frame_ids: Sequence[str]) -> list[Label]:
    return [_label(r) for r in ex.query(labels_of_frames_sql(frame_ids))]


def fetch_labels_of_part(ex: Executor, camera_id: str, part_id: str) -> list[Label]:
    return [_label(r) for r in ex.query(labels_of_part_sql(camera_id, part_id))]


def fetch_labels_in_range(ex: Executor, since_ms: int, until_ms: int, cameras: Sequence[str] | None = None) -> list[Label]:
    return [_label(r) for r in ex.query(labels_in_range_sql(since_ms, until_ms, cameras))]


def fetch_part_verdicts(ex: Executor, camera_id: str, part_id: str) -> list[PartVerdict]:
    return [PartVerdict(r[0], r[1], r[2], int(r[3]), r[4], int(r[5]), r[6], r[7])
            for r in ex.query(part_verdicts_sql(camera_id, part_id))]


def fetch_defects_of_part(ex: Executor, camera_id: str, part_id: str) -> list[DefectInfo]:
    return [_defect(r) for r in ex.query(defects_of_part_sql(camera_id, part_id))]


def fetch_defects(ex: Executor, filters: DefectFilters, *, limit: int = 60, offset: int = 0) -> list[DefectInfo]:
    return [_defect(r) for r in ex.query(defects_sql(filters, limit=limit, offset=offset))]


def count_defects(ex: Executor, filters: DefectFilters) -> int:
    rows = ex.query(defects_count_sql(filters))
    return int(rows[0][0]) if rows else 0


def fetch_facets(ex: Executor, run_id: str = "production") -> dict[str, list[str]]:
    rows = ex.query(defect_facets_sql(run_id))
    names = ("line", "camera", "defect_class", "shift", "model_version")
    if not rows:
        return {n: [] for n in names}
    return {n: sorted(v for v in vals if v) for n, vals in zip(names, rows[0])}


def fetch_stored_frames(ex: Executor, frame_ids: Sequence[str]) -> set[str]:
    return {r[0] for r in ex.query(stored_frames_sql(frame_ids))}


def insert_label(ex: Executor, label: Label) -> None:
    """Write one label (idempotent: the same label id twice is one row after de-duplication)."""
    from sinks.clickhouse import LABEL_COLUMNS

    ex.insert("labels", LABEL_COLUMNS, [label.row()])
