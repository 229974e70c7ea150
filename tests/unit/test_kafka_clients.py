"""Every Kafka client defectstream builds comes from one factory, `streams/kafka/clients.py`.

The factory takes the connection (brokers, SASL, SSL) from `KafkaSettings`, so one setting secures
every producer, consumer and admin client; a client built by hand elsewhere (picking
`bootstrap_servers`, or only `security_protocol`) cannot start on a secured cluster. This test
walks the packages' syntax trees and fails on any Kafka client constructor named outside the
factory (called, imported, taken off a module or looked up with getattr), and checks that the
factory's own calls take their connection from the settings.
"""
from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import aiokafka
import pytest
from pydantic import SecretStr

from streams.kafka import clients
from streams.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "sinks", "schemas", "models")
KAFKA_PYTHON = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
AIOKAFKA = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}
CONSTRUCTORS = KAFKA_PYTHON | AIOKAFKA
FACTORY = "streams/kafka/clients.py"
ALLOWED = {FACTORY}  # the sink runner takes its clients from factories the sink command builds here


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def constructor_uses(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """(line, name) of every mention of a Kafka client constructor in `source` (docstrings and comments aside)."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Name) and node.id in CONSTRUCTORS:
            out.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute) and node.attr in CONSTRUCTORS:
            out.append((node.lineno, node.attr))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out += [(node.lineno, a.name) for a in node.names if a.name.rsplit(".", 1)[-1] in CONSTRUCTORS]
        elif isinstance(node, ast.Constant) and node.value in CONSTRUCTORS:  # getattr(module, "KafkaProducer")
            out.append((node.lineno, node.value))
    return out


def package_files() -> list[tuple[str, Path]]:
    return [(str(path.relative_to(ROOT)), path) for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))]


def factory_calls() -> list[tuple[str, ast.Call]]:
    """The constructor calls of the files allowed to build clients."""
    out = []
    for rel, path in package_files():
        if rel in ALLOWED:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and _name(node.func) in CONSTRUCTORS:
                    out.append((f"{rel}:{node.lineno}", node))
    return out


def test_kafka_clients_are_built_only_in_the_factory():
    elsewhere = [f"{rel}:{line} {name}" for rel, path in package_files() if rel not in ALLOWED
                 for line, name in constructor_uses(path.read_text(), str(path))]
    assert not elsewhere, f"build Kafka clients with streams.kafka.clients, not by hand: {elsewhere}"


def test_the_scan_sees_every_kind_of_construction():
    src = (
        "from kafka import KafkaProducer\n"
        "import_kafka().KafkaConsumer('t', **k.client_kwargs())\n"
        "admin = getattr(kafka_admin, 'KafkaAdminClient')\n"
        "from aiokafka import AIOKafkaConsumer as Consumer\n"
        "'''A docstring naming KafkaProducer is no construction.'''\n"
    )
    assert sorted(constructor_uses(src)) == [(1, "KafkaProducer"), (2, "KafkaConsumer"), (3, "KafkaAdminClient"),
                                             (4, "AIOKafkaConsumer")]
    in_factory = {_name(call.func) for where, call in factory_calls() if where.startswith(FACTORY + ":")}
    assert in_factory == {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "AIOKafkaConsumer", "AIOKafkaProducer"}


@pytest.mark.parametrize("where,call", factory_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_client_takes_its_connection_from_the_settings(where, call):
    want = "aiokafka_kwargs" if _name(call.func) in AIOKAFKA else "client_kwargs"
    spread = [kw.value for kw in call.keywords if kw.arg is None]
    assert any(isinstance(v, ast.Call) and _name(v.func) == want for v in spread), f"{where}: no **…{want}()"
    by_hand = {kw.arg for kw in call.keywords} & {"bootstrap_servers", "security_protocol", "sasl_mechanism",
                                                   "sasl_plain_username", "sasl_plain_password", "ssl_context"}
    assert not by_hand, f"{where}: sets {sorted(by_hand)} itself"


def test_streams_reads_the_wire_format_and_kafka_python_through_the_factory():
    ternaries, imports = [], []
    for rel, path in package_files():
        if not rel.startswith("streams/") or rel == FACTORY:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "confluent_wire_format":
                ternaries.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.ImportFrom) and node.module == "sinks.runner" and \
                    any(a.name == "import_kafka" for a in node.names):
                imports.append(f"{rel}:{node.lineno}")
    assert not ternaries, f"use clients.framing(settings.kafka): {ternaries}"
    assert not imports, f"import import_kafka from streams.kafka.clients: {imports}"


def test_the_factory_passes_options_and_the_connection(monkeypatch):
    made = []

    def ctor(kind):
        return lambda *args, **kwargs: made.append((kind, args, kwargs)) or kind

    fake = SimpleNamespace(KafkaProducer=ctor("producer"), KafkaConsumer=ctor("consumer"),
                           KafkaAdminClient=ctor("admin"))
    monkeypatch.setattr(clients, "import_kafka", lambda module="kafka": fake)
    monkeypatch.setattr(aiokafka, "AIOKafkaConsumer", ctor("aio_consumer"))
    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", ctor("aio_producer"))
    k = KafkaSettings(bootstrap_servers="a:9093", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                      sasl_username="plant", sasl_password=SecretStr("pw"))
    assert clients.producer(k, acks="all") == "producer"
    assert clients.consumer(k, "frames", group_id=None) == "consumer"
    assert clients.admin(k, client_id="x") == "admin"
    assert clients.aio_consumer(k, "cameras", group_id=None) == "aio_consumer"
    assert clients.aio_producer(k, acks="all") == "aio_producer"
    by_kind = {kind: (args, kwargs) for kind, args, kwargs in made}
    assert by_kind["producer"] == ((), {"acks": "all", **k.client_kwargs()})
    assert by_kind["consumer"] == (("frames",), {"group_id": None, **k.client_kwargs()})
    assert by_kind["admin"] == ((), {"client_id": "x", **k.client_kwargs()})
    assert by_kind["aio_consumer"][0] == ("cameras",)
    assert by_kind["aio_consumer"][1]["sasl_plain_password"] == "pw"
    assert by_kind["aio_producer"][1]["security_protocol"] == "SASL_SSL"
    assert clients.framing(k) == "single_object"
    assert clients.framing(KafkaSettings(confluent_wire_format=True)) == "confluent"


def test_aiokafka_kwargs_carry_sasl_and_ssl():
    k = KafkaSettings(bootstrap_servers="a:9093, b:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="plant", sasl_password=SecretStr("pw"))
    kw = k.aiokafka_kwargs()
    assert kw["bootstrap_servers"] == ["a:9093", "b:9093"] and kw["security_protocol"] == "SASL_SSL"
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == ("SCRAM-SHA-512", "plant", "pw")
    assert kw["ssl_context"] is not None
    plain = KafkaSettings().aiokafka_kwargs()
    assert plain == {"bootstrap_servers": ["127.0.0.1:19092"], "security_protocol": "PLAINTEXT"}
    kp = k.client_kwargs()
    assert kp["sasl_plain_password"] == "pw" and kp["security_protocol"] == "SASL_SSL"
