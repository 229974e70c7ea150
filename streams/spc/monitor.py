"""SPC monitor: the current window's defect rate per line and camera against frozen Phase II limits.

Every interval the monitor counts the last `window_s` of inspected parts per scope (a whole line,
or one camera of it) in ClickHouse, charts the window as a p-chart point against limits frozen
from a baseline period (Phase I on the baseline's hourly subgroups, out-of-control subgroups
dropped), applies the run rules to the scope's recent points, and on an upward breach publishes
an `Alert` (Kafka `alerts`, ClickHouse `alerts`, optional webhook). A scope that is alerting
stays quiet until it recovers (one RECOVERY alert); a new spike within the cool-down of the last
one is not announced again. The decision (`judge`) is pure; `Monitor` only does the I/O.

Delivery: a scope's new state is kept only after its alert was stored in ClickHouse and
acknowledged by Kafka; when either fails the scope keeps its old state and the next tick decides
(and delivers) again. The webhook is a notification on top: its failures are counted and logged,
and its URL (which often carries a token) is never logged, only its scheme and host.
"""
from __future__ import annotations

import json
import logging
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, NamedTuple, Sequence

from schemas.events import Alert, deterministic_id
from sinks.sql import Executor
from streams.clock import Clock, wall_clock
from streams.settings import MonitorSettings
from streams.spc import rules as spc
from streams.spc.queries import alert_state_sql, baseline_sql, window_sql

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
          min_window_parts: int = 1) -> Decision:
    """Decide whether this window raises a SPIKE, a RECOVERY, or nothing (pure).

    A breach is a rule violation on the upper side completed by this window's point (a falling
    defect rate is good news, not an alert). Windows with fewer than `min_window_parts` are not
    judged (state unchanged).
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
            alert_id=deterministic_id("alert", scope.line_id, scope.camera_id or "", kind, rule, window_start),
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


class Monitor:
    """The monitor loop around `judge`: query, decide, publish."""

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
        """Resume alerting state from the `alerts` table (a restarted monitor does not re-announce)."""
        for line, camera, last_kind, last_rule, last_spike in self.ex.query(alert_state_sql(self.settings.run_id)):
            scope = Scope(line, camera or None)
            self.states[scope] = ScopeState(
                alerting=last_kind == "SPIKE", announced=last_kind == "SPIKE", spike_rule=last_rule,
                last_spike_ms=int(last_spike) or None,
            )

    def tick(self, now_ms: int | None = None) -> list[Alert]:
        """Judge the window ending now for every scope with limits; publish and return the alerts."""
        s = self.settings
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        start = now_ms - int(s.window_s * 1000)
        cams = [
            WindowCounts(Scope(line, camera), int(n), int(d), mv)
            for line, camera, _b, n, d, mv in self.ex.query(window_sql(s.run_id, start, now_ms))
        ]
        windows = (cams if "camera" in s.scopes else []) + (line_totals(cams) if "line" in s.scopes else [])
        seen = {w.scope for w in windows}
        # A scope with limits but no parts in the window is judged as an empty window (not at all).
        alerts = []
        failed: Exception | None = None
        for w in windows:
            limits = self.limits.get(w.scope)
            if limits is None:
                continue
            dec = judge(w, limits, self.states.get(w.scope, ScopeState()), window_start=start, window_end=now_ms,
                        now_ms=now_ms, rules=s.rules, cooldown_s=s.cooldown_s, min_window_parts=s.min_window_parts)
            if dec.alert is not None:
                try:
                    self._emit(dec.alert, w.model_version)
                except Exception as exc:  # noqa: BLE001 - this scope decides again next tick; others go on
                    self.delivery_failures += 1
                    failed = failed or exc
                    log.error("%s alert for %s not delivered (%s); it is decided again next tick",
                              dec.alert.kind, w.scope, exc)
                    continue
                alerts.append(dec.alert)
            self.states[w.scope] = dec.state  # only once the alert (if any) was delivered
        log.debug("tick: %d scopes with parts, %d alerts", len(seen), len(alerts))
        if failed is not None:
            raise failed
        return alerts

    def _emit(self, alert: Alert, model_version: str) -> None:
        """Store the alert in ClickHouse, publish it to Kafka (raising when either fails), then POST the webhook."""
        from sinks.clickhouse import ALERT_COLUMNS, alert_row

        log.warning("%s %s", alert.kind, alert.message)
        now = int(self.clock() * 1000)
        self.ex.insert("alerts", ALERT_COLUMNS, [alert_row(alert, now, run_id=self.settings.run_id, model_version=model_version)])
        if self.publish is not None:
            self.publish(alert)
        if self.webhook_url:
            self._post(alert)

    def _post(self, alert: Alert) -> None:
        body = json.dumps(alert.to_avro()).encode()
        req = urllib.request.Request(self.webhook_url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.settings.webhook_timeout_s) as resp:
                resp.read()
        except Exception as exc:  # noqa: BLE001 - a dead webhook must not stop the monitor
            self.webhook_failures += 1
            why = str(exc).replace(self.webhook_url, redact_url(self.webhook_url))
            log.error("webhook %s failed: %s: %s", redact_url(self.webhook_url), type(exc).__name__, why)

    def run(self, *, once: bool = False, stop: Callable[[], bool] = lambda: False) -> None:
        """Tick every `interval_s` (or once)."""
        while True:
            started = self.clock()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a failed tick (ClickHouse down) is retried next interval
                if once:
                    raise
                log.exception("monitor tick failed")
            if once or stop():
                return
            time.sleep(max(0.0, self.settings.interval_s - (self.clock() - started)))


def kafka_publisher(settings, *, timeout_s: float = 30.0) -> tuple[Callable[[Alert], None], Callable[[], None]]:
    """A function publishing Alerts (Avro) to the alerts topic, keyed by line, and a close().

    `publish` returns once the broker acknowledged the alert (acks=all) and raises the send's error
    otherwise (e.g. KafkaTimeoutError, MessageSizeTooLargeError), so the monitor can decide again.
    """
    from streams.kafka import clients

    codec = Alert.codec(clients.framing(settings.kafka))
    producer = clients.producer(settings.kafka, acks="all")

    def publish(alert: Alert) -> None:
        future = producer.send(settings.kafka.topics.alerts, value=codec.encode(alert.to_avro()),
                               key=alert.line_id.encode())
        producer.flush(timeout=timeout_s)
        future.get(timeout=timeout_s)

    return publish, producer.close
