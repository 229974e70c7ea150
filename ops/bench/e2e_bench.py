"""End-to-end benchmark on the local stack: simulated cameras -> Kafka -> worker -> sink -> ClickHouse; prints JSON.

Run (after `ops/stack up`):
    .venv/bin/python ops/bench/e2e_bench.py --mode ahead --cameras 4 --parts 40 --frames-per-part 4
    .venv/bin/python ops/bench/e2e_bench.py --mode paced --cameras 4 --parts-per-minute 60 --frames-per-part 4 --duration 300

It drives the system only through `defectstream` subprocesses (`db migrate`, `worker`, `sink`, `simulate`) and
ClickHouse/Kafka clients, never by importing `streams.*`; everything it creates is its own: topics
`<prefix>-frames|defects|parts|deadletter|alerts|cameras`, app id / consumer groups `<prefix>`, ClickHouse database
`<prefix>` (underscores), a data dir under out/bench/; topics and database are dropped at the end (--keep keeps them),
so it can run beside integration tests on the same stack.

Modes:
- ahead: the simulator publishes every frame first (1600x256 JPEG, no pacing), then the worker and sink start and
  drain the backlog: `sustained_frames_per_s` = frames / (first part row visible -> last part row visible).
- paced: worker and sink start first, the simulator publishes in real time (--time-scale 1, capture_ts = wall
  clock; with --pre-encode it renders and encodes the whole run before the first frame and then only sends bytes): latency p50/p95/p99 from the capture timestamp of a part's last frame to the first poll (every
  --poll-s) that sees its verdict row in ClickHouse, and the consumer lag over time (growth = slope of the
  lag over the second half, frames/s).

Per process (worker, sink, simulator, with their children): CPU seconds, mean cores, RSS first/max/last (psutil
when installed, else /proc). Stage shares from the worker's and the sink's Prometheus metrics: model inference,
the rest of the worker's micro-batch (decode, tracking, Avro encode, produce, state) and the sink's flushes, and
CPU seconds per frame of each process. `cpu_free_marker` says whether runs/.cpu-free existed at the start.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out

ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _sample(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, RSS MiB) of a process tree; psutil when available, else /proc."""
    try:
        import psutil  # type: ignore

        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
            cpu = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
            rss = sum(p.memory_info().rss for p in procs) / 2**20
            return cpu, rss
        except psutil.Error:
            return None
    except ImportError:
        pass
    cpu = rss = 0.0
    found = False
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            cpu += (int(f[11]) + int(f[12])) / TICK
            rss += int(f[21]) * PAGE / 2**20
            found = True
        except (OSError, IndexError, ValueError):
            pass
    return (cpu, rss) if found else None


class Proc:
    """A `defectstream` subprocess with its log and CPU/RSS samples."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.fh = open(self.log, "w")
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "defectstream"), *args], env=env, cwd=str(ROOT),
                                     stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()
        self.samples: list[tuple[float, float, float]] = []  # (t, cpu s, rss MiB)
        self.last: tuple[float, float] | None = None
        self.baseline_cpu = 0.0  # CPU seconds spent before the measured phase (imports, model load, rendering ahead)
        self.warm_index: int | None = None  # first sample once the system delivered its first part (model loaded)

    def sample(self) -> None:
        if self.proc.poll() is None:
            s = _sample(self.proc.pid)
            if s is not None:
                self.last = s
                self.samples.append((time.monotonic() - self.started, *s))

    def stop(self) -> None:
        self.sample()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.fh.close()

    def mark_warm(self) -> None:
        if self.warm_index is None:
            self.warm_index = len(self.samples)

    def summary(self, frames: int, points: int = 30) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0}
        t, cpu, rss = zip(*self.samples)
        span = max(t[-1] - t[0], 1e-9)
        work = cpu[-1] - self.baseline_cpu
        out: dict[str, Any] = {
            "samples": len(t), "sampled_s": round(span, 1), "cpu_s": round(cpu[-1], 2),
            "cpu_s_measured_phase": round(work, 2), "mean_cores": round((cpu[-1] - cpu[0]) / span, 3),
            "cpu_ms_per_frame": round(1000 * work / max(frames, 1), 2), "rss_mib_first": round(rss[0], 1),
            "rss_mib_max": round(max(rss), 1), "rss_mib_last": round(rss[-1], 1)}
        w = self.warm_index
        if w is not None and w < len(t):
            # RSS once the model is loaded and the first part went through: what a long run should keep flat
            base = rss[w]
            tail = [(x, r) for x, r in zip(t[w:], rss[w:]) if x >= t[w] + (t[-1] - t[w]) / 2]
            out.update({"rss_mib_after_warmup": round(base, 1), "rss_mib_max_after_warmup": round(max(rss[w:]), 1),
                        "rss_growth_after_warmup_mib": round(rss[-1] - base, 1),
                        "rss_growth_after_warmup_pct": round(100 * (rss[-1] - base) / base, 1) if base else None,
                        "rss_slope_mib_per_min_second_half": _slope(tail, 60.0),
                        "warmup_at_s": round(t[w], 1)})
            # the allocator and ONNX Runtime settle over the first few hundred frames (ops/bench/worker_profile.py):
            # growth from a quarter of the run to its end is the flatness figure for long runs
            q = next(i for i, x in enumerate(t) if x >= t[0] + span / 4)
            out.update({"rss_mib_at_quarter": round(rss[q], 1), "rss_growth_last_three_quarters_pct":
                        round(100 * (rss[-1] - rss[q]) / rss[q], 1) if rss[q] else None})
        # (t, mean cores since the previous point, RSS MiB), about `points` points over the run
        step = max(1, len(t) // points)
        idx = list(range(0, len(t), step))
        if idx[-1] != len(t) - 1:
            idx.append(len(t) - 1)
        tl, prev = [], None
        for i in idx:
            cores = None if prev is None or t[i] <= t[prev] else round((cpu[i] - cpu[prev]) / (t[i] - t[prev]), 2)
            tl.append([round(t[i], 1), cores, round(rss[i], 1)])
            prev = i
        out["timeline_t_cores_rss"] = tl
        return out

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _run(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "defectstream"), *args], env=env, cwd=str(ROOT),
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"defectstream {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def _scrape(port: int) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (sums/counts only what we need)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) ([0-9.eE+-]+|NaN)$", line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                pass
    return out


def _metric(m: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for k, v in m.items():
        if k == name or k.startswith(name + "{"):
            if all(f'{a}="{b}"' in k for a, b in labels.items()):
                total += v
    return total


def _slope(points: list[tuple[float, float]], per: float = 1.0) -> float | None:
    """Least-squares slope of (x, y) points, times `per` (e.g. 60: per minute when x is seconds)."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(per * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den, 3) if den else None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("ahead", "paced"), default="ahead")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--parts", type=int, default=40, help="ahead: parts over all cameras")
    ap.add_argument("--frames-per-part", type=int, default=4)
    ap.add_argument("--parts-per-minute", type=float, default=60.0, help="per camera (paced: sets the frame rate)")
    ap.add_argument("--duration", type=float, default=60.0, help="paced: seconds of publishing")
    ap.add_argument("--fps", type=float, default=None,
                    help="paced: total frames/s over all cameras (sets --parts-per-minute = fps*60/(cameras*frames-per-part))")
    ap.add_argument("--frame-size", default="256x1600", help="HxW")
    ap.add_argument("--defect-rate", type=float, default=0.3)
    ap.add_argument("--runtime", default="auto", help="DEFECTSTREAM_MODEL__RUNTIME for the worker")
    ap.add_argument("--batch-size", type=int, default=8, help="DEFECTSTREAM_MODEL__BATCH_SIZE")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--pre-encode", action="store_true",
                    help="paced: the simulator renders and encodes the whole run first, then sends the stored bytes "
                         "in real time (capture_ts = wall clock of the send), so it takes next to no CPU from the "
                         "worker while frames flow")
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="DEFECTSTREAM_MODEL__THREADS for the worker (default: the worker's own, the cores it may use less one)")
    ap.add_argument("--poll-s", type=float, default=0.25, help="ClickHouse/Kafka poll interval")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds of draining")
    ap.add_argument("--settle-s", type=float, default=20.0,
                    help="after the last part row is visible, poll until the worker's committed lag reads 0, at most this long")
    ap.add_argument("--prefix", default=None, help="topic/app/database prefix (default bench-e2e-<pid>)")
    ap.add_argument("--keep", action="store_true", help="keep topics, database and data dir")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.fps is not None:
        args.parts_per_minute = args.fps * 60.0 / (args.cameras * args.frames_per_part)

    from clickhouse_driver import Client
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    marker = (ROOT / "runs" / ".cpu-free").exists()
    prefix = args.prefix or f"bench-e2e-{os.getpid()}"
    db = prefix.replace("-", "_")
    work = ROOT / "out" / "bench" / prefix
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bootstrap = os.environ.get("DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    ch_host = os.environ.get("DEFECTSTREAM_CLICKHOUSE__HOST", "127.0.0.1")
    ch_port = int(os.environ.get("DEFECTSTREAM_CLICKHOUSE__PORT", "19000"))
    wport, sport = _free_port(), _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "DEFECTSTREAM_APP_ID": prefix, "DEFECTSTREAM_DATA_DIR": str(work / "worker-data"),
           "DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "DEFECTSTREAM_KAFKA__PARTITIONS": str(args.partitions),
           "DEFECTSTREAM_CLICKHOUSE__DATABASE": db, "DEFECTSTREAM_SINK__GROUP_ID": f"{prefix}-sink",
           "DEFECTSTREAM_MODEL__RUNTIME": args.runtime, "DEFECTSTREAM_MODEL__DEVICE": "cpu",
           "DEFECTSTREAM_MODEL__BATCH_SIZE": str(args.batch_size),
           "DEFECTSTREAM_WORKER__METRICS_PORT": str(wport), "DEFECTSTREAM_SINK__METRICS_PORT": str(sport),
           "DEFECTSTREAM_TRACKING__PART_TIMEOUT_S": "4", "DEFECTSTREAM_TRACKING__TIMEOUT_CHECK_S": "1",
           "DEFECTSTREAM_PLANT__TIMEZONE": "UTC"}
    if args.worker_threads:
        env["DEFECTSTREAM_MODEL__THREADS"] = str(args.worker_threads)
    topics = {n: f"{prefix}-{n}" for n in ("frames", "defects", "parts", "deadletter", "alerts", "cameras")}
    for n, t in topics.items():
        env[f"DEFECTSTREAM_KAFKA__TOPICS__{n.upper()}"] = t
    h, w = (int(v) for v in args.frame_size.lower().split("x"))
    result: dict[str, Any] = {
        "benchmark": "e2e", "mode": args.mode, "cpu_free_marker": marker, "load_avg_start": list(os.getloadavg()),
        "cpus": os.cpu_count(), "prefix": prefix, "clickhouse_database": db, "frame": [h, w], "encoding": "JPEG",
        "cameras": args.cameras, "frames_per_part": args.frames_per_part, "runtime": args.runtime,
        "batch_size": args.batch_size, "partitions": args.partitions, "psutil": _has_psutil(),
        "worker_model_threads": args.worker_threads or max(1, _affinity_cores() - 1),
        "parts_per_minute_per_camera": round(args.parts_per_minute, 3),
    }
    if args.mode == "paced":
        result["offered_frames_per_s"] = round(args.cameras * args.parts_per_minute * args.frames_per_part / 60.0, 3)
        result["duration_s"] = args.duration
        result["pre_encoded"] = bool(args.pre_encode)
    sim_args = ["simulate", "--cameras", str(args.cameras), "--frames-per-part", str(args.frames_per_part),
                "--defect-rate", str(args.defect_rate), "--frame-size", f"{h}x{w}", "--encoding", "jpeg",
                "--parts-per-minute", str(args.parts_per_minute), "--camera-prefix", f"{prefix}-cam-",
                "--ground-truth", str(work / "ground_truth.jsonl"), "--no-progress"]
    procs: dict[str, Proc] = {}
    ch = Client(host=ch_host, port=ch_port)
    try:
        _run(["db", "migrate"], env)
        if args.mode == "ahead":
            sim_args += ["--parts", str(args.parts), "--time-scale", "0"]
            t0 = time.monotonic()
            procs["simulator"] = Proc("simulator", sim_args, env, work)
            while procs["simulator"].proc.poll() is None:
                procs["simulator"].sample()
                time.sleep(0.5)
            if procs["simulator"].proc.returncode != 0:
                raise SystemExit(f"simulator failed:\n{procs['simulator'].tail()}")
            result["produce_s"] = round(time.monotonic() - t0, 2)
        procs["sink"] = Proc("sink", ["sink"], env, work)
        t_start = time.monotonic()
        procs["worker"] = Proc("worker", ["worker", "--loglevel", "info"], env, work)
        while "Worker]: Ready" not in procs["worker"].log.read_text(errors="replace"):
            if procs["worker"].proc.poll() is not None or time.monotonic() - t_start > 180:
                raise SystemExit(f"worker did not start:\n{procs['worker'].tail()}")
            time.sleep(0.3)
        result["worker_ready_s"] = round(time.monotonic() - t_start, 2)
        ready_wall_ms = time.time() * 1000
        for p in procs.values():
            p.sample()
            if p.name != "simulator" and p.last is not None:
                p.baseline_cpu = p.last[0]
        if args.mode == "paced":
            sim_args += ["--duration", str(args.duration * 1.0), "--time-scale", "1"]
            if args.pre_encode:
                sim_args.append("--pre-encode")
            procs["simulator"] = Proc("simulator", sim_args, env, work)

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        cons = KafkaConsumer(bootstrap_servers=bootstrap)
        group = prefix  # Faust's consumer group is the app id (DEFECTSTREAM_APP_ID, streams/app.py; version 1: no suffix)
        tps: list[Any] = []
        starts: dict[Any, int] = {}
        lag_errors: dict[str, int] = {}
        lag_committed_partitions = 0
        all_visible_at: float | None = None
        seen: dict[str, tuple[float, int, int, int]] = {}  # part event_id -> (first seen wall ms, last_frame_ts, ingested_at, frames)
        lag_series: list[tuple[float, int]] = []
        deadline = time.monotonic() + args.timeout
        stable_since = None
        last_count = -1
        while time.monotonic() < deadline:
            now_ms = time.time() * 1000
            try:
                rows = ch.execute(f"SELECT event_id, last_frame_ts, ingested_at, frames FROM {db}.parts")
            except Exception:
                rows = []
            for eid, lts, ing, nfr in rows:
                if eid not in seen:
                    seen[eid] = (now_ms, int(lts), int(ing), int(nfr))
            if seen:
                for p in procs.values():
                    p.mark_warm()
            try:
                if not tps:
                    parts = cons.partitions_for_topic(topics["frames"]) or set()
                    tps = [TopicPartition(topics["frames"], p) for p in sorted(parts)]
                    starts = cons.beginning_offsets(tps) if tps else {}
                if tps:
                    ends = cons.end_offsets(tps)
                    committed = _committed(admin, group, tps)
                    lag = sum(max(0, ends[tp] - committed.get(tp, starts.get(tp, 0))) for tp in tps)
                    lag_series.append((time.monotonic() - t_start, int(lag)))
                    lag_committed_partitions = max(lag_committed_partitions, len(committed))
            except Exception as exc:  # noqa: BLE001 - a broker hiccup costs a sample, said in the JSON
                lag_errors[f"{type(exc).__name__}: {exc}"[:200]] = lag_errors.get(f"{type(exc).__name__}: {exc}"[:200], 0) + 1
            for p in procs.values():
                p.sample()
            sim_done = "simulator" in procs and procs["simulator"].proc.poll() is not None
            if sim_done and args.mode == "paced" and procs["simulator"].proc.returncode != 0:
                raise SystemExit(f"simulator failed:\n{procs['simulator'].tail()}")
            produced = _gt_parts(work / "ground_truth.jsonl") if sim_done else None
            if produced is not None and len(seen) >= produced:
                all_visible_at = all_visible_at or time.monotonic()
                # the worker commits every few seconds (Faust's broker_commit_interval): wait for the lag to
                # read 0 (at most --settle-s), so a run that ends with lag > 0 has lag the worker never caught up
                if (lag_series and lag_series[-1][1] == 0) or time.monotonic() - all_visible_at > args.settle_s:
                    break
            if sim_done and lag_series and lag_series[-1][1] == 0 and len(seen) == last_count:
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since > 15:  # parts that never closed: stop anyway
                    break
            else:
                stable_since = None
            last_count = len(seen)
            time.sleep(args.poll_s)
        wm, sm = _scrape(wport), _scrape(sport)
        t_end = time.monotonic()
        result["load_avg_end"] = list(os.getloadavg())
    finally:
        for p in procs.values():
            p.stop()

    gt_parts = _gt_parts(work / "ground_truth.jsonl") or 0
    frames = gt_parts * args.frames_per_part
    times = sorted(v[0] for v in seen.values())
    result["parts_published"] = gt_parts
    result["parts_visible"] = len(seen)
    result["frames_published"] = frames
    result["frames_processed_metric"] = _metric(wm, "defectstream_frames_total")
    if times:
        per_part = frames / max(gt_parts, 1)
        drain = (times[-1] - ready_wall_ms) / 1000
        result["drain_s"] = round(drain, 2)  # worker ready -> last part row visible
        result["drain_frames_per_s"] = round(len(times) * per_part / max(drain, 1e-9), 2)
        span = (times[-1] - times[0]) / 1000
        result["visible_span_s"] = round(span, 2)
        if span >= 5 * args.poll_s:  # first -> last part row: the sustained rate without start-up
            result["sustained_frames_per_s"] = round((len(times) - 1) * per_part / span, 2)
    result["wall_s"] = round(t_end - t_start, 2)
    lat = [(v[0] - v[1]) / 1000 for v in seen.values()]
    ing = [(v[2] - v[1]) / 1000 for v in seen.values() if v[2] > 0]
    result["latency_capture_to_visible_s"] = {"p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95), "p99": _pct(lat, 0.99),
                                              "max": _pct(lat, 1.0), "n": len(lat),
                                              "meaning": "capture_ts of a part's last frame -> first poll that saw its "
                                                         "verdict row (ahead mode: includes the time the backlog waited)"}
    result["latency_capture_to_ingested_at_s"] = {"p50": _pct(ing, 0.5), "p95": _pct(ing, 0.95), "p99": _pct(ing, 0.99)}
    emitted = _emitted_at(bootstrap, topics["parts"])
    w2i = [(v[2] - emitted[e]) / 1000 for e, v in seen.items() if e in emitted and v[2] > 0]
    w2v = [(v[0] - emitted[e]) / 1000 for e, v in seen.items() if e in emitted]
    result["latency_worker_to_visible_s"] = {
        "to_ingested_at": {"p50": _pct(w2i, 0.5), "p95": _pct(w2i, 0.95), "p99": _pct(w2i, 0.99)},
        "to_first_poll": {"p50": _pct(w2v, 0.5), "p95": _pct(w2v, 0.95), "p99": _pct(w2v, 0.99), "max": _pct(w2v, 1.0)},
        "n": len(w2v),
        "meaning": "Kafka record timestamp of a part's verdict on the parts topic (the worker's send) -> the sink's "
                   "ingested_at / the bench's first poll that saw its row: how far a page reading ClickHouse is "
                   "behind the worker, before the page's own refresh"}
    if lag_series:
        lags = [l for _, l in lag_series]
        half = lag_series[len(lag_series) // 2:]
        slope = _slope([(float(t), float(l)) for t, l in half])
        result["consumer_lag"] = {"group": group, "max": max(lags), "last": lags[-1],
                                  "mean": round(statistics.fmean(lags), 1),
                                  "growth_frames_per_s_second_half": slope, "samples": len(lags),
                                  "partitions_with_commits": lag_committed_partitions,
                                  "zero_after_peak_s": next((round(t, 2) for t, l in lag_series
                                                          if l == 0 and t > lag_series[lags.index(max(lags))][0]), None),
                                  "timeline": _downsample([(round(t, 1), l) for t, l in lag_series], 40),
                                  "meaning": "sum over the frames partitions of end offset - the worker group's committed "
                                             "offset (Faust commits every ~2.8 s, so it trails the work by that much)"}
    if lag_errors:
        result.setdefault("consumer_lag", {})["errors"] = lag_errors
    result["processes"] = {n: p.summary(frames) for n, p in procs.items()}
    sim = _sim_report(procs["simulator"].log) if "simulator" in procs else None
    if sim is not None and args.mode == "paced":
        sim_span = (sim.get("sim_end_ms", 0) - sim.get("sim_start_ms", 0)) / 1000
        result["simulator"] = {"frames": sim.get("frames"), "wall_s": round(sim.get("wall_s", 0.0), 2),
                               "simulated_s": round(sim_span, 2), "published_frames_per_s": sim.get("fps"),
                               "behind_s": round(sim.get("wall_s", 0.0) - sim_span, 2),
                               "meaning": "behind_s > ~1: the simulator could not render and publish in real time (it "
                                          "shares the box), so capture_ts is earlier than the publish and latency "
                                          "includes that delay"}
    inf = _metric(wm, "defectstream_batch_seconds_sum", stage="inference")
    batch = _metric(wm, "defectstream_batch_seconds_sum", stage="batch")
    flush = _metric(sm, "defectstream_sink_flush_seconds_sum")
    wcpu = result["processes"].get("worker", {}).get("cpu_s", 0.0)
    scpu = result["processes"].get("sink", {}).get("cpu_s", 0.0)
    result["stages"] = {
        "worker_inference_s": round(inf, 2), "worker_batch_s": round(batch, 2),
        "worker_batch_not_inference_s": round(batch - inf, 2), "sink_flush_s": round(flush, 2),
        "worker_cpu_s": wcpu, "sink_cpu_s": scpu,
        "share_of_batch_inference": round(inf / batch, 3) if batch else None,
        "share_of_box_cpu_not_inference": round(1 - inf / (wcpu + scpu), 3) if wcpu + scpu else None,
        "note": "inference seconds are wall time of the model calls (worker_model_threads ONNX Runtime / torch threads; "
                "the other processes run with OMP_NUM_THREADS=1); "
                "box CPU = worker + sink process trees (the simulator stands for the cameras and is reported apart)",
    }
    if not args.keep:
        _cleanup(bootstrap, topics, prefix, ch, db, work)
    emit(result, args.out)


def _committed(admin: Any, group: str, tps: list[Any]) -> dict[Any, int]:
    """{TopicPartition: committed offset} of `group` on `tps` (partitions without a commit left out).

    kafka-python 3.x: `list_group_offsets({group: [tp, ...]})` -> {group: {tp: OffsetAndMetadata}};
    2.x: `list_consumer_group_offsets(group, partitions=...)` -> {tp: OffsetAndMetadata}.
    """
    if hasattr(admin, "list_group_offsets"):
        got = admin.list_group_offsets({group: list(tps)})
        got = got.get(group, {}) if isinstance(got, dict) else {}
    else:
        got = admin.list_consumer_group_offsets(group, partitions=list(tps))
    out = {}
    for tp, om in got.items():
        off = getattr(om, "offset", om)
        if isinstance(off, int) and off >= 0:
            out[tp] = off
    return out


def _downsample(points: list[Any], n: int) -> list[Any]:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


def _emitted_at(bootstrap: str, topic: str) -> dict[str, int]:
    """event_id -> Kafka record timestamp (ms) of every verdict on the parts topic."""
    from kafka import KafkaConsumer

    from schemas.events import PartInspected  # the event schema only, not the product's code

    codec = PartInspected.codec()
    out: dict[str, int] = {}
    cons = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                         enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        for m in cons:
            try:
                out.setdefault(codec.decode(m.value)["event_id"], int(m.timestamp))
            except Exception:  # noqa: BLE001 - a record the schema cannot read is not a verdict to time
                continue
    finally:
        cons.close()
    return out


def _affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _has_psutil() -> bool:
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def _sim_report(log: Path) -> dict[str, Any] | None:
    """The JSON report `defectstream simulate` prints last."""
    try:
        text = log.read_text(errors="replace")
        return json.loads(text[text.rindex("\n{\n") + 1:] if "\n{\n" in text else text[text.index("{"):])
    except (OSError, ValueError):
        return None


def _gt_parts(path: Path) -> int | None:
    """Parts the simulator published (one ground-truth line per part)."""
    try:
        with open(path) as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return None


def _cleanup(bootstrap: str, topics: dict[str, str], prefix: str, ch: Any, db: str, work: Path) -> None:
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine, timeout_ms=10_000)
        for g in (prefix, f"{prefix}-sink"):
            try:
                (getattr(admin, "delete_groups", None) or admin.delete_consumer_groups)([g])
            except Exception:
                pass
    except Exception as exc:  # leave them; report
        print(f"# cleanup of topics failed: {exc}", file=sys.stderr)
    try:
        ch.execute(f"DROP DATABASE IF EXISTS {db}")
    except Exception as exc:
        print(f"# cleanup of database {db} failed: {exc}", file=sys.stderr)
    shutil.rmtree(work / "worker-data", ignore_errors=True)


if __name__ == "__main__":
    main()
