"""Typed settings, one class per external system, read from `DEFECTSTREAM_*` environment variables.

Nested settings use a double underscore: `DEFECTSTREAM_KAFKA__BOOTSTRAP_SERVERS=host:9092`,
`DEFECTSTREAM_CLICKHOUSE__PORT=9000`, `DEFECTSTREAM_MODEL__DEVICE=cuda`. A `.env` file in the
working directory is read too. Build the settings once (`Settings()`) and pass them down.
"""
from __future__ import annotations

import datetime as dt
import os
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sinks.settings import ClickHouseSettings, SinkSettings


class TopicNames(BaseModel):
    """Kafka topic names used by the pipeline."""

    frames: str = "frames"
    defects: str = "defects"
    parts: str = "parts"
    deadletter: str = "deadletter"
    alerts: str = "alerts"
    cameras: str = "cameras"
    ground_truth: str = "ground-truth"
    review_frames: str = "review-frames"  # sampled frames (ReviewFrame) → ClickHouse review_frames
    review_queue: str = "review-queue"  # review candidates (ReviewCandidate) → ClickHouse review_queue


class KafkaSettings(BaseModel):
    """Kafka connection, security and topic layout."""

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    topics: TopicNames = Field(default_factory=TopicNames)
    partitions: int = Field(4, ge=1, description="partitions of `frames` (and co-partitioned tables)")
    replication_factor: int = Field(1, ge=1)
    # Confluent wire format (magic byte + schema id) so the topics can sit beside a Schema Registry.
    confluent_wire_format: bool = False

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def security_kwargs(self) -> dict[str, Any]:
        """kafka-python keyword arguments for the configured security protocol."""
        out: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            out.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password.get_secret_value() if self.sasl_password else None,
            )
        return out

    def client_kwargs(self) -> dict[str, Any]:
        """kafka-python connection keyword arguments: bootstrap servers plus security.

        Every kafka-python producer, consumer and admin client of defectstream is built with these
        (`tests/unit/test_kafka_clients.py` checks the call sites), so one setting secures them all.
        """
        return {"bootstrap_servers": self.bootstrap_list, **self.security_kwargs()}

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """The same connection for aiokafka clients (the worker's asyncio side): SSL needs an `ssl_context`."""
        out: dict[str, Any] = {"bootstrap_servers": self.bootstrap_list, **self.security_kwargs()}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            out["ssl_context"] = create_ssl_context()
        return out

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> "KafkaSettings":
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol={self.security_protocol} needs sasl_username and sasl_password")
        return self


class ModelSettings(BaseModel):
    """Which checkpoint the Inspector loads and where it runs."""

    path: str | None = Field(None, description="checkpoint directory/file; None = the packaged default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1, description="frames per inference batch (CPU); GPU batches scale up")
    gpu_batch_size: int = Field(32, ge=1)
    runtime: Literal["auto", "torch", "onnxruntime", "openvino", "onnxruntime-int8"] = Field(
        "auto", description="auto (torch on CUDA; on CPU onnxruntime, or openvino when installed, parity-checked and "
                            "faster), torch (eager), onnxruntime or openvino (CPU, fp32; ONNX exports checked for parity "
                            "at load), onnxruntime-int8 (CPU, refused unless detections match fp32); see models/runtimes.py")
    flip_tta: Literal["checkpoint", "on", "off"] = Field(
        "checkpoint",
        description="flip test-time augmentation of the severity detector (3 passes per frame): as the checkpoint "
                    "chose it when its thresholds were tuned, or forced; 'off' is ~2x faster and less accurate "
                    "(packaged checkpoint, 1600x256: 14 -> 30 frames/s, synthetic mIoU 0.826 -> 0.801)")
    export_cache: str | None = Field(
        None, description="where ONNX exports go when the checkpoint directory is read-only; "
                          "None = $XDG_CACHE_HOME/defectstream/onnx")
    threads: int | None = Field(
        None, ge=1, description="CPU threads of the model calls (torch intra-op, ONNX Runtime / OpenVINO sessions); "
                                "None = the cores this process may run on (its CPU affinity, e.g. a container's "
                                "cpuset) less one, which the worker's own loop (decode, tracking, Kafka) and the "
                                "services beside it use; at least 1. Several workers on one host: give each "
                                "(cores - 1) / workers")
    int8_calibration: str | None = Field(
        None, description="runtime onnxruntime-int8: a folder of the plant's own images (e.g. the model's training "
                          "images) to calibrate the int8 ranges on; its last quarter (up to 4) joins the parity frames. "
                          "None = synthetic frames (fits the packaged model, not a plant's)")

    @model_validator(mode="after")
    def _runtime_device(self) -> "ModelSettings":
        if self.runtime not in ("torch", "auto") and self.device == "cuda":
            raise ValueError(f"model.runtime {self.runtime} serves on CPU; use model.device cpu/auto or runtime torch")
        return self

    def resolve_threads(self) -> int:
        """`threads`, or the number of cores this process may run on less one (at least 1)."""
        if self.threads is not None:
            return self.threads
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores - 1)

    def resolve_device(self) -> str:
        """`auto` → `cuda` when a CUDA device is visible (and the runtime is torch), else `cpu`."""
        if self.device != "auto":
            return self.device
        if self.runtime not in ("torch", "auto"):
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class Shift(BaseModel):
    """One shift of the plant calendar, in local wall-clock time; may cross midnight."""

    name: str
    start: dt.time
    end: dt.time


def _default_shifts() -> list[Shift]:
    return [
        Shift(name="early", start=dt.time(6), end=dt.time(14)),
        Shift(name="late", start=dt.time(14), end=dt.time(22)),
        Shift(name="night", start=dt.time(22), end=dt.time(6)),
    ]


SHIFTS_FORMAT = (
    'DEFECTSTREAM_PLANT__SHIFTS is a JSON list of shifts, each {"name": ..., "start": "HH:MM", "end": "HH:MM"} in '
    'plant-local time (DEFECTSTREAM_PLANT__TIMEZONE); a shift may cross midnight, shifts may not overlap, gaps are '
    'unscheduled time; e.g. [{"name": "early", "start": "06:00", "end": "14:00"}, '
    '{"name": "late", "start": "14:00", "end": "22:00"}, {"name": "night", "start": "22:00", "end": "06:00"}]'
)


class PlantSettings(BaseModel):
    """The plant's timezone and shift calendar (applied at ingest)."""

    name: str = "plant-1"
    timezone: str = "Europe/Berlin"
    shifts: list[Shift] = Field(default_factory=_default_shifts, description=SHIFTS_FORMAT)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown timezone {v!r} (use an IANA name such as Europe/Berlin)") from exc
        return v

    @field_validator("shifts")
    @classmethod
    def _shifts_not_empty(cls, v: list[Shift]) -> list[Shift]:
        if not v:
            raise ValueError("the shift calendar needs at least one shift")
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"shift names must be unique; repeated: {', '.join(dup)}")
        # each moment of the day belongs to at most one shift (gaps are allowed: "unscheduled")
        spans = [(s, a, b) for s in v for a, b in _day_spans(s)]
        for i, (s1, a1, b1) in enumerate(spans):
            for s2, a2, b2 in spans[i + 1:]:
                if s1 is not s2 and a1 < b2 and a2 < b1:
                    at = dt.time(max(a1, a2) // 3600, max(a1, a2) % 3600 // 60)
                    raise ValueError(f"shifts {s1.name!r} ({s1.start:%H:%M}-{s1.end:%H:%M}) and {s2.name!r} "
                                     f"({s2.start:%H:%M}-{s2.end:%H:%M}) overlap from {at:%H:%M}; a moment of the "
                                     "day may belong to one shift only")
        return v


def _day_spans(s: Shift) -> list[tuple[int, int]]:
    """A shift's seconds of the day as [start, end) spans; one crossing midnight is two; start == end is 24 h."""
    a = s.start.hour * 3600 + s.start.minute * 60 + s.start.second
    b = s.end.hour * 3600 + s.end.minute * 60 + s.end.second
    if b > a:
        return [(a, b)]
    return [(a, 86400), (0, b)] if b else [(a, 86400)]


class TrackingSettings(BaseModel):
    """Per-part defect tracking: association, confirmation, class vote and the part verdict.

    Defaults chosen on 500 simulated parts with the packaged checkpoint (`defectstream score
    --offline --parts 500 --sweep`): they keep the flicker rule strict (ratio > 2/3, so a track
    seen on 2 of 3 frames in view is dropped) and remove > 80 % of frame-level false alarms; the
    price is ~6 points of defect recall (defects the detector sees on too few of their frames).

    A track is confirmed when it was matched in at least ``min_hits`` of the frames in which it
    could be seen (its *opportunities*: frames where its motion-predicted box lies inside the
    view), and in at least ``min_hit_ratio`` of them; a defect that entered the view only on the
    part's last frame needs one hit (and ``short_track_min_confidence``). Flickers (glints,
    noise) are seen in fewer frames than they were in view, so they never reach the ratio.
    """

    min_hits: int = Field(2, ge=1, description="k: hits needed when the track had >= k opportunities")
    min_hit_ratio: float = Field(0.75, gt=0.0, le=1.0, description="hits / opportunities needed")
    short_track_min_confidence: float = Field(
        0.7, ge=0.0, le=1.0,
        description="a track confirmed on fewer than min_hits hits (it was in view on fewer frames, at the "
                    "part's ends) also needs this mean detection confidence",
    )
    min_track_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="a confirmed track needs this mean detection confidence over its hits"
    )
    merge_gap_px: float = Field(
        0.0, ge=-1.0,
        description="detections of one frame whose boxes overlap or are this close are one defect (split "
                    "imprint lobes); -1 = never merge",
    )
    max_missed: int = Field(2, ge=0, description="consecutive in-view misses before a track stops matching")
    iou_min: float = Field(0.1, ge=0.0, le=1.0, description="IoU (after motion compensation) that matches")
    center_dist_px: float = Field(24.0, ge=0.0, description="centre distance that matches, plus half the box size")
    edge_margin_px: float = Field(8.0, ge=0.0, description="a track whose predicted centre is closer than this to the edge is not matched")
    min_visible_fraction: float = Field(
        0.9, gt=0.0, le=1.0,
        description="a frame is an opportunity for a track when this share of its box is in the view",
    )
    travel_axis: Literal["-x", "+x", "-y", "+y"] = Field("-x", description="direction the part moves in the image")
    part_timeout_s: float = Field(30.0, gt=0.0, description="an open part with no frame for this long closes (TIMEOUT)")
    timeout_check_s: float = Field(5.0, gt=0.0, description="how often the timer looks for idle parts")
    fail_classes: list[str] = Field(
        default_factory=lambda: ["crack", "imprint_severe", "inclusion", "defect"],
        description="a confirmed defect of one of these classes fails the part ('defect': the one class of a "
                    "binary segmenter/classifier)",
    )
    fail_severity: float = Field(6.0, ge=0.0, le=12.0, description="a confirmed defect this severe fails the part")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="detections below this are ignored")
    max_frames_per_part: int = Field(
        300, ge=1,
        description="a part closes (MAX_FRAMES) when it reaches this many frames, so a camera stuck on one part_id "
                    "cannot grow its state (and its changelog record) without bound; later frames of that part are "
                    "dead-lettered as part_frame_limit",
    )


class WorkerSettings(BaseModel):
    """The Faust worker: micro-batching, input limits and the local table store."""

    batch_max: int | None = Field(None, ge=1, description="frames per micro-batch; None = the model batch size")
    batch_within_s: float = Field(0.2, gt=0.0, description="longest wait to fill a micro-batch")
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1, description="larger encoded images go to deadletter")
    max_pixels: int = Field(4096 * 4096, ge=1, description="larger decoded images go to deadletter")
    store: str = Field("rocksdb://", description="table store URL (rocksdb:// via rocksdict, or memory://)")
    web_port: int = Field(6066, ge=1, le=65535)
    web_enabled: bool = False
    metrics_port: int = Field(
        9464, ge=0, le=65535,
        description="serve Prometheus metrics on http://<metrics_addr>:<port>/metrics (0: not served); see streams.metrics",
    )
    metrics_addr: str = Field(
        "127.0.0.1",
        description="address the metrics endpoint binds: loopback unless a scraper on another host needs it "
                    "(docker-compose sets 0.0.0.0 inside the container, where Prometheus scrapes it)",
    )
    session_timeout_s: float = Field(
        30.0, ge=6.0, description="consumer group session timeout: how soon a crashed worker's partitions move"
    )
    capture_ts_max_future_s: float = Field(
        86_400.0, gt=0.0, description="frames whose capture_ts lies further ahead of the worker's clock go to deadletter"
    )
    capture_ts_max_age_days: float = Field(
        3650.0, gt=0.0,
        description="frames whose capture_ts lies further back go to deadletter (raise it to replay older recordings); "
                    "capture_ts before 2000-01-01 or negative is always refused (seconds, not milliseconds)",
    )
    deadletter_original_max_bytes: int = Field(
        256 * 1024, ge=0,
        description="a dead letter keeps the original message up to this size; a larger one is referenced by "
                    "topic/partition/offset, size and SHA-256 (the frame stays in `frames` for its retention)",
    )
    producer_max_request_bytes: int = Field(
        1_048_576, ge=65_536, description="largest request the worker's producer sends (Kafka max.request.size)"
    )
    inference_retries: int = Field(
        4, ge=0, description="retries of a failed model call (not the input's fault) before the worker stops"
    )
    inference_backoff_s: float = Field(0.5, gt=0.0, description="first wait between inference retries (doubles)")
    inference_backoff_max_s: float = Field(8.0, gt=0.0)

    @model_validator(mode="after")
    def _deadletters_fit_the_producer(self) -> "WorkerSettings":
        # a dead letter is its original bytes plus a few hundred bytes of metadata
        if self.deadletter_original_max_bytes + 16_384 > self.producer_max_request_bytes:
            raise ValueError(
                f"deadletter_original_max_bytes={self.deadletter_original_max_bytes} does not fit a producer request "
                f"of producer_max_request_bytes={self.producer_max_request_bytes} (leave 16 KiB for the rest)"
            )
        return self


class MonitorSettings(BaseModel):
    """The SPC monitor (`defectstream monitor`): windows, Phase II baseline, rules, alert cool-down."""

    interval_s: float = Field(300.0, gt=0.0, description="evaluate every this many seconds")
    window_s: float = Field(300.0, gt=0.0, description="current window whose rate is charted")
    baseline_s: float = Field(7 * 24 * 3600.0, gt=0.0, description="baseline period before the first window")
    baseline_subgroup_s: float = Field(3600.0, gt=0.0, description="subgroup length of the Phase I baseline")
    min_baseline_parts: int = Field(200, ge=1, description="scopes with fewer baseline parts are not monitored")
    min_window_parts: int = Field(20, ge=1, description="windows with fewer parts are not judged")
    sigma: float = Field(3.0, gt=0.0)
    rules: list[str] = Field(default_factory=lambda: ["WE1", "WE2", "WE3", "WE4"])
    cooldown_s: float = Field(3600.0, ge=0.0, description="no second SPIKE for a scope within this time")
    scopes: list[Literal["line", "camera"]] = Field(default_factory=lambda: ["line", "camera"])
    webhook_url: SecretStr | None = Field(None, description="POST each alert here (often carries a token: never logged)")
    webhook_timeout_s: float = Field(5.0, gt=0.0)
    lateness_s: float = Field(
        0.0, ge=0.0,
        description="judge the window ending this long before each tick (first judgement); rows ingested later "
                    "are re-judged into their windows anyway (rejudge_s)",
    )
    rejudge_s: float = Field(
        6 * 3600.0, ge=0.0,
        description="a judged window whose parts change (rows ingested after it was judged: a ClickHouse hold, a "
                    "backlog, a camera clock behind) is judged again while it ended less than this long ago",
    )
    ingest_margin_s: float = Field(
        180.0, ge=0.0,
        description="rows become visible up to this long after their ingested_at (the sink stamps rows when it "
                    "reads them and INSERTs them within its flush interval and flush budget)",
    )
    run_id: str = Field(
        "production",
        description="the run whose parts are watched and whose alerts are written; any other run (replay, test) "
                    "publishes to `<alerts topic>.<run_id>`, never to the production alerts topic",
    )


class ReviewSettings(BaseModel):
    """What the worker samples for review (issue 21). Each strategy has a cap per camera per hour
    (0 turns it off); while an SPC alert is open for a camera its caps are `alert_multiplier` ×."""

    enabled: bool = True
    uncertain_per_hour: int = Field(20, ge=0, description="detections whose confidence is near `uncertain_center`")
    uncertain_center: float = Field(0.5, ge=0.0, le=1.0, description="the decision threshold the model is unsure around")
    uncertain_band: float = Field(0.15, ge=0.0, le=1.0, description="|confidence - center| ≤ band is uncertain")
    dropped_per_hour: int = Field(10, ge=0, description="tracks seen on frames but not confirmed at the part's close")
    dropped_min_hits: int = Field(2, ge=1, description="a dropped track needs this many hits (one-frame glints are noise)")
    flipped_per_hour: int = Field(10, ge=0, description="confirmed tracks whose class vote was split")
    flip_min_share: float = Field(0.3, gt=0.0, le=0.5, description="the runner-up class holds at least this share of the vote")
    random_good_per_hour: int = Field(5, ge=0, description="frames of parts judged good, to find missed defects")
    random_good_probability: float = Field(0.02, ge=0.0, le=1.0)
    alert_per_hour: int = Field(20, ge=0, description="extra random frames of a camera while an SPC alert is open for it")
    alert_probability: float = Field(0.1, ge=0.0, le=1.0)
    alert_multiplier: float = Field(3.0, ge=1.0, description="caps of every strategy while an alert is open")
    alert_max_open_s: float = Field(8 * 3600.0, gt=0.0, description="an alert with no RECOVERY counts as closed after this")
    buffer_frames: int = Field(16, ge=1, description="frames of a camera's open part kept in memory for close-time "
                                                      "strategies (dropped/flipped/random good)")


class WebSettings(BaseModel):
    """`defectstream web`, the review and inspection view for quality engineers (issue 21).

    Users are `name: scrypt hash` pairs (make a hash with `defectstream web hash-password`), e.g.
    `DEFECTSTREAM_WEB__USERS='{"alice": "scrypt:16384:8:1:..."}'`; nobody gets in without one. The
    session cookie is signed with `secret_key`: set it (32+ random characters) so sessions survive a
    restart and several server processes accept each other's cookies; unset, a random key is drawn at
    start-up and every restart logs everybody out.
    """

    host: str = Field("127.0.0.1", description="address the server binds (loopback unless a reverse proxy needs more)")
    port: int = Field(8600, ge=1, le=65535)
    users: dict[str, SecretStr] = Field(default_factory=dict, description="user name -> scrypt password hash")
    secret_key: SecretStr | None = Field(None, description="signs the session cookie; None = random per process")
    session_max_age_s: int = Field(12 * 3600, ge=60, description="a session cookie older than this is refused")
    secure_cookie: bool = Field(False, description="mark the cookie Secure (set when served over HTTPS)")
    page_size: int = Field(60, ge=1, le=1000, description="rows per page of the queue and the gallery")
    spc_refresh_s: float = Field(15.0, ge=0.0, description="an SPC report (and chart) younger than this is served as "
                                 "it is; older, while parts keep arriving, it is recomputed in the background "
                                 "(0: every request computes its report)")
    spc_max_stale_s: float = Field(120.0, ge=0.0, description="the oldest SPC report ever served; the page says when "
                                   "its report was computed")

    @field_validator("users")
    @classmethod
    def _hashes_only(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        bad = [name for name, h in v.items() if not h.get_secret_value().startswith("scrypt:")]
        if bad:
            raise ValueError(f"web.users holds a value that is not an scrypt hash for {', '.join(sorted(bad))}; "
                             "store `defectstream web hash-password` output, never a password")
        return v


class Settings(BaseSettings):
    """All defectstream settings; `DEFECTSTREAM_` prefix, `__` between nested names."""

    model_config = SettingsConfigDict(
        env_prefix="DEFECTSTREAM_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    plant: PlantSettings = Field(default_factory=PlantSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    app_id: str = "defectstream"
    run_id: str = "production"
    data_dir: str = ".stack/worker"


def settings_with_env(env: dict[str, str]) -> Settings:
    """Settings as read with `env` added to the environment; the process environment is left as it was.

    For code that configures a child process through DEFECTSTREAM_* variables and needs the same
    settings in-process (tests, the demo's supervisor).
    """
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
