"""The Faust app: the one place where settings, topics, table, model runner and agents are wired.

Run a worker with `defectstream worker` or the Faust CLI: `faust -A streams.app worker -l info
--without-web` (the Faust CLI starts a web server on 6066 unless told `--without-web`).
Settings come from `DEFECTSTREAM_*` environment variables (see streams.settings).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import faust

from streams.inspection.agents import FaustEmitter, wire_inspect
from streams.inspection.cameras import CameraRegistry
from streams.inspection.inference import InferenceRunner
from streams.inspection.pipeline import InspectPipeline
from streams.kafka import clients
from streams.kafka.serializers import register_avro_codecs
from streams.kafka.topics import FRAME_OVERHEAD_BYTES, Topics, declare_topics
from streams.metrics import WorkerMetrics, serve
from streams.settings import Settings
from streams.tracking.table import TrackingTable


class Wiring(NamedTuple):
    """What `create_app` built, for the CLI and tests."""

    settings: Settings
    topics: Topics
    table: TrackingTable
    pipeline: InspectPipeline
    agents: dict[str, Any]


def create_app(settings: Settings | None = None, *, inspector: Any | None = None) -> faust.App:
    """Build the app from `settings` (read from the environment when None).

    Args:
        settings: all settings; `app_id` is the consumer group and the prefix of internal topics.
        inspector: an already loaded Inspector (tests, replay); None loads the configured
            checkpoint on the first batch.
    Returns:
        The app, with `app.wiring` (a :class:`Wiring`).
    """
    settings = settings or Settings()
    k = settings.kafka
    register_avro_codecs(clients.framing(k))
    datadir = Path(settings.data_dir) / settings.app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in k.bootstrap_list],
        broker_credentials=_credentials(settings),
        store=settings.worker.store,
        datadir=str(datadir),
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        # Dead letters are bounded (worker.deadletter_original_max_bytes) to fit this request size;
        # a consumer must fetch a whole frame of up to worker.max_image_bytes.
        producer_max_request_size=settings.worker.producer_max_request_bytes,
        consumer_max_fetch_size=max(1_048_576, settings.worker.max_image_bytes + FRAME_OVERHEAD_BYTES),
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        broker_session_timeout=settings.worker.session_timeout_s,
        web_enabled=settings.worker.web_enabled,
        web_port=settings.worker.web_port,
    )
    topics = declare_topics(app, settings)
    table = TrackingTable(app, settings)
    runner = InferenceRunner(settings.model, inspector=inspector)
    sampler = None
    if settings.review.enabled:
        from streams.review.sampler import ReviewSampler

        sampler = ReviewSampler(settings.review, run_id=settings.run_id)
    pipeline = InspectPipeline(settings, runner, CameraRegistry(), table, FaustEmitter(topics), metrics=WorkerMetrics(),
                               sampler=sampler)
    agents = wire_inspect(app, settings, topics, table, pipeline)
    app.wiring = Wiring(settings, topics, table, pipeline, agents)  # type: ignore[attr-defined]

    @app.on_worker_init.connect
    def _create_topics(sender: Any, **_: Any) -> None:
        # Before the consumer subscribes: a broker's auto-created `frames` would get the broker's
        # default partition count and break co-partitioning with the tracking table.
        from streams.kafka.topics import ensure_topics

        ensure_topics(settings)
        # Only a running worker serves metrics (importing streams.app binds nothing).
        serve(pipeline.metrics.registry, settings.worker.metrics_port, settings.worker.metrics_addr)

    return app


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    if k.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL") and k.sasl_password is not None:
        return faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password.get_secret_value(), mechanism=k.sasl_mechanism,
            ssl_context=faust.ssl.create_default_context() if k.security_protocol == "SASL_SSL" else None,
        )
    if k.security_protocol == "SSL":
        return faust.SSLCredentials(faust.ssl.create_default_context())
    return None


# The module-level app the Faust CLI looks for (`faust -A streams.app worker`).
app = create_app()
