"""SPC monitor: the current window's defect rate per line and camera against frozen Phase II limits.

Every interval the monitor counts the last `window_s` of inspected parts per scope (a whole line,
or one camera of it) in ClickHouse, charts the window as a p-chart point against limits frozen
from a baseline period (Phase I on the baseline's hourly subgroups, out-of-control subgroups
dropped), applies the run rules to the scope's recent points, and on an upward breach publishes
an `Alert` (Kafka `alerts`, ClickHouse `alerts`, optional webhook). A scope that is alerting
stays quiet until it recovers (one RECOVERY alert); a new spike within the cool-down of the last
one is not announced again. The decision (`judge`) is pure; `Monitor` only does the I/O.

Late data: windows are by capture time, rows reach ClickHouse by ingest time (a ClickHouse hold, a
backlog, a camera clock behind). The monitor keeps an ingest watermark (the newest `ingested_at`
it has read); each tick, rows ingested after it that fall into a window judged within `rejudge_s`
make that window be judged again, and the scopes' states are replayed from there: a spike the
late rows reveal is announced, with the alert id it would have had on time.

Delivery: a decided alert goes to an outbox and is retried every tick until acknowledged: first
by Kafka (acks=all), then stored in ClickHouse, so the `alerts` table (which a restarted monitor
reads its state from) only holds alerts that were published, and a restart never sends a RECOVERY
whose SPIKE was not; the webhook is retried on its own until it answers 2xx. A scope's alerts
leave each channel in the order they were decided. The webhook URL (which often carries a token)
is never logged: every message that could carry it is redacted (`redact`).

A monitor of another run than `production` (a replay, a test) writes its rows under its run id and
publishes to `<alerts topic>.<run_id>` (`alerts_topic`), which neither production consumers nor
the sink read; its alert ids include the run id.
"""
from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
import urllib.request
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, NamedTuple, Sequence

from schemas.events import Alert, deterministic_id
from sinks.sql import Executor
from streams.clock import Clock, wall_clock
from streams.settings import MonitorSettings
from streams.spc import rules as spc
from streams.spc.queries import alert_state_sql, baseline_sql, ingest_mark_sql, late_rows_sql, window_sql

log = logging.getLogger(__name__)
HISTORY = 20  # recent window points kept per scope for the run rules


class Scope(NamedTuple):
    """What a rate is computed over: a whole line (camera_id None) or one camera of it."""

    line_id: str
    camera_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line_id}" + (f" camera {self.camera_id}" if self.camera_id else "")


class WindowCounts(NamedTuple):
    """Inspected / defective parts of one scope in one window."""

    scope: Scope
    inspected: int
    defective: int
    model_version: str = ""


@dataclass(frozen=True)
class ScopeState:
    """What the monitor remembers about a scope between ticks."""

    alerting: bool = False
    announced: bool = False  # the current alerting episode was announced (a SPIKE was sent)
    spike_rule: str = ""
    last_spike_ms: int | None = None
    z_history: tuple[float, ...] = field(default=())  # z of recent non-overlapping windows, oldest first
    anchor_end: int | None = None  # end of the window that opened the newest history point


@dataclass(frozen=True)
class Decision:
    """The result of judging one window: maybe an alert, and the scope's new state."""

    alert: Alert | None
    state: ScopeState
    point: spc.ChartPoint | None
    violations: tuple[spc.RuleViolation, ...] = ()


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def judge(counts: WindowCounts, limits: spc.Limits, state: ScopeState, *, window_start: int, window_end: int,
          now_ms: int, rules: Sequence[str] = ("WE1",), cooldown_s: float = 3600.0,
          min_window_parts: int = 1, run_id: str = "production") -> Decision:
    """Decide whether this window raises a SPIKE, a RECOVERY, or nothing (pure).

    A breach is a rule violation on the upper side completed by this window's point (a falling
    defect rate is good news, not an alert). Windows with fewer than `min_window_parts` are not
    judged (state unchanged). Alert ids are deterministic (scope, kind, rule, window start, and the
    run id for any run other than production).
    """
    if counts.inspected < min_window_parts:
        return Decision(None, state, None)
    ch = spc.phase_two(limits, [counts.defective], [counts.inspected], rules=())
    point = ch.points[0]
    # Run rules need independent subgroups. With an interval shorter than the window, a window that
    # overlaps the one that opened the newest point updates that point instead of adding one, so the
    # history holds one point per window length.
    overlaps = bool(state.z_history) and state.anchor_end is not None and window_start < state.anchor_end
    history = ((state.z_history[:-1] if overlaps else state.z_history) + (point.z,))[-HISTORY:]
    anchor = state.anchor_end if overlaps else window_end
    last = len(history) - 1
    violations = tuple(v for v in spc.evaluate_rules(history, rules) if v.index == last and v.side > 0)
    scope = counts.scope

    def make(kind: str, rule: str, text: str) -> Alert:
        return Alert(
            alert_id=deterministic_id("alert", scope.line_id, scope.camera_id or "", kind, rule, window_start,
                                      *(() if run_id == "production" else (run_id,))),
            kind=kind, line_id=scope.line_id, camera_id=scope.camera_id, metric="p", rate=point.value,
            center=point.center, limit=point.ucl, rule=rule, inspected=counts.inspected,
            defective=counts.defective, window_start=window_start, window_end=window_end, created_at=now_ms,
            message=text,
        )

    new = replace(state, z_history=history, anchor_end=anchor)
    if violations and not state.alerting:
        rule = violations[0].rule
        in_cooldown = state.last_spike_ms is not None and now_ms - state.last_spike_ms < cooldown_s * 1000
        if in_cooldown:
            return Decision(None, replace(new, alerting=True, announced=False, spike_rule=rule), point, violations)
        text = (f"{scope}: fraction defective {pct(point.value)} ({counts.defective}/{counts.inspected}) "
                f"above its limits (UCL {pct(point.ucl)}, CL {pct(point.center)}) — {rule}: {spc.RULE_TEXT[rule]}")
        alert = make("SPIKE", rule, text)
        return Decision(alert, replace(new, alerting=True, announced=True, spike_rule=rule, last_spike_ms=now_ms),
                        point, violations)
    if not violations and state.alerting:
        recovered = replace(new, alerting=False, announced=False)
        if not state.announced:
            return Decision(None, recovered, point)
        text = (f"{scope}: back in control, fraction defective {pct(point.value)} "
                f"({counts.defective}/{counts.inspected}), UCL {pct(point.ucl)}, CL {pct(point.center)}")
        return Decision(make("RECOVERY", state.spike_rule or "WE1", text), recovered, point)
    return Decision(None, new, point, violations)


def line_totals(rows: Iterable[WindowCounts]) -> list[WindowCounts]:
    """Line scopes from camera scopes (sum over the line's cameras)."""
    acc: dict[str, list] = {}
    for r in rows:
        a = acc.setdefault(r.scope.line_id, [0, 0, r.model_version])
        a[0] += r.inspected
        a[1] += r.defective
    return [WindowCounts(Scope(line), n, d, mv) for line, (n, d, mv) in sorted(acc.items())]


def baseline_limits(subgroups: dict[Scope, list[tuple[int, int]]], *, sigma: float = 3.0,
                    min_parts: int = 200) -> dict[Scope, spc.Limits]:
    """Phase I p-chart limits per scope from its baseline subgroups [(defective, inspected)].

    Out-of-control subgroups are dropped and the limits re-estimated. Scopes with fewer than
    `min_parts` baseline parts get no limits (they are not monitored). A baseline without a single
    defective part would make any defect an alarm, so its centre is floored at 1/(2N).
    """
    out = {}
    for scope, groups in subgroups.items():
        groups = [(d, n) for d, n in groups if n > 0]
        total = sum(n for _, n in groups)
        if total < min_parts:
            continue
        one = spc.phase_one("p", [d for d, _ in groups], [n for _, n in groups], k=sigma, iterate=True)
        center = max(one.limits.center, 1.0 / (2 * total))
        out[scope] = spc.Limits("p", center, k=sigma)
    return out


# -- I/O shell ----------------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """`scheme://host[:port]/…`: what may be logged of a URL whose user info, path or query may hold a secret."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<webhook url>"
    return f"{parts.scheme or '?'}://{host}{port}/…"


def _secrets_of(url: str) -> list[str]:
    """Every piece of `url` that may be (part of) a secret: the URL, its user info, user, password,
    path, query and fragment, and each query value; longest first."""
    out = {url}
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    netloc = parts.netloc if parts else url.partition("://")[2].partition("/")[0]
    userinfo = netloc.rpartition("@")[0]
    out.update({userinfo, *userinfo.split(":")})
    if parts is not None:
        out.update({parts.path if parts.path not in ("", "/") else "", parts.query, parts.fragment})
        for _k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            out.add(v)
        out.update(seg for seg in parts.path.split("/") if len(seg) >= 4)
    for piece in list(out):  # also as they appear percent-decoded or encoded in messages
        out.update({urllib.parse.unquote(piece), urllib.parse.quote(piece, safe="")})
    return sorted((p for p in out if p and len(p) >= 2), key=len, reverse=True)


def redact(text: str, url: str | None) -> str:
    """`text` (an exception's message, a log line) with every secret piece of `url` replaced by `***`.

    http.client's InvalidURL quotes only a fragment of the URL (e.g. `nonnumeric port: 'token@host'`
    for `https://user:token@host/…`), so replacing the whole URL is not enough: the user info, each
    part of it, the path, its segments, the query and each query value are replaced wherever they appear.
    """
    if not url or not text:
        return text
    for piece in _secrets_of(url):
        text = text.replace(piece, "***")
    return text


_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def alerts_topic(topic_names: Any, run_id: str) -> str:
    """The topic a monitor of `run_id` publishes to: `topic_names.alerts` for production, else
    `<alerts>.<run_id>` (characters Kafka does not allow in a topic name become `_`), a topic no
    production consumer and no sink reads."""
    if run_id == "production":
        return topic_names.alerts
    return f"{topic_names.alerts}.{_TOPIC_UNSAFE.sub('_', run_id)}"[:249]


@dataclass
class _Outgoing:
    """An alert decided and not yet acknowledged by every channel."""

    alert: Alert
    model_version: str
    published: bool  # Kafka acknowledged it (or there is no publisher)
    stored: bool  # ClickHouse acknowledged its row
    posted: bool  # the webhook answered 2xx (or there is no webhook)

    @property
    def delivered(self) -> bool:
        """Published and stored: the alert counts as raised (the webhook is a notification on top)."""
        return self.published and self.stored


@dataclass
class _Judged:
    """A window judged already: kept (for `rejudge_s`) so late rows can make it be judged again."""

    start: int
    end: int
    cams: tuple[WindowCounts, ...]  # per camera, as counted when last judged
    before: dict[Scope, ScopeState]  # the scopes' states before this window
    decided: tuple[tuple[Scope, str], ...] = ()  # (scope, kind) of the alerts this window decided


class Monitor:
    """The monitor loop around `judge`: query, decide, deliver (see the module docstring)."""

    def __init__(self, ex: Executor, settings: MonitorSettings, *, publish: Callable[[Alert], None] | None = None,
                 webhook_url: str | None = None, clock: Clock = wall_clock):
        self.ex = ex
        self.settings = settings
        self.publish = publish
        if webhook_url is None and settings.webhook_url is not None:
            webhook_url = settings.webhook_url.get_secret_value()
        self.webhook_url = webhook_url
        self.clock = clock
        self.limits: dict[Scope, spc.Limits] = {}
        self.states: dict[Scope, ScopeState] = {}
        self.webhook_failures = 0
        self.delivery_failures = 0
        self.rejudged = 0  # windows judged again because rows of them arrived late
        self.outbox: list[_Outgoing] = []  # decided alerts not yet acknowledged everywhere, in decision order
        self.ingest_mark: int | None = None  # newest ingested_at read by the last tick (the ingest watermark)
        self._judged: list[_Judged] = []
        self._decided: OrderedDict[str, None] = OrderedDict()  # ids of alerts decided (bounded), never decided twice

    def freeze(self, baseline_start_ms: int, baseline_end_ms: int) -> dict[Scope, spc.Limits]:
        """Phase I on the baseline period; the limits stay frozen until `freeze` is called again."""
        s = self.settings
        groups: dict[Scope, list[tuple[int, int]]] = {}
        lines: dict[tuple[str, int], list[int]] = {}
        for line, camera, bucket, n, d, _mv in self.ex.query(
            baseline_sql(s.run_id, baseline_start_ms, baseline_end_ms, int(s.baseline_subgroup_s * 1000))
        ):
            if "camera" in s.scopes:
                groups.setdefault(Scope(line, camera), []).append((int(d), int(n)))
            acc = lines.setdefault((line, int(bucket)), [0, 0])
            acc[0] += int(d)
            acc[1] += int(n)
        if "line" in s.scopes:
            for (line, _b), (d, n) in sorted(lines.items()):
                groups.setdefault(Scope(line), []).append((d, n))
        self.limits = baseline_limits(groups, sigma=s.sigma, min_parts=s.min_baseline_parts)
        log.info("froze Phase II limits for %d scopes from %d baseline scopes", len(self.limits), len(groups))
        return self.limits

    def restore_state(self) -> None:
        """Resume alerting state from the `alerts` table (a restarted monitor does not re-announce).

        The table holds only alerts Kafka acknowledged (the monitor stores an alert after its publish;
        the sink stores what was published), so a restored "alerting" always has its SPIKE published.
        """
        for line, camera, last_kind, last_rule, last_spike in self.ex.query(alert_state_sql(self.settings.run_id)):
            scope = Scope(line, camera or None)
            self.states[scope] = ScopeState(
                alerting=last_kind == "SPIKE", announced=last_kind == "SPIKE", spike_rule=last_rule,
                last_spike_ms=int(last_spike) or None,
            )

    # -- one tick -------------------------------------------------------------------------------
    def tick(self, now_ms: int | None = None) -> list[Alert]:
        """Judge again the windows late rows fell into, judge the window ending now (less `lateness_s`)
        for every scope with limits, deliver what the outbox holds; return the alerts delivered.

        Raises the first Kafka/ClickHouse delivery error (after trying every alert); the alerts stay in
        the outbox and the next tick delivers them. When the window cannot be judged (ClickHouse
        down), the outbox is still tried (Kafka may be up) and the judging error raised.
        """
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        try:
            self._judge_now(now_ms)
        except Exception:
            try:
                self.deliver()
            except Exception as exc:  # noqa: BLE001 - the judging error is the one to raise
                log.debug("outbox not delivered either: %s", exc)
            raise
        return self.deliver()

    def _judge_now(self, now_ms: int) -> None:
        s = self.settings
        end = now_ms - int(s.lateness_s * 1000)
        start = end - int(s.window_s * 1000)
        mark = int(self.ex.query(ingest_mark_sql(s.run_id))[0][0] or 0)  # read first: nothing ingested after is missed
        self._rejudge_late()
        cams = self._count(start, end)
        before = dict(self.states)
        self.states, decided = self._judge_window(start, end, cams, self.states)
        self._judged.append(_Judged(start, end, cams, before, decided))
        horizon = end - int(s.rejudge_s * 1000)
        self._judged = [j for j in self._judged if j.end > horizon] if s.rejudge_s > 0 else []
        self.ingest_mark = mark if self.ingest_mark is None else max(self.ingest_mark, mark)

    def _count(self, start: int, end: int) -> tuple[WindowCounts, ...]:
        return tuple(
            WindowCounts(Scope(line, camera), int(n), int(d), mv)
            for line, camera, _b, n, d, mv in self.ex.query(window_sql(self.settings.run_id, start, end))
        )

    def _judge_window(
        self, start: int, end: int, cams: Sequence[WindowCounts], states: dict[Scope, ScopeState],
        announced: Counter | None = None,
    ) -> tuple[dict[Scope, ScopeState], tuple[tuple[Scope, str], ...]]:
        """Judge one window for every scope with limits; decided alerts go to the outbox.

        A scope with limits but no parts in the window is not judged (its state is unchanged).
        `announced` ((scope, kind) → count) holds, in a replay, the alerts the replayed windows
        decided before: a replayed alert of a kind its scope announced already in those windows is the
        same episode seen earlier (late rows moved its start) and is not announced twice.
        Returns the new states and the (scope, kind) of the alerts decided (announced or not).
        """
        s = self.settings
        windows = (list(cams) if "camera" in s.scopes else []) + (line_totals(cams) if "line" in s.scopes else [])
        states = dict(states)
        decided: list[tuple[Scope, str]] = []
        for w in windows:
            limits = self.limits.get(w.scope)
            if limits is None:
                continue
            dec = judge(w, limits, states.get(w.scope, ScopeState()), window_start=start, window_end=end,
                        now_ms=end, rules=s.rules, cooldown_s=s.cooldown_s, min_window_parts=s.min_window_parts,
                        run_id=s.run_id)
            states[w.scope] = dec.state
            if dec.alert is None:
                continue
            decided.append((w.scope, dec.alert.kind))
            if announced is not None and announced[(w.scope, dec.alert.kind)] > 0:
                announced[(w.scope, dec.alert.kind)] -= 1
                continue
            if dec.alert.alert_id not in self._decided:
                self._decided[dec.alert.alert_id] = None
                while len(self._decided) > 100_000:
                    self._decided.popitem(last=False)
                alert = replace(dec.alert, created_at=max(end, int(self.clock() * 1000)))
                self.outbox.append(_Outgoing(alert, w.model_version, published=self.publish is None, stored=False,
                                             posted=not self.webhook_url))
        return states, tuple(decided)

    def _rejudge_late(self) -> None:
        """Judge again, in order, every kept window whose parts changed since it was judged (rows
        ingested after the watermark), replaying the scopes' states from the first of them."""
        s = self.settings
        if self.ingest_mark is None or not self._judged:
            return
        after = self.ingest_mark - int(s.ingest_margin_s * 1000)
        lo_all = self._judged[0].start
        hi_all = max(j.end for j in self._judged)
        n, lo, hi = self.ex.query(late_rows_sql(s.run_id, after, lo_all, hi_all))[0]
        if not int(n or 0):
            return
        lo, hi = int(lo), int(hi)
        first: int | None = None
        for i, j in enumerate(self._judged):
            if j.end <= lo or j.start > hi:
                continue
            cams = self._count(j.start, j.end)
            if cams != j.cams:
                self._judged[i] = replace(j, cams=cams)
                first = i if first is None else first
        if first is None:
            return  # rows seen already (the margin re-reads a few)
        states = dict(self._judged[first].before)
        announced = Counter(d for j in self._judged[first:] for d in j.decided)
        for i in range(first, len(self._judged)):
            j = self._judged[i]
            before = dict(states)
            states, decided = self._judge_window(j.start, j.end, j.cams, states, announced)
            self._judged[i] = replace(j, before=before, decided=decided)
            self.rejudged += 1
        log.info("late rows in %d judged windows (capture %d..%d); judged them again",
                 len(self._judged) - first, lo, hi)
        self.states = states

    # -- delivery -------------------------------------------------------------------------------
    def deliver(self) -> list[Alert]:
        """Try every channel of every alert in the outbox, in decision order; return those delivered now.

        Kafka first, then ClickHouse; a channel that fails is not tried again this call for later
        alerts (their order is kept). The webhook is retried until it answers 2xx, on its own.
        Raises the first Kafka/ClickHouse error once the rest was tried.
        """
        from sinks.clickhouse import ALERT_COLUMNS, alert_row

        failed: Exception | None = None
        kafka_down = store_down = webhook_down = False
        done: list[Alert] = []
        for out in self.outbox:
            was = out.delivered
            a = out.alert
            if not out.published and not kafka_down:
                try:
                    self.publish(a)  # type: ignore[misc]
                    out.published = True
                except Exception as exc:  # noqa: BLE001 - retried next tick; later alerts keep their order
                    kafka_down, failed = True, failed or exc
                    self.delivery_failures += 1
                    log.error("%s alert for %s %s not acknowledged by Kafka (%s); retried next tick",
                              a.kind, a.line_id, a.camera_id or "", exc)
            if out.published and not out.stored and not store_down:
                try:
                    now = int(self.clock() * 1000)
                    self.ex.insert("alerts", ALERT_COLUMNS,
                                   [alert_row(a, now, run_id=self.settings.run_id, model_version=out.model_version)])
                    out.stored = True
                except Exception as exc:  # noqa: BLE001 - retried next tick
                    store_down, failed = True, failed or exc
                    self.delivery_failures += 1
                    log.error("%s alert for %s %s not stored in ClickHouse (%s); retried next tick",
                              a.kind, a.line_id, a.camera_id or "", exc)
            if out.delivered and not was:
                log.warning("%s %s", a.kind, a.message)
                done.append(a)
            if out.delivered and not out.posted and not webhook_down:
                out.posted = self._post(a)
                webhook_down = not out.posted
        self.outbox = [o for o in self.outbox if not (o.delivered and o.posted)]
        log.debug("delivered %d alerts, %d waiting", len(done), len(self.outbox))
        if failed is not None:
            raise failed
        return done

    def _post(self, alert: Alert) -> bool:
        """POST the alert to the webhook; True once it answered 2xx. Nothing it logs carries the URL."""
        url = self.webhook_url or ""
        try:
            body = json.dumps(alert.to_avro()).encode()
            req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=self.settings.webhook_timeout_s) as resp:
                resp.read()
            return True
        except Exception as exc:  # noqa: BLE001 - a dead webhook must not stop the monitor; retried next tick
            self.webhook_failures += 1
            log.error("webhook %s failed (retried next tick): %s: %s", redact_url(url), type(exc).__name__,
                      redact(str(exc), url))
            return False

    def run(self, *, once: bool = False, stop: Callable[[], bool] = lambda: False) -> None:
        """Tick every `interval_s` (or once)."""
        while True:
            started = self.clock()
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - a failed tick (ClickHouse down) is retried next interval
                if once:
                    raise
                log.error("monitor tick failed: %s: %s", type(exc).__name__, redact(str(exc), self.webhook_url))
            if once or stop():
                return
            time.sleep(max(0.0, self.settings.interval_s - (self.clock() - started)))


def kafka_publisher(settings, *, timeout_s: float = 30.0) -> tuple[Callable[[Alert], None], Callable[[], None]]:
    """A function publishing Alerts (Avro) to the alerts topic of `settings.monitor.run_id`
    (`alerts_topic`: production's, or a topic of the run's own), keyed by line, and a close().

    `publish` returns once the broker acknowledged the alert (acks=all) and raises the send's error
    otherwise (e.g. KafkaTimeoutError, MessageSizeTooLargeError), so the monitor can decide again.
    """
    from streams.kafka import clients

    codec = Alert.codec(clients.framing(settings.kafka))
    topic = alerts_topic(settings.kafka.topics, settings.monitor.run_id)
    producer = clients.producer(settings.kafka, acks="all")

    def publish(alert: Alert) -> None:
        future = producer.send(topic, value=codec.encode(alert.to_avro()),
                               key=alert.line_id.encode())
        producer.flush(timeout=timeout_s)
        future.get(timeout=timeout_s)

    return publish, producer.close
