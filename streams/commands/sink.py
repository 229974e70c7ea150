"""`defectstream sink` (Kafka → ClickHouse) and `defectstream db migrate|status` (ClickHouse schema)."""
from __future__ import annotations

import argparse
import functools
import signal
import sys
from typing import TYPE_CHECKING, Any, Callable

from streams.settings import KafkaSettings, PlantSettings, Settings, SinkSettings

if TYPE_CHECKING:
    from sinks.base import BatchingSink
    from sinks.runner import SinkRunner, SinkStats


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sink",
        help="store the defects, parts and alerts topics in ClickHouse (batched, idempotent)",
        description=(
            "Consume the defects, parts (and alerts) topics under the sink's own consumer group, "
            "decode the Avro events, INSERT them into ClickHouse in batches and commit offsets only "
            "after ClickHouse acknowledged. While ClickHouse is down (or refuses every INSERT, e.g. a "
            "missing table) the partitions are paused and resumed when it answers again. Undecodable "
            "records, and rows ClickHouse can never store (isolated by splitting their batch), go to the "
            "deadletter topic with a reason."
        ),
    )
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--until-idle", type=float, default=None, metavar="S", help="stop once nothing arrived for S seconds")
    p.add_argument("--group-id", default=None, help="consumer group (default: settings sink.group_id)")
    p.set_defaults(func=run_sink_command)

    db = sub.add_parser("db", help="ClickHouse schema: apply migrations, show their state")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    m = dbsub.add_parser("migrate", help="create the database and apply pending migrations (idempotent)")
    m.add_argument("--database", default=None, help="database (default: settings clickhouse.database)")
    m.add_argument("--allow-changed", action="store_true", help="do not fail on edited, already applied migrations")
    m.set_defaults(func=run_migrate)
    s = dbsub.add_parser("status", help="list migrations and whether they are applied")
    s.add_argument("--database", default=None, help="ClickHouse database (default: settings)")
    s.set_defaults(func=run_status)


def shift_of(plant: PlantSettings) -> Callable[[int], Any]:
    """The plant calendar as the sink takes it: timestamp → `ShiftSlot` (LookupError in a gap).

    The sink uses it only for events that carry no shift (written before the tracker stamped it).
    """
    from streams.shifts import shift_at

    return functools.partial(shift_at, plant=plant)


def build_runner(sink: BatchingSink, kafka: KafkaSettings, settings: SinkSettings,
                 topics: dict[str, str] | None = None, **kw: Any) -> SinkRunner:
    """A `SinkRunner` into `sink` whose consumer and dead-letter producer are built by `streams.kafka.clients`."""
    from sinks.runner import SinkRunner
    from streams.kafka import clients

    return SinkRunner(sink, settings, kafka.topics, topics, framing=clients.framing(kafka),
                      consumer_factory=functools.partial(clients.consumer, kafka),
                      producer_factory=functools.partial(clients.producer, kafka), **kw)


def run_sink(settings: Settings, *, max_seconds: float | None = None, idle_s: float | None = None,
             runner_hook: Any = None) -> SinkStats:
    """The ClickHouse sink of `defectstream sink`, wired from `settings` (see `sinks.runner.run_sink`)."""
    from sinks import runner
    from streams.kafka import clients

    return runner.run_sink(
        settings.clickhouse, settings.sink, settings.kafka.topics, timezone=settings.plant.timezone,
        consumer_factory=functools.partial(clients.consumer, settings.kafka),
        producer_factory=functools.partial(clients.producer, settings.kafka),
        framing=clients.framing(settings.kafka), shift_of=shift_of(settings.plant),
        max_seconds=max_seconds, idle_s=idle_s, runner_hook=runner_hook,
    )


def run_sink_command(args: argparse.Namespace) -> int:
    from streams import preflight

    settings = Settings()
    if args.group_id:
        settings.sink.group_id = args.group_id
    # unreachable at start-up is a misconfiguration: one line now, not a sink paused forever (an outage
    # later is survived: the partitions pause until ClickHouse answers again)
    preflight.check_clickhouse(settings.clickhouse)
    preflight.check_kafka(settings.kafka)
    holder: dict = {}

    def _stop(signum, frame):  # noqa: ARG001
        if "runner" in holder:
            holder["runner"].stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stats = run_sink(settings, max_seconds=args.max_seconds, idle_s=args.until_idle,
                     runner_hook=lambda r: holder.setdefault("runner", r))
    reasons = f" {dict(stats.dead_reasons)}" if stats.dead_reasons else ""
    print(
        f"consumed {stats.consumed}, rows written {stats.rows_written}, dead-lettered {stats.deadlettered}{reasons}, "
        f"commits {stats.commits}, holds {stats.holds}"
    )
    return 0


def open_database(settings: Settings, database: str | None = None, *, create: bool = False):
    """An executor on the settings' (or the given) database, creating it first when asked."""
    from sinks.sql import DriverExecutor

    name = database or settings.clickhouse.database
    if create:
        admin = DriverExecutor.connect(settings.clickhouse, database="default")
        try:
            admin.query(f"CREATE DATABASE IF NOT EXISTS `{name}`")
        finally:
            admin.close()
    return DriverExecutor.connect(settings.clickhouse, database=name)


def run_migrate(args: argparse.Namespace) -> int:
    from sinks.migrations import MigrationError, migrate

    settings = Settings()
    ex = open_database(settings, args.database, create=True)
    try:
        ran = migrate(ex, allow_changed=args.allow_changed)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        ex.close()
    for m in ran:
        print(f"applied {m.version:04d}_{m.name}")
    if not ran:
        print("nothing to apply: the schema is up to date")
    return 0


def run_status(args: argparse.Namespace) -> int:
    import datetime as dt

    from sinks.migrations import status

    ex = open_database(Settings(), args.database)
    try:
        rows = status(ex)
    finally:
        ex.close()
    print(f"{'version':>7}  {'name':<24} {'state':<8} applied_at (UTC)")
    for r in rows:
        when = dt.datetime.fromtimestamp(r.applied_at / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if r.applied_at else "-"
        print(f"{r.version:>7}  {r.name:<24} {r.state:<8} {when}")
    return 1 if any(r.state == "CHANGED" for r in rows) else 0
