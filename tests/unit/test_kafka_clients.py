"""Every Kafka client defectstream builds takes its connection (brokers, SASL, SSL) from `KafkaSettings`.

A client that picks `bootstrap_servers` (or only `security_protocol`) by hand cannot start on a
secured cluster; this test finds every constructor call in the packages and checks that its
connection comes from `client_kwargs()` (kafka-python) or `aiokafka_kwargs()` (aiokafka).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "sinks", "schemas", "models")
KAFKA_PYTHON = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
AIOKAFKA = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient"}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def client_calls() -> list[tuple[str, ast.Call]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and _name(node.func) in KAFKA_PYTHON | AIOKAFKA:
                    out.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return out


def test_the_scan_finds_the_clients():
    where = {w.split(":")[0] for w, _ in client_calls()}
    # the sink, the monitor, the cameras-topic follower, the smoke test, topic creation at least
    assert {"sinks/runner.py", "streams/spc/monitor.py", "streams/inspection/agents.py", "streams/commands/smoke.py",
            "streams/kafka/topics.py"} <= where


@pytest.mark.parametrize("where,call", client_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_client_takes_its_connection_from_the_settings(where, call):
    want = "aiokafka_kwargs" if _name(call.func) in AIOKAFKA else "client_kwargs"
    spread = [kw.value for kw in call.keywords if kw.arg is None]
    assert any(isinstance(v, ast.Call) and _name(v.func) == want for v in spread), f"{where}: no **…{want}()"
    by_hand = {kw.arg for kw in call.keywords} & {"bootstrap_servers", "security_protocol", "sasl_mechanism",
                                                   "sasl_plain_username", "sasl_plain_password", "ssl_context"}
    assert not by_hand, f"{where}: sets {sorted(by_hand)} itself"


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
