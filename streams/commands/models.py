"""`defectstream models list|show|promote`: the model registry and which camera/line runs what in production.

A model is one directory of checkpoints of any family (`models.loading`: severity
detector + classifier, segmenter, image classifier, optional gate); its version is the
checkpoints' versions joined by "+". `list` shows the current promotions (read from the compacted
`cameras` topic with a short timeout) and the registry; `show` prints one model's identity.
`promote MODEL [--camera ID | --line ID]` validates the model (every hash verified), publishes a
`streams.inspection.model_selection.Promotion` under its scope key (``*``, ``*line:<id>``, ``*camera:<id>``)
of the `cameras` topic (workers switch at each affected camera's next part boundary) and records
it in `model_runs` (run_id ``production``, kind ``promotion``); `promote --clear [--camera ID |
--line ID]` publishes the scope's tombstone (kind ``promotion_cleared``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from streams.commands.options import output_option
from streams.inspection.model_selection import PLANT, ModelSelection, Promotion, Scope, parse_scope, scope_of
from streams.kafka import clients
from streams.settings import Settings


class ModelRefError(LookupError):
    """A VERSION|PATH that names no (unique, valid) model."""


class KafkaUnavailable(RuntimeError):
    """The `cameras` topic could not be read (broker unreachable, timeout)."""


class ModelEntry(NamedTuple):
    """One loadable model found under the registry roots."""

    model_version: str  # the checkpoints' versions joined by "+" (what the Inspector reports)
    family: str
    path: Path  # what `models.loading.load_inspector` takes for exactly this model
    files: dict[str, str]  # role -> checkpoint file
    content_hashes: dict[str, str]
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {**self._asdict(), "path": str(self.path)}


def default_roots() -> list[Path]:
    from models.loading import DEFAULT_CHECKPOINT_DIR

    return [DEFAULT_CHECKPOINT_DIR]


def list_infos(roots: Sequence[str | Path]) -> list[Any]:
    """Registry entries (every checkpoint file) under `roots`, de-duplicated by path."""
    from models.core.checkpoints import list_checkpoints

    seen, out = set(), []
    for root in roots:
        if not Path(root).exists():
            continue
        for info in list_checkpoints(root):
            if info.path not in seen:
                seen.add(info.path)
                out.append(info)
    return out


def _model_refs(directory: Path) -> list[Path]:
    """Paths that select each model a directory can hold (each family's `selectors`, e.g. every detector
    variant and the segmenter), and the directory itself (its default choice)."""
    import models.families  # noqa: F401  (registers every family)
    from models.core.families import family_specs

    return [p for spec in family_specs() for p in spec.selectors(directory)] + [directory]


def list_models(roots: Sequence[str | Path]) -> list[ModelEntry]:
    """Every valid model under `roots` (hashes verified), one entry per distinct set of files.

    Directories whose checkpoints do not form a model (or fail validation) are skipped.
    """
    from models.core.checkpoints import CheckpointError
    from models.loading import model_files, model_identity

    out: list[ModelEntry] = []
    seen: set[tuple[str, ...]] = set()
    for d in sorted({Path(i.path).parent for i in list_infos(roots)}):
        for ref in _model_refs(d):
            try:
                mf = model_files(ref)
                files = tuple(sorted(str(p) for p in mf.files.values()))
                if files in seen:
                    continue
                seen.add(files)
                version, hashes, metrics = model_identity(ref)
            except CheckpointError:
                continue
            out.append(ModelEntry(version, mf.family, ref, {r: str(p) for r, p in mf.files.items()}, hashes, metrics))
    return out


def resolve_model(ref: str, roots: Sequence[str | Path]) -> Path:
    """The path (`load_inspector` takes it) of the model named by `ref`.

    `ref` is a path (a model directory or one of its `.pt` files), a model version (the
    '+'-joined checkpoint versions, as `models list` shows it), or the version of one checkpoint
    that belongs to exactly one model (e.g. a detector's or a segmenter's).

    Raises:
        ModelRefError: nothing valid, or more than one model, matches.
    """
    from models.core.checkpoints import CheckpointError
    from models.loading import model_files

    p = Path(ref)
    if p.exists():
        try:
            model_files(p)
        except CheckpointError as exc:
            raise ModelRefError(str(exc)) from exc
        return p
    models = list_models(roots)
    found = [m for m in models if m.model_version == ref]
    if not found:
        found = [m for m in models if ref in m.model_version.split("+")]
    if not found:
        where = ", ".join(str(r) for r in roots)
        raise ModelRefError(f"no model {ref!r} under {where} (see `defectstream models list`)")
    versions = sorted({m.model_version for m in found})
    if len(versions) > 1:
        raise ModelRefError(f"{ref!r} is ambiguous: it is part of {versions}; give the full version or a path")
    return found[0].path


def _record(executor: Any, version: str, kind: str, now: int, note: bytes) -> None:
    from sinks.clickhouse import MODEL_RUN_COLUMNS

    executor.insert("model_runs", MODEL_RUN_COLUMNS, [("production", version, kind, now, now, note.decode(), now, now)])


def promote(settings: Settings, ref: str, roots: Sequence[str | Path], *, camera: str | None = None,
            line: str | None = None, executor: Any = None, send: Callable[[bytes, bytes | None], None] | None = None,
            note: str = "", clock: Callable[[], float] = time.time) -> Promotion:
    """Publish the promotion of `ref` for `camera`, `line` or (neither) the whole plant, and record it.

    Args:
        send: `send(key, value)` that returns once the broker acknowledged (a kafka-python producer
            on `settings.kafka.topics.cameras` when None).
        executor: ClickHouse executor for the `model_runs` record (None: not recorded).
    Raises:
        ModelRefError / models.core.checkpoints.CheckpointError: `ref` names no valid model.
        ValueError: both `camera` and `line`, or an empty id.
    Guarantees: nothing is published unless every checkpoint's hash verifies; the promotion is
    durable on the topic before it is recorded; publishing the same model again is harmless
    (workers already running it for that scope do nothing).
    """
    from models.loading import model_identity

    scope = scope_of(camera, line)
    path = resolve_model(ref, roots)
    version, hashes, _metrics = model_identity(path)
    now = int(clock() * 1000)
    promo = Promotion(version, str(path.resolve()), now, hashes, note, scope.key)
    (send or _sender(settings))(scope.key.encode(), promo.to_json())
    if executor is not None:
        _record(executor, version, "promotion", now, promo.to_json())
    return promo


def clear_promotion(settings: Settings, *, camera: str | None = None, line: str | None = None, executor: Any = None,
                    send: Callable[[bytes, bytes | None], None] | None = None, note: str = "",
                    clock: Callable[[], float] = time.time) -> Scope:
    """Publish the tombstone of the promotion for `camera`, `line` or (neither) the whole plant.

    Its cameras fall back to the next rule (line, plant, the worker's default) at their next part
    boundary. Clearing a scope that has no promotion is harmless. Recorded in `model_runs` (kind
    ``promotion_cleared``, empty model version) when `executor` is given, after the broker's ack.
    """
    scope = scope_of(camera, line)
    (send or _sender(settings))(scope.key.encode(), None)
    if executor is not None:
        now = int(clock() * 1000)
        _record(executor, "", "promotion_cleared", now, json.dumps({"scope": scope.key, "note": note}).encode())
    return scope


def _sender(settings: Settings) -> Callable[[bytes, bytes | None], None]:
    return lambda key, value: _publish(settings, key, value)


def _publish(settings: Settings, key: bytes, value: bytes | None) -> None:
    from streams.kafka.topics import ensure_topics

    ensure_topics(settings)  # the compacted `cameras` topic, when it does not exist yet
    producer = clients.producer(settings.kafka, acks="all")
    try:
        producer.send(settings.kafka.topics.cameras, key=key, value=value).get(timeout=30)
    finally:
        producer.close(timeout=10)


def read_cameras_topic(settings: Settings, timeout_s: float = 3.0) -> tuple[ModelSelection, Any]:
    """The current promotions and camera configs: the compacted `cameras` topic read to its end.

    Returns (ModelSelection with every scope's promotion, CameraRegistry). A topic that does not
    exist yet gives empty ones.
    Raises:
        KafkaUnavailable: the broker cannot be reached, or the topic is not read within `timeout_s`.
    """
    from streams.inspection.cameras import CameraRegistry

    kafka = clients.import_kafka()
    TopicPartition = clients.import_kafka("kafka.structs").TopicPartition  # noqa: N806
    selection, registry = ModelSelection(), CameraRegistry()
    # kafka-python logs every refused connection; the caller reports one clear line instead
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        _read_cameras(kafka, TopicPartition, settings, timeout_s, selection, registry)
    finally:
        kafka_log.setLevel(level)
    return selection, registry


def _check_reachable(settings: Settings, timeout_s: float) -> None:
    """Raise KafkaUnavailable unless some bootstrap server accepts a TCP connection within `timeout_s`
    (a quick answer when the broker is down, before kafka-python retries for its own timeout)."""
    import socket

    errors = []
    for server in settings.kafka.bootstrap_list:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError) as exc:
            errors.append(f"{server}: {exc}")
    raise KafkaUnavailable(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable ({'; '.join(errors)})")


def _read_cameras(kafka: Any, TopicPartition: Any, settings: Settings, timeout_s: float,  # noqa: N803
                  selection: ModelSelection, registry: Any) -> None:
    from streams.inspection.cameras import apply_cameras_record

    ms = max(1000, int(timeout_s * 1000))
    topic = settings.kafka.topics.cameras
    deadline = time.monotonic() + timeout_s
    _check_reachable(settings, timeout_s)
    try:
        consumer = clients.consumer(settings.kafka, group_id=None, enable_auto_commit=False,
                                    bootstrap_timeout_ms=ms, request_timeout_ms=ms)
    except kafka.errors.KafkaConfigurationError:
        raise  # our mistake, not the broker's
    except Exception as exc:  # noqa: BLE001 - NoBrokersAvailable, bootstrap timeout and friends
        raise KafkaUnavailable(f"Kafka at {settings.kafka.bootstrap_servers} is not reachable: {exc}") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        end = consumer.end_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        todo = {tp for tp in tps if end[tp] > 0}
        while todo:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"reading topic {topic} timed out after {timeout_s:.0f}s")
            for tp, records in consumer.poll(timeout_ms=300).items():
                for r in records:
                    if r.offset < end[tp]:
                        apply_cameras_record(r.key, r.value, registry, selection, r.offset)
            todo = {tp for tp in todo if consumer.position(tp) < end[tp]}  # compaction leaves offset gaps
    except KafkaUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - broker errors while reading
        raise KafkaUnavailable(f"cannot read topic {topic} at {settings.kafka.bootstrap_servers}: {exc}") from exc
    finally:
        consumer.close()


class CameraModel(NamedTuple):
    """What one camera runs for its new parts, assuming every promoted model loads."""

    camera_id: str
    line_id: str | None
    pinned: str | None
    rule: str  # camera | pinned | line | plant | default
    model_version: str


def production_view(selection: ModelSelection, registry: Any, default_version: str | None) -> list[CameraModel]:
    """Per known camera (a camera config or a camera-scoped promotion), the rule and version its
    next part takes. A camera's line is its config's `line_id` (a camera without one reports its
    frames' line, unknown here)."""
    cams = set(registry.cameras()) | {s.name for s in selection.promotions if s.kind == "camera"}
    sel = ModelSelection(default_version or "default")
    sel.promotions = dict(selection.promotions)
    out = []
    cams |= set(registry.aliases()) if hasattr(registry, "aliases") else set()
    for cam in sorted(c for c in cams if c):
        cfg = registry.get(cam)
        line = cfg.line_id if cfg is not None else None
        pinned = cfg.model_version if cfg is not None else None
        alias = registry.alias_of(cam) if hasattr(registry, "alias_of") else None
        rule, version = sel.candidates(cam, line, pinned, alias)[0]
        out.append(CameraModel(cam, line, pinned, rule, version))
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _metric_text(metrics: dict[str, Any]) -> str:
    keys = ("defect_f1", "f1", "val_mean_iou", "mean_iou", "defect_recall", "defect_precision", "class_accuracy")
    out = [f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), (int, float))]
    return " ".join(out[:4])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list/show models; promote one to production (plant, line or camera)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", action="append", help="checkpoint directory to search (repeatable; default packaged)")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = msub.add_parser("list", help="promotions per plant/line/camera, models and checkpoints")
    output_option(ls, ["table", "json"])
    ls.add_argument("--kafka-timeout", type=float, default=3.0,
                    help="seconds to read the promotions from the cameras topic (0: skip)")
    ls.set_defaults(func=cli_list)
    sh = msub.add_parser("show", help="one model's identity, files and metrics (hashes verified)")
    sh.add_argument("model", help="VERSION or PATH (model directory or one of its .pt files)")
    sh.set_defaults(func=cli_show)
    pr = msub.add_parser("promote", help="make workers switch to a model at each camera's next part boundary")
    pr.add_argument("model", nargs="?", help="VERSION or PATH (model directory or one of its .pt files)")
    where = pr.add_mutually_exclusive_group()
    where.add_argument("--camera", help="only this camera (wins over line, plant and a camera's pinned version)")
    where.add_argument("--line", help="only the cameras of this line (wins over the plant-wide promotion)")
    pr.add_argument("--clear", action="store_true", help="remove the scope's promotion instead (no MODEL)")
    pr.add_argument("--note", default="", help="why (stored with the promotion)")
    pr.add_argument("--no-record", action="store_true", help="do not record the promotion in ClickHouse")
    pr.add_argument("--database", help="ClickHouse database (default: settings)")
    gate = pr.add_argument_group("replay gate", "with --require-replay RUN, refuse unless the candidate's replay is no "
                                 "worse than production on the reviewed labels (streams.review.promotion_gate)")
    gate.add_argument("--require-replay", metavar="RUN", help="the replay run of this model to judge it by")
    gate.add_argument("--recall-margin", type=float, default=0.05, help="recall may be at most this much lower")
    gate.add_argument("--false-alarm-margin", type=float, default=2.0,
                      help="false alarms per 100 parts may be at most this much higher")
    gate.add_argument("--confidence", type=float, default=0.95, help="one-sided confidence of the Wilson bounds")
    gate.add_argument("--min-defective", type=int, default=10, help="reviewed defective parts the replay must cover")
    gate.add_argument("--min-parts", type=int, default=20, help="reviewed parts the replay must cover")
    pr.set_defaults(func=cli_promote)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _roots(args: argparse.Namespace) -> list[Path]:
    return [Path(r) for r in args.root] if args.root else default_roots()


def _default_version(settings: Settings) -> str | None:
    from models.core.checkpoints import CheckpointError
    from models.loading import model_identity

    try:
        return model_identity(settings.model.path)[0]
    except (CheckpointError, OSError):
        return None


def _production(settings: Settings, timeout_s: float) -> dict[str, Any]:
    doc: dict[str, Any] = {"topic": settings.kafka.topics.cameras, "bootstrap_servers": settings.kafka.bootstrap_servers,
                           "reachable": None, "error": None, "default": _default_version(settings),
                           "default_path": settings.model.path, "promotions": [], "cameras": []}
    if timeout_s <= 0:
        return doc
    try:
        selection, registry = read_cameras_topic(settings, timeout_s)
    except KafkaUnavailable as exc:
        doc.update(reachable=False, error=str(exc))
        return doc
    doc["reachable"] = True
    state = {p.scope: loadable(p) for p in selection.wanted()}  # Promotion holds a dict: not hashable
    doc["promotions"] = [{**p._asdict(), "scope_name": str(_scope(p)), "loadable": state[p.scope]}
                         for p in selection.wanted()]
    # what cameras run: a promotion not in force is skipped, as the workers skip it (next rule)
    in_force = ModelSelection()
    in_force.promotions = {sc: p for sc, p in selection.promotions.items() if state.get(p.scope) == "ok"}
    doc["cameras"] = [c._asdict() for c in production_view(in_force, registry, doc["default"])]
    doc["aliases"] = registry.aliases()
    doc["rejected_records"] = {"promotion": selection.rejected, **registry.rejected}
    return doc


def loadable(promotion: Promotion) -> str:
    """"ok" when the promoted path holds the promised model (version and every content hash, checked
    here), else why not: a worker cannot load it either, retries with backoff and meanwhile runs the
    scope's cameras on the next rule (see `streams.inspection.model_selection`)."""
    from models.loading import model_identity
    from models.core.checkpoints import CheckpointError

    try:
        version, hashes, _metrics = model_identity(promotion.model_path)
    except (CheckpointError, OSError, ValueError) as exc:
        return f"not loadable: {exc}"
    if version != promotion.model_version:
        return f"not loadable: the path holds model {version}, not {promotion.model_version}"
    diff = sorted(k for k, h in promotion.content_hashes.items() if hashes.get(k) != h)
    if diff:
        return f"not loadable: content hash of {', '.join(diff)} differs from the promoted one"
    return "ok"


def _scope(p: Promotion) -> Scope:
    return parse_scope(p.scope) or PLANT


def cli_list(args: argparse.Namespace) -> int:
    settings = Settings()
    roots = _roots(args)
    prod = _production(settings, args.kafka_timeout)
    infos = list_infos(roots)
    models = list_models(roots)
    if args.output == "json":
        print(json.dumps({"production": prod, "models": [m.to_dict() for m in models],
                          "checkpoints": [i.to_dict() for i in infos]}, indent=2, default=str))
        return 0
    print(f"production (topic {prod['topic']} at {prod['bootstrap_servers']}):")
    if prod["reachable"] is False:
        print(f"  promotions unknown: {prod['error']}")
    elif prod["reachable"] is None:
        print("  promotions not read (--kafka-timeout 0)")
    else:
        for p in prod["promotions"]:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(p["promoted_at"] / 1000))
            state = "" if p["loadable"] == "ok" else f"  NOT IN FORCE ({p['loadable']})"
            print(f"  {p['scope_name']:<24} {p['model_version']:<56} promoted {when}  {p['note']}{state}")
        default = prod["default"] or f"(unreadable: {prod['default_path'] or 'packaged'})"
        print(f"  {'default':<24} {default}  (the worker's configured model, where nothing else applies)")
        for c in prod["cameras"]:
            line = f"line {c['line_id']}" if c["line_id"] else "line from its frames"
            pin = f", pinned {c['pinned']}" if c["pinned"] else ""
            print(f"  camera {c['camera_id']} ({line}{pin}): {c['model_version']} [{c['rule']}]")
        for new, old in sorted(prod["aliases"].items()):
            print(f"  camera {new} is the renamed {old} (its config and camera promotion apply)")
        bad = {k: v for k, v in prod["rejected_records"].items() if v}
        if bad:
            print(f"  invalid records skipped on the topic: {bad}")
    print()
    if not infos:
        print("no checkpoints under " + ", ".join(str(r) for r in roots))
        return 0
    print(f"{'family':<10} {'model version':<64} path")
    for m in models:
        print(f"{m.family:<10} {m.model_version:<64} {m.path}")
    print()
    print(f"{'kind':<10} {'version':<40} {'T':>5} {'created':<20} metrics / path")
    for i in infos:
        thr = f"{i.threshold:.2f}" if i.threshold is not None else "-"
        print(f"{i.kind:<10} {i.model_version:<40} {thr:>5} {i.created:<20} {_metric_text(i.metrics)}  {i.path}")
    return 0


def cli_show(args: argparse.Namespace) -> int:
    from models.core.checkpoints import CheckpointError, read_info
    from models.loading import model_files, model_identity

    try:
        path = resolve_model(args.model, _roots(args))
        mf = model_files(path)
        version, hashes, metrics = model_identity(path)
    except (ModelRefError, CheckpointError) as exc:
        print(f"models show: {exc}", file=sys.stderr)
        return 2
    doc = {"model_version": version, "family": mf.family, "path": str(path), "content_hashes": hashes,
           "metrics": metrics, "valid": True, **{role: read_info(f).to_dict() for role, f in mf.files.items()}}
    print(json.dumps(doc, indent=2, default=str))
    return 0


def cli_promote(args: argparse.Namespace) -> int:
    from models.core.checkpoints import CheckpointError
    from sinks.sql import DriverExecutor

    if args.clear == bool(args.model):
        print("models promote: give MODEL, or --clear without MODEL", file=sys.stderr)
        return 2
    from streams import preflight

    settings = Settings()
    preflight.check_kafka(settings.kafka)  # promotions are records on the `cameras` topic
    gate = None
    if getattr(args, "require_replay", None) and not args.clear:
        gate = _replay_gate(settings, args)
        if gate is None:
            return 2
        for line in gate.reasons:
            print(f"gate: {line}", file=sys.stderr)
        if not gate.allowed:
            print(f"models promote: refused: the replay {args.require_replay} does not prove {args.model} no worse than "
                  "production (reasons above)", file=sys.stderr)
            return 1
    ex = None if args.no_record else DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        if args.clear:
            scope = clear_promotion(settings, camera=args.camera, line=args.line, executor=ex, note=args.note)
            print(json.dumps({"cleared": str(scope), "topic": settings.kafka.topics.cameras, "key": scope.key},
                             indent=2))
            return 0
        promo = promote(settings, args.model, _roots(args), camera=args.camera, line=args.line, executor=ex,
                        note=args.note)
    except (ModelRefError, CheckpointError, ValueError) as exc:
        print(f"models promote: {exc}", file=sys.stderr)
        return 2
    finally:
        if ex is not None:
            ex.close()
    print(json.dumps({"promoted": promo.model_version, "path": promo.model_path, "scope": str(_scope(promo)),
                      "topic": settings.kafka.topics.cameras, "key": promo.scope,
                      **({"gate": gate.to_dict()} if gate is not None else {})}, indent=2))
    return 0


def _replay_gate(settings: Settings, args: argparse.Namespace) -> Any:
    """The gate's decision for `args.model` and `--require-replay`, or None after printing why it could not be judged."""
    from models.core.checkpoints import CheckpointError
    from models.loading import model_identity
    from sinks.sql import DriverExecutor
    from streams.review.promotion_gate import Margins, check_replay

    try:
        version = model_identity(resolve_model(args.model, _roots(args)))[0]
    except (ModelRefError, CheckpointError, ValueError) as exc:
        print(f"models promote: {exc}", file=sys.stderr)
        return None
    margins = Margins(args.recall_margin, args.false_alarm_margin, args.confidence, args.min_defective, args.min_parts)
    ex = DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        return check_replay(ex, args.require_replay, version, settings.plant, margins)
    except LookupError as exc:
        print(f"models promote: refused: {exc}", file=sys.stderr)
        return None
    finally:
        ex.close()
