"""The one place that builds Kafka clients: producers, consumers and admin clients of kafka-python
and aiokafka, each from `KafkaSettings` (brokers, SASL, SSL), so one setting secures them all.

Callers pass only what is theirs (topics, group, offsets, timeouts); the connection never. The
Faust app's own clients are configured in `streams.app` from the same settings. `framing` is the
wire format (plain single-object Avro or Confluent's magic byte + schema id) every codec uses.
`tests/unit/test_kafka_clients.py` checks that no other module constructs a client.
"""
from __future__ import annotations

from typing import Any

from sinks.runner import import_kafka  # noqa: F401 - re-exported: kafka-python without its import warnings
from streams.settings import KafkaSettings


def framing(kafka: KafkaSettings) -> str:
    """The Avro framing of every topic: ``confluent`` (Schema Registry wire format) or ``single_object``."""
    return "confluent" if kafka.confluent_wire_format else "single_object"


def producer(kafka: KafkaSettings, **options: Any) -> Any:
    """A kafka-python `KafkaProducer`; `options` are producer settings (acks, linger_ms, …)."""
    return import_kafka().KafkaProducer(**options, **kafka.client_kwargs())


def consumer(kafka: KafkaSettings, *topics: str, **options: Any) -> Any:
    """A kafka-python `KafkaConsumer` (subscribed to `topics` when given)."""
    return import_kafka().KafkaConsumer(*topics, **options, **kafka.client_kwargs())


def admin(kafka: KafkaSettings, **options: Any) -> Any:
    """A kafka-python `KafkaAdminClient`."""
    return import_kafka("kafka.admin").KafkaAdminClient(**options, **kafka.client_kwargs())


def aio_consumer(kafka: KafkaSettings, *topics: str, **options: Any) -> Any:
    """An aiokafka `AIOKafkaConsumer` (to be started by the caller, inside its event loop)."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(*topics, **options, **kafka.aiokafka_kwargs())


def aio_producer(kafka: KafkaSettings, **options: Any) -> Any:
    """An aiokafka `AIOKafkaProducer` (to be started by the caller, inside its event loop)."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(**options, **kafka.aiokafka_kwargs())
