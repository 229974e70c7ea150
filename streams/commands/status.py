"""`defectstream status`: scrape the worker's and the sink's metrics endpoints and print where they stand."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import NamedTuple

from streams.commands.options import output_option
from streams.metrics import Sample, ScrapeError, by_label, scrape, total


class WorkerStatus(NamedTuple):
    """The worker as two scrapes `interval_s` apart show it (rates are None after a single scrape)."""

    lag: dict[str, int]  # "topic[partition]" → frames not yet processed
    frames_total: int
    frames_per_s: float | None
    batch_mean_s: float | None  # mean micro-batch latency over the interval (None: no batch in it)
    deadletters: dict[str, int]  # reason → dead letters since the worker started
    open_parts: int
    control_rejected: dict[str, int] = {}  # kind → invalid `cameras` records skipped
    promotions_not_loaded: int = 0  # current promotions whose model the worker could not load (retried)
    model_load_failures: dict[str, int] = {}  # promoted model version → failed loads


class SinkStatus(NamedTuple):
    """The sink as its latest scrape shows it."""

    lag: dict[str, int]
    queue_rows: int
    rows_written: int
    rows_per_s: float | None
    rows_rejected: int
    deadletters: dict[str, int]
    holding: bool


def _lag(samples: list[Sample], name: str) -> dict[str, int]:
    rows = by_label(samples, name, "topic", "partition")
    return {f"{t}[{p}]": int(v) for (t, p), v in sorted(rows.items(), key=lambda kv: (kv[0][0], int(kv[0][1] or 0)))}


def _rate(before: list[Sample] | None, after: list[Sample], name: str, dt_s: float, **labels: str) -> float | None:
    if before is None or dt_s <= 0:
        return None
    return max(0.0, ((total(after, name, **labels) or 0.0) - (total(before, name, **labels) or 0.0)) / dt_s)


def worker_status(after: list[Sample], before: list[Sample] | None = None, interval_s: float = 0.0) -> WorkerStatus:
    """Summarise a worker scrape (`before`: an earlier scrape, `interval_s` earlier, for the rates)."""
    batch_mean = None
    if before is not None:
        n = (total(after, "defectstream_batch_seconds_count", stage="batch") or 0) - \
            (total(before, "defectstream_batch_seconds_count", stage="batch") or 0)
        s = (total(after, "defectstream_batch_seconds_sum", stage="batch") or 0) - \
            (total(before, "defectstream_batch_seconds_sum", stage="batch") or 0)
        batch_mean = s / n if n > 0 else None
    return WorkerStatus(
        lag=_lag(after, "defectstream_consumer_lag"),
        frames_total=int(total(after, "defectstream_frames_total") or 0),
        frames_per_s=_rate(before, after, "defectstream_frames_total", interval_s),
        batch_mean_s=batch_mean,
        deadletters={r: int(v) for (r,), v in sorted(by_label(after, "defectstream_deadletters_total", "reason").items())},
        open_parts=int(total(after, "defectstream_open_parts") or 0),
        control_rejected={k: int(v) for (k,), v in
                          sorted(by_label(after, "defectstream_control_records_rejected_total", "kind").items())},
        promotions_not_loaded=int(total(after, "defectstream_promotions_not_loaded") or 0),
        model_load_failures={k: int(v) for (k,), v in
                             sorted(by_label(after, "defectstream_model_load_failures_total", "model_version").items())},
    )


def sink_status(after: list[Sample], before: list[Sample] | None = None, interval_s: float = 0.0) -> SinkStatus:
    """Summarise a sink scrape (`before` as for `worker_status`)."""
    return SinkStatus(
        lag=_lag(after, "defectstream_sink_consumer_lag"),
        queue_rows=int(total(after, "defectstream_sink_queue_rows") or 0),
        rows_written=int(total(after, "defectstream_sink_rows_written_total") or 0),
        rows_per_s=_rate(before, after, "defectstream_sink_rows_written_total", interval_s),
        rows_rejected=int(total(after, "defectstream_sink_rows_rejected_total") or 0),
        deadletters={r: int(v) for (r,), v in sorted(by_label(after, "defectstream_sink_deadletters_total", "reason").items())},
        holding=bool(total(after, "defectstream_sink_holding")),
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="scrape the worker's and the sink's metrics: lag, frames/s, dead letters, open parts, sink queue",
        description="Reads the Prometheus endpoints of a running worker and sink (by default on 127.0.0.1 at "
                    "DEFECTSTREAM_WORKER__METRICS_PORT and DEFECTSTREAM_SINK__METRICS_PORT), twice, --interval "
                    "seconds apart, and prints a summary. Exit code 1 when an endpoint does not answer.",
    )
    p.add_argument("--worker-url", default=None, help="worker metrics URL (default: http://127.0.0.1:<worker port>/metrics)")
    p.add_argument("--sink-url", default=None, help="sink metrics URL (default: http://127.0.0.1:<sink port>/metrics)")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between the two scrapes the rates are measured over (0: one scrape, no rates)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for each endpoint")
    output_option(p, ["table", "json"])
    p.set_defaults(func=run_status)


def _default_url(port: int) -> str | None:
    return f"http://127.0.0.1:{port}/metrics" if port else None


def run_status(args: argparse.Namespace) -> int:
    from streams.settings import Settings

    settings = Settings()
    targets = {
        "worker": args.worker_url or _default_url(settings.worker.metrics_port),
        "sink": args.sink_url or _default_url(settings.sink.metrics_port),
    }
    errors: dict[str, str] = {}
    first: dict[str, list[Sample]] = {}
    for name, url in targets.items():
        if url is None:
            errors[name] = (f"{name} metrics are off (DEFECTSTREAM_{name.upper()}__METRICS_PORT=0); "
                            f"pass --{name}-url")
            continue
        try:
            first[name] = scrape(url, args.timeout)
        except ScrapeError as exc:
            errors[name] = str(exc)
    second: dict[str, list[Sample]] = {}
    t0 = time.monotonic()
    if args.interval > 0 and first:
        time.sleep(args.interval)
        for name in list(first):
            try:
                second[name] = scrape(targets[name], args.timeout)  # type: ignore[arg-type]
            except ScrapeError as exc:
                errors[name] = str(exc)
                del first[name]
    dt_s = time.monotonic() - t0 if second else 0.0
    worker = sink = None
    if "worker" in first:
        worker = worker_status(second.get("worker", first["worker"]), first["worker"] if second else None, dt_s)
    if "sink" in first:
        sink = sink_status(second.get("sink", first["sink"]), first["sink"] if second else None, dt_s)
    if args.output == "json":
        doc = {"worker": worker._asdict() if worker else {"error": errors.get("worker")},
               "sink": sink._asdict() if sink else {"error": errors.get("sink")}}
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(format_table(worker, sink, errors))
    for name, msg in errors.items():
        print(f"error: {msg}", file=sys.stderr)
    return 1 if errors else 0


def _rate_text(v: float | None, unit: str) -> str:
    return "-" if v is None else f"{v:.1f} {unit}"


def _dict_text(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"


def format_table(worker: WorkerStatus | None, sink: SinkStatus | None, errors: dict[str, str]) -> str:
    """The human summary: one `what  value` line each."""
    rows: list[tuple[str, str]] = []
    if worker is not None:
        rows += [
            ("worker lag (frames)", _dict_text(worker.lag) if worker.lag else "no partition assigned yet"),
            ("worker frames/s", _rate_text(worker.frames_per_s, "frames/s") + f"  ({worker.frames_total} in all)"),
            ("worker batch latency", "-" if worker.batch_mean_s is None else f"{worker.batch_mean_s * 1000:.0f} ms mean"),
            ("worker dead letters", _dict_text(worker.deadletters)),
            ("worker open parts", str(worker.open_parts)),
            ("worker promotions", "all loaded" if not worker.promotions_not_loaded else
             f"{worker.promotions_not_loaded} NOT LOADED (retrying; failed loads: "
             f"{_dict_text(worker.model_load_failures)})"),
            ("worker bad cameras records", _dict_text(worker.control_rejected)),
        ]
    else:
        rows.append(("worker", "UNREACHABLE" if "worker" in errors else "-"))
    if sink is not None:
        rows += [
            ("sink lag (records)", _dict_text(sink.lag) if sink.lag else "no partition assigned yet"),
            ("sink queue (rows)", str(sink.queue_rows) + ("  HOLDING: ClickHouse refuses writes" if sink.holding else "")),
            ("sink rows written", f"{sink.rows_written}  ({_rate_text(sink.rows_per_s, 'rows/s')})"),
            ("sink rows rejected", str(sink.rows_rejected)),
            ("sink dead letters", _dict_text(sink.deadletters)),
        ]
    else:
        rows.append(("sink", "UNREACHABLE" if "sink" in errors else "-"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
