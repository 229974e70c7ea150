"""`defectstream demo`: the whole product on the local stack in one command.

Simulated cameras publish a day of production (three shifts, compressed into minutes) to Kafka;
the Faust worker inspects and tracks every part; the ClickHouse sink stores defects and
verdicts; in the last hour one camera's defect rate spikes and the SPC monitor raises an alert
for it; finally the per-shift report is printed and control charts are written.

Everything runs on its own topics (`demo-<stamp>-*`) and in the ClickHouse database
`defectstream_demo`, which is rebuilt on every run, so the demo never mixes with other data. Only a
database the demo created (it holds the `_defectstream_demo` marker table) is ever dropped: an
existing database without the marker stops the demo with one error line.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HOUR_MS = 3_600_000
DEFECT_CLASSES = ("scratch", "crack", "pit", "inclusion", "patch", "imprint_mild", "imprint_severe")


@dataclass
class DemoPlan:
    """What the demo simulates: a normal day, then a spike on one camera in the last hour."""

    cameras: int = 3
    hours: int = 24  # simulated hours, ending at the current hour
    parts_per_camera: int = 60  # normal period, per camera
    spike_parts_per_camera: int = 25  # last hour, per camera
    defect_rate: float = 0.1
    spike_defect_rate: float = 0.9
    frames_per_part: int = 4
    frame_shape: tuple[int, int] = (192, 384)
    seed: int = 7
    line: str = "line-1"
    camera_prefix: str = "cam"

    @property
    def spike_camera(self) -> str:
        return f"{self.camera_prefix}-{self.cameras}"

    @property
    def total_parts(self) -> int:
        return self.cameras * (self.parts_per_camera + self.spike_parts_per_camera)


def demo_env(prefix: str, database: str, data_dir: Path) -> dict[str, str]:
    """DEFECTSTREAM_* variables putting every component on the demo's topics and database."""
    env = {
        "DEFECTSTREAM_APP_ID": prefix,
        "DEFECTSTREAM_DATA_DIR": str(data_dir),
        "DEFECTSTREAM_CLICKHOUSE__DATABASE": database,
        "DEFECTSTREAM_SINK__GROUP_ID": f"{prefix}-sink",
        # Parts end with an explicit last frame; the timeout only closes stragglers.
        "DEFECTSTREAM_TRACKING__PART_TIMEOUT_S": "10",
        "DEFECTSTREAM_TRACKING__TIMEOUT_CHECK_S": "2",
        # Any confirmed defect fails a part, so the report's defect rate is directly comparable
        # with the simulator's ground truth (a part with a defect is a defective part).
        "DEFECTSTREAM_TRACKING__FAIL_CLASSES": json.dumps(list(DEFECT_CLASSES)),
    }
    for name in ("frames", "defects", "parts", "deadletter", "cameras", "alerts"):
        env[f"DEFECTSTREAM_KAFKA__TOPICS__{name.upper()}"] = f"{prefix}-{name}"
    return env


MARKER_TABLE = "_defectstream_demo"  # in every database the demo created: only those may it drop


def demo_databases(executor) -> list[str]:
    """The databases `defectstream demo` created (they hold its marker table), by name."""
    rows = executor.query(f"SELECT database FROM system.tables WHERE name = '{MARKER_TABLE}' ORDER BY database")
    return [r[0] for r in rows]


def rebuild_demo_database(admin, database: str) -> None:
    """Drop `database` if the demo created it, then create it empty with the demo's marker table.

    Raises `UsageError` (nothing dropped) when `database` exists without the marker: a database the
    demo did not create is never dropped, whatever its name.
    """
    from streams.commands.options import UsageError

    if "`" in database or not database:
        raise UsageError(f"--database {database!r}: not a usable database name")
    exists = admin.query(f"SELECT count() FROM system.databases WHERE name = '{database}'")[0][0]
    if exists:
        if database not in demo_databases(admin):
            raise UsageError(f"database {database} exists and was not created by `defectstream demo` (it has no "
                             f"{MARKER_TABLE} table), so the demo will not drop it: choose another --database")
        admin.query(f"DROP DATABASE `{database}`")
    admin.query(f"CREATE DATABASE `{database}`")
    admin.query(f"CREATE TABLE `{database}`.{MARKER_TABLE} (created_ms UInt64, note String) ENGINE = TinyLog")
    admin.insert(f"`{database}`.{MARKER_TABLE}", ["created_ms", "note"],
                 [(int(time.time() * 1000), "created by defectstream demo, which drops and rebuilds it on its next run")])


def missing_database_hint(executor, database: str) -> str | None:
    """What to set when `database` does not exist but a demo's does (report/monitor after `make demo`)."""
    found = [d for d in demo_databases(executor) if d != database]
    if not found:
        return None
    demo = "defectstream_demo" if "defectstream_demo" in found else found[0]
    return (f"the database {database} does not exist; `defectstream demo` wrote its data to {demo}: pass "
            f"--database {demo} or set DEFECTSTREAM_CLICKHOUSE__DATABASE={demo}")


class Service:
    """A `defectstream` subcommand run as a child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *args], env={**os.environ, **env},
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def wait_for(self, marker: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if marker in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def wait_until(check: Callable[[], int], target: int, timeout_s: float, label: str, services: list[Service]) -> int:
    """Poll `check()` until it reaches `target`, with a progress bar; fails if a service dies."""
    from tqdm import tqdm

    got = 0
    deadline = time.monotonic() + timeout_s
    with tqdm(total=target, desc=label, unit="part") as bar:
        while time.monotonic() < deadline:
            for s in services:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{s.tail()}")
            got = check()
            bar.update(got - bar.n)
            if got >= target:
                return got
            time.sleep(1.0)
    return got


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole product on the local stack (simulated day, report, charts, alert)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cameras", type=int, default=DemoPlan.cameras, help="simulated cameras (default 3)")
    p.add_argument("--parts-per-camera", type=int, default=DemoPlan.parts_per_camera,
                   help="parts per camera over the normal part of the day (default 60)")
    p.add_argument("--spike-parts-per-camera", type=int, default=DemoPlan.spike_parts_per_camera,
                   help="parts per camera in the last hour (default 25)")
    p.add_argument("--defect-rate", type=float, default=DemoPlan.defect_rate, help="normal share of parts with a defect")
    p.add_argument("--spike-defect-rate", type=float, default=DemoPlan.spike_defect_rate,
                   help="share of defective parts of the last camera in the last hour")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="where logs and charts go (default out/demo)")
    p.add_argument("--webhook", help="also POST the alerts as JSON to this URL")
    p.add_argument("--timeout", type=float, default=900.0, help="give up waiting for the pipeline after S seconds")
    p.add_argument("--prefix", help="topic prefix / app id (default demo-<timestamp>)")
    p.add_argument("--database", default="defectstream_demo", help="ClickHouse database, rebuilt if the demo created it, refused otherwise (default defectstream_demo)")
    p.add_argument("--summary", type=Path, help="also write a JSON summary (parts, alerts, range, topics) here")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    plan = DemoPlan(cameras=args.cameras, parts_per_camera=args.parts_per_camera,
                    spike_parts_per_camera=args.spike_parts_per_camera, defect_rate=args.defect_rate,
                    spike_defect_rate=args.spike_defect_rate)
    result = run(plan, out=args.out, webhook=args.webhook, timeout_s=args.timeout, prefix=args.prefix,
                 database=args.database)
    if args.summary:
        args.summary.write_text(json.dumps(result.summary(), indent=2))
    return 0 if result.ok else 1


@dataclass
class DemoResult:
    ok: bool
    prefix: str
    database: str
    start_ms: int
    end_ms: int
    parts_simulated: int
    parts_stored: int
    alerts: list
    report_table: str
    charts: list[Path]

    def summary(self) -> dict:
        return {
            "ok": self.ok, "prefix": self.prefix, "database": self.database, "start_ms": self.start_ms,
            "end_ms": self.end_ms, "parts_simulated": self.parts_simulated, "parts_stored": self.parts_stored,
            "alerts": [a.to_avro() for a in self.alerts], "charts": [str(c) for c in self.charts],
        }


def run(plan: DemoPlan, *, out: Path, webhook: str | None = None, timeout_s: float = 900.0,
        prefix: str | None = None, database: str = "defectstream_demo") -> DemoResult:
    """Run the demo end to end; returns what it found (the CLI prints as it goes)."""
    from sinks.migrations import migrate
    from streams.commands.sink import open_database
    from streams.settings import Settings
    from streams.sim.simulator import SimulationConfig, simulate
    from streams.spc.monitor import Monitor, kafka_publisher
    from streams.spc.report import ReportFilters, make_report, plot_chart, render_table

    from streams import preflight

    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or time.strftime("demo-%Y%m%d-%H%M%S")
    before = Settings()  # the demo's variables change topics and the database, never where the services are
    preflight.check_clickhouse(before.clickhouse, database="")
    preflight.check_kafka(before.kafka)
    env = demo_env(prefix, database, out / "worker-data")
    os.environ.update(env)
    settings = Settings()
    print(f"demo: topics {prefix}-*, ClickHouse database {database}, logs in {out}/")

    admin = open_database(settings, "default")
    try:
        rebuild_demo_database(admin, database)
    finally:
        admin.close()
    ex = open_database(settings, database)
    migrate(ex)

    from streams.kafka.topics import ensure_topics

    ensure_topics(settings)
    services = [Service("worker", ["worker"], env, out), Service("sink", ["sink"], env, out)]
    try:
        services[0].wait_for("Worker]: Ready", 120)
        print("demo: worker and sink running")

        end_ms = (int(time.time() * 1000) // HOUR_MS) * HOUR_MS
        start_ms = end_ms - plan.hours * HOUR_MS
        spike_ms = end_ms - HOUR_MS
        common = dict(frames_per_part=plan.frames_per_part, frame_shape=plan.frame_shape, time_scale=0,
                      line=plan.line, camera_prefix=plan.camera_prefix, progress=True)
        # The simulator spreads a part's frames over one part period and staggers cameras within
        # it, so n parts fit in a window of (n + 1) periods: the day's parts end before the spike.
        normal_ppm = (plan.parts_per_camera + 1) / ((plan.hours - 1) * 60)
        spike_ppm = (plan.spike_parts_per_camera + 1) / 60
        runs = [
            SimulationConfig(cameras=plan.cameras, parts=plan.cameras * plan.parts_per_camera,
                             parts_per_minute=normal_ppm, defect_rate=plan.defect_rate, seed=plan.seed,
                             start_time_ms=start_ms, ground_truth=out / "ground-truth-day.jsonl", **common),
            SimulationConfig(cameras=plan.cameras - 1, parts=(plan.cameras - 1) * plan.spike_parts_per_camera,
                             parts_per_minute=spike_ppm, defect_rate=plan.defect_rate, seed=plan.seed + 10_000,
                             start_time_ms=spike_ms, ground_truth=out / "ground-truth-last-hour.jsonl", **common),
            SimulationConfig(cameras=1, first_camera=plan.cameras, parts=plan.spike_parts_per_camera,
                             parts_per_minute=spike_ppm, defect_rate=plan.spike_defect_rate, seed=plan.seed + 20_000,
                             start_time_ms=spike_ms, ground_truth=out / "ground-truth-spike.jsonl", **common),
        ]
        simulated = 0
        for cfg in runs:
            rep = simulate(settings, cfg)
            simulated += rep.parts
        print(f"demo: simulated {simulated} parts from {plan.cameras} cameras over {plan.hours} h of plant time")

        def stored() -> int:
            # one verdict per part whatever the model version (a part re-closed under another has another id)
            return int(ex.query("SELECT uniqExact(camera_id, part_id) FROM parts WHERE run_id = 'production'")[0][0])

        got = wait_until(stored, simulated, timeout_s, "parts in ClickHouse", services)
        if got < simulated:
            print(f"demo: only {got}/{simulated} parts arrived within {timeout_s:.0f}s; see {out}/worker.log")

        # SPC monitor: Phase II limits frozen from the day before the spike hour, then one tick.
        m = settings.monitor
        m.window_s = 3600.0
        m.baseline_subgroup_s = 4 * 3600.0
        m.min_baseline_parts = max(10, plan.parts_per_camera // 2)
        m.min_window_parts = max(5, plan.spike_parts_per_camera // 2)
        publish, close = kafka_publisher(settings)
        try:
            mon = Monitor(ex, m, publish=publish, webhook_url=webhook)
            mon.freeze(start_ms, spike_ms)
            alerts = mon.tick(now_ms=end_ms)
        finally:
            close()
        for a in alerts:
            print(f"ALERT {a.kind} {a.message}")
        if not alerts:
            print("demo: the monitor raised no alert")

        rep = make_report(ex, settings.plant, "shift", ReportFilters(start_ms, end_ms))
        table = render_table(rep)
        print(table)
        charts = [out / "p-chart-by-shift.png", out / f"p-chart-{plan.spike_camera}-by-hour.png"]
        plot_chart(rep, str(charts[0]))
        cam_rep = make_report(ex, settings.plant, "hour", ReportFilters(start_ms, end_ms, camera=plan.spike_camera),
                              baseline=(start_ms, spike_ms))
        plot_chart(cam_rep, str(charts[1]))
        print("demo: control charts written to " + ", ".join(str(c) for c in charts))
        print(
            "explore: DEFECTSTREAM_CLICKHOUSE__DATABASE=" + database
            + " .venv/bin/defectstream report --by hour --camera " + plan.spike_camera + " --since 1d"
        )
        ok = got >= simulated and any(a.camera_id == plan.spike_camera and a.kind == "SPIKE" for a in alerts)
        return DemoResult(ok, prefix, database, start_ms, end_ms, simulated, got, alerts, table, charts)
    finally:
        for s in services:
            s.stop()
        ex.close()
