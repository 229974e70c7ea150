"""`defectstream models list|show|promote`: the checkpoint registry and production's model version.

`list` and `show` read the registry (`models.registry`: version, content hash, metrics). `promote`
validates a checkpoint pair (detector + classifier, hashes checked), publishes a
`streams.model_selection.Promotion` under the reserved key ``*`` of the compacted `cameras` topic
(workers switch at each camera's next part boundary) and records it in `model_runs`
(run_id ``production``, kind ``promotion``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from streams.model_selection import PROMOTION_KEY, Promotion
from streams.settings import Settings


class ModelRefError(LookupError):
    """A VERSION|PATH that names no (unique, valid) checkpoint."""


def default_roots() -> list[Path]:
    from models.inspector import DEFAULT_CHECKPOINT_DIR

    return [DEFAULT_CHECKPOINT_DIR]


def list_infos(roots: Sequence[str | Path]) -> list[Any]:
    """Registry entries (detector and classifier checkpoints) under `roots`, de-duplicated by path."""
    from models.registry import list_checkpoints

    seen, out = set(), []
    for root in roots:
        if not Path(root).exists():
            continue
        for info in list_checkpoints(root):
            if info.path not in seen:
                seen.add(info.path)
                out.append(info)
    return out


def resolve_model(ref: str, roots: Sequence[str | Path]) -> tuple[Path, Path]:
    """(detector .pt, classifier .pt) named by `ref`.

    `ref` is a path (directory or detector .pt, as `Inspector.load` takes it), an Inspector version
    `<detector version>+<classifier version>`, or a detector version (its directory's classifier).
    """
    from models.inspector import resolve_checkpoints
    from models.registry import CheckpointError

    p = Path(ref)
    if p.exists():
        try:
            return resolve_checkpoints(p)
        except CheckpointError as exc:
            raise ModelRefError(str(exc)) from exc
    det_v, _, cls_v = ref.partition("+")
    infos = list_infos(roots)
    dets = [i for i in infos if i.kind == "detector" and i.model_version == det_v]
    found = []
    for d in dets:
        cls = Path(d.path).parent / "classifier.pt"
        match = [i for i in infos if i.path == str(cls) and (not cls_v or i.model_version == cls_v)]
        if match:
            found.append((Path(d.path), cls))
    if not found:
        where = ", ".join(str(r) for r in roots)
        raise ModelRefError(f"no checkpoint {ref!r} under {where} (see `defectstream models list`)")
    if len({f[0].parent for f in found}) > 1 and not cls_v:
        raise ModelRefError(f"{ref!r} is ambiguous: {[str(f[0]) for f in found]}; give the full version or a path")
    return found[0]


def model_identity(det: Path, cls: Path) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(Inspector version, content hashes, metrics) of a pair, with hashes verified."""
    from models.registry import CheckpointError, load_checkpoint

    d = load_checkpoint(det, expected_kind="detector")
    c = load_checkpoint(cls, expected_kind="classifier")
    if d.info.class_names != c.info.class_names:
        raise CheckpointError(f"{det} and {cls} disagree on class names")
    version = f"{d.info.model_version}+{c.info.model_version}"
    return version, {"detector": d.info.content_hash, "classifier": c.info.content_hash}, \
        {"detector": d.info.metrics, "classifier": c.info.metrics, "threshold": d.info.threshold}


def promote(settings: Settings, ref: str, roots: Sequence[str | Path], *, executor: Any = None,
            send: Callable[[bytes, bytes], None] | None = None, note: str = "",
            clock: Callable[[], float] = time.time) -> Promotion:
    """Publish the promotion of `ref` and record it.

    Args:
        send: `send(key, value)` that returns once the broker acknowledged (a kafka-python producer
            on `settings.kafka.topics.cameras` when None).
        executor: ClickHouse executor for the `model_runs` record (None: not recorded).
    Raises:
        ModelRefError / models.registry.CheckpointError: `ref` names no valid checkpoint pair.
    Guarantees: the promotion is durable on the topic before it is recorded; publishing the same
    checkpoint again is harmless (workers already running it do nothing).
    """
    det, cls = resolve_model(ref, roots)
    version, hashes, _metrics = model_identity(det, cls)
    now = int(clock() * 1000)
    promo = Promotion(version, str(det.resolve()), now, hashes, note)
    if send is None:
        _publish(settings, PROMOTION_KEY.encode(), promo.to_json())
    else:
        send(PROMOTION_KEY.encode(), promo.to_json())
    if executor is not None:
        from sinks.clickhouse import MODEL_RUN_COLUMNS

        executor.insert("model_runs", MODEL_RUN_COLUMNS, [
            ("production", version, "promotion", now, now, promo.to_json().decode(), now, now)])
    return promo


def _publish(settings: Settings, key: bytes, value: bytes) -> None:
    from sinks.runner import import_kafka
    from streams.topics import ensure_topics

    ensure_topics(settings)  # the compacted `cameras` topic, when it does not exist yet
    producer = import_kafka().KafkaProducer(acks="all", **settings.kafka.client_kwargs())
    try:
        producer.send(settings.kafka.topics.cameras, key=key, value=value).get(timeout=30)
    finally:
        producer.close(timeout=10)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _metric_text(metrics: dict[str, Any]) -> str:
    keys = ("defect_f1", "f1", "val_mean_iou", "mean_iou", "defect_recall", "defect_precision", "class_accuracy")
    out = [f"{k}={metrics[k]:.3f}" for k in keys if isinstance(metrics.get(k), (int, float))]
    return " ".join(out[:4])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list/show registry checkpoints; promote one to production",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", action="append", help="checkpoint directory to search (repeatable; default packaged)")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = msub.add_parser("list", help="checkpoints with version, threshold and metrics")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=cli_list)
    sh = msub.add_parser("show", help="one checkpoint pair's metadata and metrics (hashes verified)")
    sh.add_argument("model", help="VERSION (detector or detector+classifier) or PATH")
    sh.set_defaults(func=cli_show)
    pr = msub.add_parser("promote", help="make production workers switch to a model at the next part boundary")
    pr.add_argument("model", help="VERSION (detector or detector+classifier) or PATH")
    pr.add_argument("--note", default="", help="why (stored with the promotion)")
    pr.add_argument("--no-record", action="store_true", help="do not record the promotion in ClickHouse")
    pr.add_argument("--database", help="ClickHouse database (default: settings)")
    pr.set_defaults(func=cli_promote)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _roots(args: argparse.Namespace) -> list[Path]:
    return [Path(r) for r in args.root] if args.root else default_roots()


def cli_list(args: argparse.Namespace) -> int:
    infos = list_infos(_roots(args))
    if args.format == "json":
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("no checkpoints under " + ", ".join(str(r) for r in _roots(args)))
        return 0
    print(f"{'kind':<10} {'version':<40} {'T':>5} {'created':<20} metrics / path")
    for i in infos:
        thr = f"{i.threshold:.2f}" if i.threshold is not None else "-"
        print(f"{i.kind:<10} {i.model_version:<40} {thr:>5} {i.created:<20} {_metric_text(i.metrics)}  {i.path}")
    return 0


def cli_show(args: argparse.Namespace) -> int:
    from models.registry import CheckpointError, read_info

    try:
        det, cls = resolve_model(args.model, _roots(args))
        version, hashes, _ = model_identity(det, cls)
    except (ModelRefError, CheckpointError) as exc:
        print(f"models show: {exc}", file=sys.stderr)
        return 2
    doc = {"model_version": version, "content_hashes": hashes, "valid": True,
           "detector": read_info(det).to_dict(), "classifier": read_info(cls).to_dict()}
    print(json.dumps(doc, indent=2, default=str))
    return 0


def cli_promote(args: argparse.Namespace) -> int:
    from models.registry import CheckpointError
    from sinks.sql import DriverExecutor

    settings = Settings()
    ex = None if args.no_record else DriverExecutor.connect(settings.clickhouse, database=args.database)
    try:
        promo = promote(settings, args.model, _roots(args), executor=ex, note=args.note)
    except (ModelRefError, CheckpointError) as exc:
        print(f"models promote: {exc}", file=sys.stderr)
        return 2
    finally:
        if ex is not None:
            ex.close()
    print(json.dumps({"promoted": promo.model_version, "path": promo.model_path,
                      "topic": settings.kafka.topics.cameras, "key": PROMOTION_KEY}, indent=2))
    return 0
