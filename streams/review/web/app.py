"""The web view (`defectstream web`): FastAPI + Jinja2, server-rendered, one small script of our own.

Pages: review queue and one candidate's review, part, defects gallery, SPC, live, models; every
page needs a logged-in user (`auth.Sessions`), every POST a CSRF token, every template is
autoescaped. All SQL is in `streams.review.queries`; the SPC chart is `streams.spc.report`'s.
`create_app(settings, executor_factory)` is the one wiring place: tests hand it an executor on
their own database.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from starlette.exceptions import HTTPException as StarletteHTTPException

from sinks.sql import Executor
from streams.review import queries as q
from streams.review.web.auth import COOKIE, Session, Sessions
from streams.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
_REL = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_CLASS = re.compile(r"^[A-Za-z0-9_.\-/ ]{1,64}$")
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class NeedLogin(Exception):
    def __init__(self, next_url: str):
        self.next_url = next_url


def parse_time(text: str | None, default: str, now_ms: int, tz: str) -> int:
    """`now`, `7d`/`12h`/`30m` before now, or an ISO date/time (plant-local if naive) → epoch ms; 400 otherwise."""
    text = (text or default).strip()
    if text == "now":
        return now_ms
    m = _REL.match(text)
    if m:
        return now_ms - int(float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)] * 1000)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"cannot read time {text!r}: use now, 7d, 12h, 30m or an ISO date/time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(tz))
    return int(when.timestamp() * 1000)


def _opt(v: str | None) -> str | None:
    return v.strip() if v and v.strip() else None


class _ReportCache:
    """The SPC report (and its chart PNG) of one query string, served from memory so that the page answers
    in milliseconds while parts keep arriving.

    An entry is served as it is while it is younger than `refresh_s`, or than `max_stale_s` while the run's
    parts are unchanged (their newest `ingested_at` and row count, the `watermark`). Once parts were stored
    and `refresh_s` passed, it is still served while younger than `max_stale_s`, and one background thread
    recomputes it (stale-while-revalidate): on a running line a chart is at most a few seconds behind the
    parts, and the page says when its report was computed. Older than `max_stale_s` (or never computed),
    the request computes it itself. At most `size` query strings are kept (least recently used out)."""

    def __init__(self, refresh_s: float, max_stale_s: float, size: int = 32):
        self.refresh_s, self.max_stale_s, self.size = refresh_s, max(refresh_s, max_stale_s), size
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, Any, dict[str, Any]]] = {}  # key → (computed at, watermark, value)
        self._refreshing: set[tuple] = set()

    def get(self, key: tuple, watermark: Any, compute: Callable[[Executor], dict[str, Any]], here: Executor,
            connect: Callable[[], Executor]) -> dict[str, Any]:
        """The report of `key`: `compute(here)` in the request when nothing usable is kept; a background
        recompute runs on an executor of its own from `connect` (closed after)."""
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries[key] = self._entries.pop(key)  # most recently used last
                age = now - hit[0]
                if age < (self.max_stale_s if hit[1] == watermark else self.refresh_s):
                    return hit[2]  # no part since (a relative window slides by at most max_stale_s), or fresh
                if age < self.max_stale_s:
                    if key not in self._refreshing:
                        self._refreshing.add(key)
                        threading.Thread(target=self._refresh, args=(key, watermark, compute, connect), daemon=True,
                                         name="spc-report-refresh").start()
                    return hit[2]
        return self._put(key, watermark, now, compute(here))

    def _refresh(self, key: tuple, watermark: Any, compute: Callable[[Executor], dict[str, Any]],
                 connect: Callable[[], Executor]) -> None:
        try:
            t0 = time.monotonic()
            e = connect()
            try:
                value = compute(e)
            finally:
                close = getattr(e, "close", None)
                if close is not None:
                    close()
            self._put(key, watermark, t0, value)
        except Exception:  # noqa: BLE001 - the next request past max_stale_s computes it and shows the error
            log.exception("refreshing the SPC report %s failed", key)
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def _put(self, key: tuple, watermark: Any, at: float, value: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.size:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (at, watermark, value)
        return value


def create_app(settings: Settings, executor_factory: Callable[[], Executor], *,
               clock: Callable[[], float] = time.time, report_cache_s: float | None = None,
               report_max_stale_s: float | None = None, warm_spc: bool = False) -> FastAPI:
    """The ASGI app. `executor_factory` makes one executor per server thread (clickhouse-driver
    clients are not thread-safe); `clock` gives the time labels carry. An SPC report and its chart are
    served as they are for `report_cache_s` (default `web.spc_refresh_s`), then recomputed in the
    background while the kept one is served, up to `report_max_stale_s` (`web.spc_max_stale_s`) old
    (`_ReportCache`; `report_cache_s` 0: every request computes its report). `warm_spc`: compute the SPC
    page's default view in the background at start-up, so its first visitor does not wait for it."""
    web = settings.web
    if report_cache_s is None:
        report_cache_s = web.spc_refresh_s
    if report_max_stale_s is None:
        report_max_stale_s = web.spc_max_stale_s
    sessions = Sessions(web)
    tz = settings.plant.timezone
    local = threading.local()
    chart_lock = threading.Lock()  # matplotlib's pyplot is not thread-safe

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)

    def fmt_ts(ms: int | None) -> str:
        if not ms:
            return "–"
        return dt.datetime.fromtimestamp(int(ms) / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M:%S")

    env.filters["ts"] = fmt_ts
    env.filters["q"] = lambda v: quote(str(v), safe="")
    env.globals["urlencode"] = lambda d: urlencode({k: v for k, v in d.items() if v not in (None, "")})

    made: list[Executor] = []
    made_lock = threading.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        if warm_spc and report_cache_s > 0:
            threading.Thread(target=warm, daemon=True, name="spc-report-warm").start()
        yield
        with made_lock:
            for e in made:
                close = getattr(e, "close", None)
                if close is not None:
                    close()
            made.clear()

    app = FastAPI(title="defectstream", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def ex() -> Executor:
        e = getattr(local, "ex", None)
        if e is None:
            e = local.ex = executor_factory()
            with made_lock:
                made.append(e)
        return e

    def session_of(request: Request) -> Session | None:
        return sessions.load(request.cookies.get(COOKIE))

    def user_of(request: Request) -> tuple[str, Session]:
        s = session_of(request)
        if s is None or s.user is None:
            raise NeedLogin(str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""))
        return s.user, s

    def page(request: Request, name: str, session: Session, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(request=request, user=session.user, csrf=session.csrf,
                                             plant=settings.plant.name, **ctx)
        return HTMLResponse(html, status_code=status)

    def posted(request: Request, csrf: str | None) -> str:
        user, s = user_of(request)
        if not sessions.csrf_ok(s, csrf):
            raise HTTPException(403, "missing or wrong CSRF token (reload the page and try again)")
        return user

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.exception_handler(NeedLogin)
    async def to_login(request: Request, exc: NeedLogin):  # noqa: ANN202
        return RedirectResponse("/login?" + urlencode({"next": exc.next_url}), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # noqa: ANN202
        s = session_of(request) or Sessions.fresh()
        return page(request, "error.html", s, status=exc.status_code, status_code=exc.status_code, detail=str(exc.detail))

    # ------------------------------------------------------------------------------ login
    def _safe_next(n: str | None) -> str:
        return n if n and n.startswith("/") and not n.startswith("//") and "\\" not in n else "/queue"

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None, failed: int = 0):  # noqa: A002
        s = session_of(request)
        if s is None:
            s = Sessions.fresh()
        resp = page(request, "login.html", s, next=_safe_next(next), failed=bool(failed), no_users=not web.users)
        resp.set_cookie(COOKIE, sessions.dump(s), **sessions.cookie_kwargs())
        return resp

    @app.post("/login")
    def login(request: Request, username: str = Form(""), password: str = Form(""), csrf: str = Form(""),
              next: str = Form("/queue")):  # noqa: A002
        s = session_of(request)
        if not sessions.csrf_ok(s, csrf):
            raise HTTPException(403, "missing or wrong CSRF token (reload the login page)")
        if not sessions.check_password(username, password):
            return RedirectResponse("/login?" + urlencode({"next": _safe_next(next), "failed": 1}), status_code=303)
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(COOKIE, sessions.dump(Sessions.fresh(username)), **sessions.cookie_kwargs())
        return resp

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")):
        posted(request, csrf)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/")
    def root(request: Request):
        user_of(request)
        return RedirectResponse("/queue", status_code=303)

    # ------------------------------------------------------------------------------ frames
    @app.get("/frames/{frame_id}/image")
    def frame_image(request: Request, frame_id: str):
        user_of(request)
        img = q.fetch_image(ex(), frame_id)
        if img is None:
            raise HTTPException(404, "no stored frame with this id")
        data, media = _browser_image(img)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    # ------------------------------------------------------------------------------ queue
    @app.get("/queue", response_class=HTMLResponse)
    def queue(request: Request, camera: str | None = None, line: str | None = None, page_no: int = 0):
        _user, s = user_of(request)
        camera, line = _opt(camera), _opt(line)
        e = ex()
        items = q.fetch_queue(e, camera=camera, line=line, limit=web.page_size, offset=max(0, page_no) * web.page_size)
        total = q.count_queue(e, camera=camera, line=line)
        return page(request, "queue.html", s, items=items, total=total, camera=camera, line=line, page_no=page_no,
                    page_size=web.page_size)

    @app.get("/queue/next")
    def queue_next(request: Request, camera: str | None = None, line: str | None = None):
        user_of(request)
        items = q.fetch_queue(ex(), camera=_opt(camera), line=_opt(line), limit=1)
        if not items:
            args = urlencode({k: v for k, v in (("camera", camera), ("line", line)) if v})
            return RedirectResponse("/queue" + (f"?{args}" if args else ""), status_code=303)
        return RedirectResponse(f"/review/{quote(items[0].candidate_id, safe='')}", status_code=303)

    @app.get("/review/{candidate_id}", response_class=HTMLResponse)
    def review(request: Request, candidate_id: str):
        _user, s = user_of(request)
        e = ex()
        cand = q.fetch_candidate(e, candidate_id)
        if cand is None:
            raise HTTPException(404, "no such review candidate")
        frame = q.fetch_frame(e, cand.frame_id)
        labels = q.fetch_labels(e, [cand.frame_id])
        classes = sorted({*q.fetch_facets(e)["defect_class"], *(d.defect_class for d in (frame.detections if frame else ())),
                          *(lb.defect_class for lb in labels), cand.defect_class} - {""})
        return page(request, "review.html", s, c=cand, frame=frame, labels=labels, classes=classes,
                    done=any(lb.candidate_id == cand.candidate_id and lb.action in q.DONE_ACTIONS for lb in labels))

    @app.post("/review/{candidate_id}")
    def judge(request: Request, candidate_id: str, csrf: str = Form(""), action: str = Form(""),
              defect_class: str = Form(""), x0: str = Form(""), y0: str = Form(""), x1: str = Form(""),
              y1: str = Form("")):
        user = posted(request, csrf)
        e = ex()
        cand = q.fetch_candidate(e, candidate_id)
        if cand is None:
            raise HTTPException(404, "no such review candidate")
        frame = q.fetch_frame(e, cand.frame_id)
        if frame is None:
            raise HTTPException(409, "the candidate's frame is not stored (yet): nothing to judge")
        label = _label_from_form(frame, cand, action, defect_class.strip(), (x0, y0, x1, y1), user,
                                 int(clock() * 1000))
        q.insert_label(e, label)
        if action == "missed":  # more boxes may follow; the detection itself is still to be judged
            return RedirectResponse(f"/review/{quote(candidate_id, safe='')}", status_code=303)
        return RedirectResponse("/queue/next", status_code=303)

    # ------------------------------------------------------------------------------ part
    @app.get("/part", response_class=HTMLResponse)
    def part(request: Request, camera: str, part: str):
        _user, s = user_of(request)
        e = ex()
        verdicts = q.fetch_part_verdicts(e, camera, part)
        winners = {(v.run_id, v.model_version, v.emission_id) for v in verdicts}
        defects = [d for d in q.fetch_defects_of_part(e, camera, part)
                   if (d.run_id, d.model_version, d.emission_id) in winners]
        frames = q.fetch_frames_of_part(e, camera, part)
        labels = q.fetch_labels_of_part(e, camera, part)
        cands = q.fetch_candidates_of_part(e, camera, part)
        if not (verdicts or frames or cands):
            raise HTTPException(404, "nothing is known of this part")
        return page(request, "part.html", s, camera=camera, part=part, verdicts=verdicts, defects=defects, frames=frames,
                    labels=labels, candidates=cands)

    # ------------------------------------------------------------------------------ defects
    @app.get("/defects", response_class=HTMLResponse)
    def defects(request: Request, line: str | None = None, camera: str | None = None, defect_class: str | None = None,
                shift: str | None = None, model: str | None = None, run: str = "production", since: str | None = None,
                until: str | None = None, page_no: int = 0):
        _user, s = user_of(request)
        now = int(clock() * 1000)
        f = q.DefectFilters(run_id=run, line=_opt(line), camera=_opt(camera), defect_class=_opt(defect_class),
                            shift=_opt(shift), model_version=_opt(model),
                            since_ms=parse_time(since, "30d", now, tz), until_ms=parse_time(until, "now", now, tz) + 1)
        e = ex()
        rows = q.fetch_defects(e, f, limit=web.page_size, offset=max(0, page_no) * web.page_size)
        from schemas.events import review_frame_id

        fid = {d.event_id: review_frame_id(d.camera_id, d.part_id, d.best_frame_seq) for d in rows}
        stored = q.fetch_stored_frames(e, list(set(fid.values())))
        frames = q.fetch_frames(e, list(stored))
        args = {"line": f.line, "camera": f.camera, "defect_class": f.defect_class, "shift": f.shift, "model": f.model_version,
                "run": run if run != "production" else None, "since": since, "until": until}
        return page(request, "defects.html", s, rows=rows, total=q.count_defects(e, f), facets=facets(run),
                    f=f, args=args, frame_of={k: frames.get(v) for k, v in fid.items()}, page_no=page_no,
                    page_size=web.page_size, since=since or "30d", until=until or "now")

    # ------------------------------------------------------------------------------ SPC
    reports = _ReportCache(report_cache_s, report_max_stale_s)
    facets_kept: dict[str, tuple[float, dict[str, list[str]]]] = {}

    def facets(run: str) -> dict[str, list[str]]:
        """The filter choices (lines, cameras, classes, shifts, models) of a run, read at most every 30 s."""
        hit = facets_kept.get(run)
        if hit is None or time.monotonic() - hit[0] > 30.0:
            hit = facets_kept[run] = (time.monotonic(), q.fetch_facets(ex(), run))
        return hit[1]

    def _report(by: str, line: str | None, camera: str | None, since: str | None, until: str | None,
                run: str) -> dict[str, Any]:
        """{"rep", "png", "since_ms", "until_ms", "computed_at"} of the query string (through `reports`)."""
        from streams.spc.report import ReportFilters, make_report, plot_chart

        if by not in ("shift", "hour", "day"):
            raise HTTPException(400, "by is shift, hour or day")
        now = int(clock() * 1000)
        since_ms, until_ms = parse_time(since, "7d", now, tz), parse_time(until, "now", now, tz)
        if since_ms >= until_ms:
            raise HTTPException(400, "since must be before until")

        def compute(e: Executor) -> dict[str, Any]:
            t = int(clock() * 1000)
            lo, hi = parse_time(since, "7d", t, tz), parse_time(until, "now", t, tz)
            rep = make_report(e, settings.plant, by, ReportFilters(lo, hi, run, _opt(line), _opt(camera)))
            buf = io.BytesIO()
            with chart_lock:  # the page's <img> follows at once: render it with the report (and in the background)
                plot_chart(rep, buf)  # type: ignore[arg-type]  # savefig takes a file object too
            return {"rep": rep, "png": buf.getvalue(), "since_ms": lo, "until_ms": hi, "computed_at": t}

        if report_cache_s <= 0:
            return compute(ex())
        key = (by, _opt(line), _opt(camera), since or "7d", until or "now", run)
        mark = tuple(ex().query(q.parts_mark_sql(run))[0])
        return reports.get(key, mark, compute, ex(), executor_factory)

    def warm() -> None:
        try:
            _report("shift", None, None, None, None, "production")
        except Exception:  # noqa: BLE001 - the first visitor computes it then, and sees the error
            log.exception("computing the default SPC report at start-up failed")

    @app.get("/spc", response_class=HTMLResponse)
    def spc(request: Request, by: str = "shift", line: str | None = None, camera: str | None = None,
            since: str | None = None, until: str | None = None, run: str = "production"):
        _user, s = user_of(request)
        got = _report(by, line, camera, since, until, run)
        rep, since_ms, until_ms = got["rep"], got["since_ms"], got["until_ms"]
        alerts = ex().query(q.alerts_sql(since_ms, until_ms, line=_opt(line), camera=_opt(camera)))
        args = {"by": by, "line": _opt(line), "camera": _opt(camera), "since": since, "until": until,
                "run": run if run != "production" else None}
        return page(request, "spc.html", s, rep=rep, alerts=alerts, args=args, facets=facets(run),
                    since=since or "7d", until=until or "now", computed_at=got["computed_at"])

    @app.get("/spc/chart.png")
    def spc_chart(request: Request, by: str = "shift", line: str | None = None, camera: str | None = None,
                  since: str | None = None, until: str | None = None, run: str = "production"):
        user_of(request)
        png = _report(by, line, camera, since, until, run)["png"]
        return Response(png, media_type="image/png")

    # ------------------------------------------------------------------------------ live
    @app.get("/live", response_class=HTMLResponse)
    def live(request: Request, window_s: int = 60):
        _user, s = user_of(request)
        now = int(clock() * 1000)
        e = ex()
        activity = [
            {"camera": r[0], "line": r[1], "parts": int(r[2]), "failed": int(r[3]), "last_ts": int(r[4]), "model": r[5],
             "lag_s": max(0.0, (now - int(r[4])) / 1000), "parts_per_min": int(r[2]) * 60 / max(1, window_s)}
            for r in e.query(q.camera_activity_sql(now - window_s * 1000))]
        frames = q.fetch_latest_frames(e, now - 24 * 3600 * 1000, per_camera=3)
        by_cam: dict[str, list[q.FrameInfo]] = {}
        for fr in frames:
            by_cam.setdefault(fr.camera_id, []).append(fr)
        return page(request, "live.html", s, activity=activity, frames=by_cam, window_s=window_s, now=now)

    # ------------------------------------------------------------------------------ models
    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request):
        _user, s = user_of(request)
        e = ex()
        cams = [{"camera": r[0], "line": r[1], "model": r[2], "last_ts": int(r[3]), "parts": int(r[4])}
                for r in e.query(q.camera_models_sql())]
        runs = [{"run_id": r[0], "model": r[1], "kind": r[2], "first": int(r[3]), "last": int(r[4]), "note": r[5],
                 "at": int(r[6])} for r in e.query(q.model_runs_sql())]
        last_replay = next((r for r in runs if r["kind"] == "replay"), None)
        compare = None
        if last_replay is not None:
            from streams.replay.queries import run_compare

            cmp = run_compare(e, "production", last_replay["run_id"], settings.plant)
            compare = {"run_id": last_replay["run_id"], "model": last_replay["model"], "parts": len(cmp.parts),
                       "agreement": cmp.agreement, "confusion": cmp.confusion, "matched": cmp.defects_matched,
                       "only_production": cmp.defects_only_baseline, "only_candidate": cmp.defects_only_candidate}
        return page(request, "models.html", s, cameras=cams, runs=runs, compare=compare)

    return app


def _browser_image(img: q.FrameImage) -> tuple[bytes, str]:
    """(bytes, media type) a browser shows: JPEG/PNG as stored, RAW pixels encoded to PNG here."""
    enc = img.encoding.upper()
    if enc == "JPEG":
        return img.data, "image/jpeg"
    if enc == "PNG":
        return img.data, "image/png"
    import cv2
    import numpy as np

    want = img.width * img.height * img.channels
    if enc != "RAW" or len(img.data) != want:
        raise HTTPException(415, f"cannot show a {img.encoding} frame of {len(img.data)} bytes")
    arr = np.frombuffer(img.data, np.uint8).reshape(img.height, img.width, img.channels)
    ok, png = cv2.imencode(".png", arr if img.channels != 3 else arr[:, :, ::-1])
    if not ok:
        raise HTTPException(500, "PNG encoding failed")
    return png.tobytes(), "image/png"


def _label_from_form(frame: q.FrameInfo, cand: q.Candidate, action: str, defect_class: str,
                     box_text: tuple[str, str, str, str], reviewer: str, now_ms: int) -> q.Label:
    """The label a review form asks for, checked: 400 for an unknown action, a bad class or box."""
    if action not in q.ACTIONS:
        raise HTTPException(400, f"unknown action {action!r}")
    if action in ("relabel", "missed"):
        if not _CLASS.match(defect_class):
            raise HTTPException(400, "give a class name (letters, digits, _ . - / and spaces, at most 64)")
    if action == "missed":
        try:
            x0, y0, x1, y1 = (int(float(v)) for v in box_text)
        except ValueError:
            raise HTTPException(400, "draw a box (or give x0, y0, x1, y1 in pixels)") from None
        x0, x1 = sorted((max(0, min(frame.width, x0)), max(0, min(frame.width, x1))))
        y0, y1 = sorted((max(0, min(frame.height, y0)), max(0, min(frame.height, y1))))
        box = q.Box(x0, y0, x1, y1)
        if box.empty:
            raise HTTPException(400, "the box is empty")
    else:
        box = cand.box
        if action in ("confirm", "reject"):  # what was confirmed or rejected: the model's class
            defect_class = cand.defect_class
    return q.new_label(frame, cand.candidate_id, action, defect_class, box, reviewer, now_ms)
