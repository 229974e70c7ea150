"""Profile of the worker's hot path without Kafka: the production InspectPipeline over simulated frames; prints JSON.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python ops/bench/worker_profile.py --frames 160 --out out/bench/worker_profile.json
    OMP_NUM_THREADS=1 .venv/bin/python ops/bench/worker_profile.py --frames 500 --rss-at 50,100,250,500 --no-cprofile

What runs: `streams.inspection.pipeline.InspectPipeline.process` (the code the Faust agent calls per micro-batch),
with the in-memory state store of the replay (`streams.replay.replayer.MemoryStateStore`) and the list emitter of
the unit tests (`tests/unit/fakes.ListEmitter`, which Avro-encodes every record as the producer's serializer would).
Frames: 1600x256 JPEG FrameEvents from the camera simulator (`streams.sim.simulator.generate`, the same renderer
`defectstream simulate` uses), Avro-encoded with the pipeline's framing; a pool of distinct rendered parts is
cycled with fresh camera/part ids, sequence numbers and capture times up to --frames, so a long run renders little.

Two passes over the same frames:
- `real`: the packaged Inspector (`models.loading.load_inspector(runtime=--runtime)`, ONNX Runtime by default);
- `trivial`: an Inspector that returns, per image, the detections the real pass found on it (a dictionary look-up),
  so decode, tracking, Avro encode and state work see the same detections while inference costs ~0: its
  `non_inference_ms_per_frame` is the worker's cost per frame outside the model.

The runner's executor is replaced by an inline one (same calls, same order, on the calling thread) so that cProfile
sees the decode and inference steps the worker runs on its inference thread. Stage times come from perf_counter
wrappers around the pipeline's own functions, measured on a pass without cProfile (cProfile inflates Python-heavy
steps); the cProfile pass gives `cprofile_top_tottime` (and its own shares, for comparison).

Stages: `avro_decode` (decode_frame: Avro + header checks), `image_decode` (decode_image: cv2.imdecode),
`inference` (the runner's inspect calls), `tracking` (CameraState.observe / closed_rejection / admit),
`avro_encode` (the emitter: to_avro + fastavro encode of each output record), `state_load` / `state_save` (the state
store's to_dict/from_dict), `other` (the rest of `process`: batching, model selection, bookkeeping, asyncio).

RSS (`rss_mib`): after imports, after the model is loaded, after the first batch, and after each --rss-at frames
count; `rss_growth_after_first_batch_mib` tells whether anything keeps growing once the ONNX Runtime arena has seen
the batch shapes.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import hashlib
import io
import os
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _emit import emit  # ops/bench/_emit.py: print the JSON, also write it to --out

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class InlineExecutor(concurrent.futures.Executor):
    """Runs each submitted call at once on the calling thread (so cProfile sees it)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class Timers:
    def __init__(self) -> None:
        self.s: dict[str, float] = defaultdict(float)
        self.n: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.s[name] += time.perf_counter() - t
                self.n[name] += 1
        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    def awrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **k)
            finally:
                self.s[name] += time.perf_counter() - t
                self.n[name] += 1
        return timed


def image_key(img: Any) -> str:
    return hashlib.blake2b(img.tobytes(), digest_size=12).hexdigest()


class RecordingInspector:
    """The real Inspector; remembers each image's detections for the trivial pass."""

    def __init__(self, inner: Any, memo: dict[str, Any]) -> None:
        self.inner, self.memo = inner, memo
        self.model_version = inner.model_version
        self.device = getattr(inner, "device", "cpu")
        self.runtime = getattr(inner, "runtime", None)
        self.class_names = getattr(inner, "class_names", [])

    def inspect(self, frames: Sequence[Any]) -> list[Any]:
        out = self.inner.inspect(frames)
        for f, d in zip(frames, out):
            self.memo.setdefault(image_key(f), d)
        return out


class TrivialInspector:
    """Returns the detections the real pass found on the same image (none when it did not see it)."""

    device = "cpu"
    runtime = "trivial"
    class_names: tuple[str, ...] = ()

    def __init__(self, version: str, memo: dict[str, Any]) -> None:
        self.model_version, self.memo = version, memo

    def inspect(self, frames: Sequence[Any]) -> list[Any]:
        return [list(self.memo.get(image_key(f), [])) for f in frames]


def make_frames(n: int, cameras: int, frames_per_part: int, pool_parts: int, shape: tuple[int, int],
                quality: int, defect_rate: float, codec: Any) -> tuple[list[bytes], list[bytes], float]:
    """n Avro-encoded FrameEvent values and their keys, cycling a pool of rendered parts."""
    from dataclasses import replace

    from streams.sim.simulator import SimulationConfig, generate

    t = time.perf_counter()
    cfg = SimulationConfig(cameras=cameras, frames_per_part=frames_per_part, parts=pool_parts, encoding="jpeg",
                           frame_shape=shape, jpeg_quality=quality, defect_rate=defect_rate, time_scale=0,
                           camera_prefix="prof-cam", progress=False)
    pool = [ev for ev, _gt in generate(cfg)]
    render_s = time.perf_counter() - t
    # parts in capture order per camera, then re-stamped: part k of camera c gets fresh ids and times
    by_part: dict[str, list[Any]] = defaultdict(list)
    for ev in pool:
        by_part[ev.part_id].append(ev)
    parts = list(by_part.values())
    start = int(time.time() * 1000) - 3_600_000
    frame_ms = 100
    values, keys = [], []
    seq: dict[str, int] = defaultdict(int)
    k = 0
    while len(values) < n:
        for c in range(cameras):
            src = parts[k % len(parts)]
            k += 1
            cam = f"prof-cam-{c + 1}"
            for ev in src:
                if len(values) >= n:
                    break
                s = seq[cam]
                seq[cam] += 1
                ts = start + s * frame_ms
                new = replace(ev, camera_id=cam, part_id=f"{cam}-part-{k}", frame_seq=ts, capture_ts=ts)
                values.append(codec.encode(new.to_avro()))
                keys.append(cam.encode())
    return values, keys, render_s


def build_pipeline(inspector: Any, batch_size: int, timers: Timers | None) -> tuple[Any, Any, Any]:
    from streams.inspection.cameras import CameraRegistry
    from streams.inspection.inference import InferenceRunner
    from streams.inspection.pipeline import InspectPipeline
    from streams.replay.replayer import MemoryStateStore
    from streams.settings import ModelSettings, PlantSettings, Settings
    from tests.unit.fakes import ListEmitter

    settings = Settings(plant=PlantSettings(timezone="UTC"), model=ModelSettings(device="cpu", batch_size=batch_size))
    runner = InferenceRunner(settings.model, inspector=inspector)
    runner._executor = InlineExecutor()
    store = MemoryStateStore()
    emitter = ListEmitter()
    if timers is not None:
        runner._inspect_sync = timers.wrap("inference", runner._inspect_sync)
        store.save = timers.wrap("state_save", store.save)
        store.load = timers.wrap("state_load", store.load)
        emitter.send_all = timers.awrap("avro_encode", emitter.send_all)
    pipe = InspectPipeline(settings, runner, CameraRegistry(), store, emitter)
    return pipe, emitter, store


def patch_stages(timers: Timers) -> Callable[[], None]:
    """Wrap the pipeline's module-level stage functions and the tracker's entry points; returns an undo."""
    import streams.inspection.pipeline as pl
    from streams.tracking.tracker import CameraState

    saved = [(pl, "decode_frame", pl.decode_frame), (pl, "decode_image", pl.decode_image),
             (CameraState, "observe", CameraState.observe),
             (CameraState, "closed_rejection", CameraState.closed_rejection),
             (CameraState, "admit", CameraState.admit)]
    pl.decode_frame = timers.wrap("avro_decode", pl.decode_frame)
    pl.decode_image = timers.wrap("image_decode", pl.decode_image)  # _decode_images looks it up per call
    CameraState.observe = timers.wrap("tracking", CameraState.observe)
    CameraState.closed_rejection = timers.wrap("tracking", CameraState.closed_rejection)
    CameraState.admit = timers.wrap("tracking", CameraState.admit)

    def undo() -> None:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    return undo


def run_pass(name: str, inspector: Any, values: list[bytes], keys: list[bytes], batch_size: int,
             rss_at: Sequence[int], profile: bool) -> dict[str, Any]:
    from streams.kafka.records import SourceRecord

    timers = Timers()
    undo = patch_stages(timers)
    pipe, emitter, _store = build_pipeline(inspector, batch_size, timers)
    records = [SourceRecord(pipe.frames_topic, 0, i, k, v) for i, (k, v) in enumerate(zip(keys, values))]
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    rss: dict[str, float] = {}
    out: dict[str, Any] = {"inspector": name}
    try:
        loop = asyncio.new_event_loop()
        # first batch apart: model load (lazy) and arena warm-up
        t0 = time.perf_counter()
        loop.run_until_complete(pipe.process(batches[0]))
        rss["after_first_batch"] = round(rss_mib(), 1)
        first_s = time.perf_counter() - t0
        timers.s.clear()
        timers.n.clear()
        done = len(batches[0])
        marks = sorted(set(rss_at))
        t_start = time.perf_counter()
        for b in batches[1:]:
            loop.run_until_complete(pipe.process(b))
            done += len(b)
            while marks and done >= marks[0]:
                rss[f"after_{marks.pop(0)}_frames"] = round(rss_mib(), 1)
        wall = time.perf_counter() - t_start
        measured = done - len(batches[0])
        stages = dict(timers.s)
        known = sum(stages.values())
        stages["other"] = max(0.0, wall - known)
        out.update({
            "first_batch_s": round(first_s, 3), "frames_measured": measured, "wall_s": round(wall, 3),
            "frames_per_s": round(measured / wall, 2) if wall else None,
            "ms_per_frame": {k: round(1000 * v / max(measured, 1), 3) for k, v in sorted(stages.items())},
            "share": {k: round(v / wall, 4) for k, v in sorted(stages.items())} if wall else {},
            "non_inference_ms_per_frame": round(1000 * (wall - stages.get("inference", 0.0)) / max(measured, 1), 3),
            "calls": dict(timers.n),
            "outputs": {kind: sum(1 for r in emitter.sent if r.kind == kind) for kind in ("defects", "parts", "deadletter")},
            "rss_mib": rss,
        })
        loop.close()
    finally:
        undo()
    if profile:
        pipe, emitter, _ = build_pipeline(inspector, batch_size, None)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(pipe.process(batches[0]))  # warm, outside the profile
        prof = cProfile.Profile()
        prof.enable()
        for b in batches[1:]:
            loop.run_until_complete(pipe.process(b))
        prof.disable()
        loop.close()
        st = pstats.Stats(prof)
        total = sum(v[2] for v in st.stats.values())  # tottime over all functions
        cum: dict[str, float] = {}
        wanted = _profile_targets()
        for key, (_cc, _nc, _tt, ct, _callers) in st.stats.items():
            label = wanted.get((os.path.realpath(key[0]), key[1], key[2]))
            if label is not None:
                cum[label] = cum.get(label, 0.0) + ct
        proc = cum.pop("process", None) or total
        shares = {k: round(v / proc, 4) for k, v in sorted(cum.items())}
        shares["other"] = round(max(0.0, 1 - sum(shares.values())), 4)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        top = []
        for (file, line, func), (_cc, nc, tt, ct, _c) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:25]:
            top.append({"function": f"{os.path.relpath(file, ROOT) if file.startswith(str(ROOT)) else os.path.basename(file)}"
                                    f":{line}({func})", "calls": nc, "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)})
        out["cprofile"] = {"share_of_process": shares, "process_s": round(proc, 3), "top_tottime": top,
                           "note": "cumulative times under cProfile (its overhead inflates Python-heavy stages)"}
    return out


def _profile_targets() -> dict[tuple[str, int, str], str]:
    """(file, first line, name) of each stage's entry point as cProfile keys them -> stage."""
    import streams.inspection.pipeline as pl
    from streams.inspection import intake
    from streams.inspection.inference import InferenceRunner
    from streams.replay.replayer import MemoryStateStore
    from streams.tracking.tracker import CameraState
    from tests.unit.fakes import ListEmitter

    out = {}
    for fn, label in ((intake.decode_frame, "avro_decode"), (intake.decode_image, "image_decode"),
                      (InferenceRunner._inspect_sync, "inference"), (CameraState.observe, "tracking"),
                      (CameraState.admit, "tracking"), (CameraState.closed_rejection, "tracking"),
                      (ListEmitter.send_all, "avro_encode"), (MemoryStateStore.save, "state_save"),
                      (MemoryStateStore.load, "state_load"), (pl.InspectPipeline._process, "process")):
        code = fn.__code__
        out[(os.path.realpath(code.co_filename), code.co_firstlineno, code.co_name)] = label
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=160, help="frames through the pipeline per pass")
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--frames-per-part", type=int, default=4)
    ap.add_argument("--pool-parts", type=int, default=8, help="distinct rendered parts, cycled up to --frames")
    ap.add_argument("--frame-size", default="256x1600", help="HxW")
    ap.add_argument("--jpeg-quality", type=int, default=92, help="as `defectstream simulate`")
    ap.add_argument("--defect-rate", type=float, default=0.5, help="as `defectstream simulate`")
    ap.add_argument("--batch-size", type=int, default=8, help="frames per micro-batch and per Inspector call")
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--model-path", default=None, help="checkpoint (default: the packaged one)")
    ap.add_argument("--passes", default="real,trivial", help="real, trivial or both (trivial needs real first "
                                                             "to have detections)")
    ap.add_argument("--rss-at", default="50,100,250,500", help="frame counts at which RSS is read (real pass)")
    ap.add_argument("--no-cprofile", action="store_true", help="skip the cProfile passes")
    ap.add_argument("--ort-arena", choices=("on", "off"), default="on",
                    help="diagnostic: off builds every ONNX Runtime session with enable_cpu_mem_arena and "
                         "enable_mem_pattern False (is the RSS growth the arena?); production uses on")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from schemas.events import FrameEvent
    from streams.kafka import clients
    from streams.settings import Settings

    if args.ort_arena == "off":
        import onnxruntime as ort

        plain = ort.SessionOptions

        def no_arena() -> Any:
            so = plain()
            so.enable_cpu_mem_arena = False
            so.enable_mem_pattern = False
            return so
        ort.SessionOptions = no_arena  # models.runtime.runtimes._session calls ort.SessionOptions()

    h, w = (int(v) for v in args.frame_size.lower().split("x"))
    result: dict[str, Any] = {"benchmark": "worker_profile", "frame": [h, w], "encoding": "JPEG",
                              "frames": args.frames, "batch_size": args.batch_size, "runtime": args.runtime,
                              "cameras": args.cameras, "frames_per_part": args.frames_per_part,
                              "ort_arena": args.ort_arena,
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpus": os.cpu_count(),
                              "load_avg_start": list(os.getloadavg()),
                              "cpu_free_marker": (ROOT / "runs" / ".cpu-free").exists()}
    rss = {"after_imports": round(rss_mib(), 1)}
    codec = FrameEvent.codec(clients.framing(Settings().kafka))
    values, keys, render_s = make_frames(args.frames, args.cameras, args.frames_per_part, args.pool_parts, (h, w),
                                         args.jpeg_quality, args.defect_rate, codec)
    result["render_s"] = round(render_s, 2)
    result["mean_frame_bytes"] = round(sum(map(len, values)) / len(values))
    rss["after_render"] = round(rss_mib(), 1)
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    rss_at = [int(v) for v in args.rss_at.split(",") if v.strip()]
    memo: dict[str, Any] = {}
    version = "trivial"
    if "real" in passes:
        from models.loading import load_inspector

        t = time.perf_counter()
        real = load_inspector(args.model_path, device="cpu", runtime=args.runtime)
        result["model_load_s"] = round(time.perf_counter() - t, 2)
        result["inspector_runtime"] = getattr(real, "runtime", None)
        version = str(real.model_version)
        rss["after_model_load"] = round(rss_mib(), 1)
        r = run_pass("real", RecordingInspector(real, memo), values, keys, args.batch_size, rss_at,
                     not args.no_cprofile)
        result["real"] = r
    if "trivial" in passes:
        result["trivial"] = run_pass("trivial", TrivialInspector(version, memo), values, keys, args.batch_size, [],
                                     not args.no_cprofile)
        result["trivial"]["detections_from_real_pass"] = bool(memo)
    rss["end"] = round(rss_mib(), 1)
    try:  # freed but retained heap pages (glibc): what RSS drops to once malloc returns them
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        rss["end_after_malloc_trim"] = round(rss_mib(), 1)
    except (OSError, AttributeError):
        pass
    result["rss_mib"] = rss
    if "real" in result:
        rr = result["real"]["rss_mib"]
        marks = [v for k, v in rr.items() if k.endswith("_frames")]
        if marks:
            result["rss_growth_after_first_batch_mib"] = round(marks[-1] - rr["after_first_batch"], 1)
    if memo:
        result["distinct_images"] = len(memo)
        result["distinct_images_with_detections"] = sum(1 for d in memo.values() if d)
        result["detections_per_image"] = round(sum(len(d) for d in memo.values()) / len(memo), 2)
    if "real" in result and "trivial" in result:
        real_ms = 1000 / result["real"]["frames_per_s"] if result["real"].get("frames_per_s") else None
        non_inf = result["trivial"]["non_inference_ms_per_frame"]
        result["summary"] = {
            "real_ms_per_frame": round(real_ms, 2) if real_ms else None,
            "non_inference_ms_per_frame_trivial": non_inf,
            "non_inference_share_of_real": round(non_inf / real_ms, 4) if real_ms else None,
        }
    result["load_avg_end"] = list(os.getloadavg())
    emit(result, args.out)


if __name__ == "__main__":
    main()
