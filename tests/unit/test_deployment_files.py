"""The plant deployment (docker-compose.yml) parses and references files that exist."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_plant_services():
    services = _compose()["services"]
    for name in ("kafka", "clickhouse", "worker", "simulator", "grafana", "sink", "monitor"):
        assert name in services, name
    broker = (ROOT / "ops/kafka/compose-broker.sh").read_text()
    assert "process.roles=broker,controller" in broker and services["kafka"]["command"][-1].endswith("compose-broker.sh")


def test_compose_references_existing_files():
    missing = []
    for name, svc in _compose()["services"].items():
        build = svc.get("build")
        if build:
            if not (ROOT / build["context"] / build["dockerfile"]).is_file():
                missing.append(f"{name}: {build['dockerfile']}")
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("./") and not (ROOT / src).exists():
                missing.append(f"{name}: {src}")
    assert not missing, missing


def test_dockerfile_copies_the_packages():
    text = (ROOT / "ops/docker/Dockerfile").read_text()
    for pkg in ("streams", "models", "schemas", "sinks"):
        assert f"COPY {pkg} " in text


def test_compose_commands_are_real_subcommands():
    from streams.cli import build_parser

    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    for name, svc in _compose()["services"].items():
        cmd = svc.get("command")
        if cmd and "build" in svc:
            assert cmd[0] in subcommands, f"{name}: {cmd[0]} is not a defectstream subcommand"


ONE_SHOT = {"migrate", "kafka-init"}
# `${VAR:?message}`: compose refuses to start without the variable; no default secret in the file.
REQUIRED_ENV = re.compile(r"^\$\{([A-Z0-9_]+):\?[^}]*\}$")


def test_every_long_running_service_restarts():
    for name, svc in _compose()["services"].items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "on-failure", name  # retried only when it failed
        else:
            assert svc.get("restart") in ("unless-stopped", "always"), f"{name} has no restart policy"


def test_grafana_needs_a_login_and_bakes_in_no_password():
    grafana = _compose()["services"]["grafana"]
    env = grafana["environment"]
    assert grafana.get("ports")  # published: so nobody may get in anonymously
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"
    assert str(env.get("GF_USERS_ALLOW_SIGN_UP", "true")).lower() == "false"
    assert REQUIRED_ENV.match(env["GF_SECURITY_ADMIN_PASSWORD"]), env["GF_SECURITY_ADMIN_PASSWORD"]


def test_no_password_has_a_default_in_compose():
    services = _compose()["services"]
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert REQUIRED_ENV.match(str(value)), f"{name}: {key}={value!r} is a baked-in secret"


def _users(path: Path) -> dict[str, ET.Element]:
    return {u.tag: u for u in ET.parse(path).getroot().find("users")}


def _loopback_only(user: ET.Element) -> bool:
    nets = [e.text.strip() for e in user.find("networks")]
    return all(n in ("127.0.0.1", "::1") for n in nets)


def test_compose_clickhouse_users_let_the_other_containers_log_in():
    services = _compose()["services"]
    ch = services["clickhouse"]
    (mounted,) = [v.split(":")[0] for v in ch["volumes"] if "users.d" in v]
    users = _users(ROOT / mounted)
    ch_env = ch["environment"]
    assert str(ch_env.get("CLICKHOUSE_SKIP_USER_SETUP")) == "1"  # the image adds no user of its own
    clients = {  # service → (user, password value) as the service logs in
        name: (svc["environment"]["DEFECTSTREAM_CLICKHOUSE__USER"], svc["environment"]["DEFECTSTREAM_CLICKHOUSE__PASSWORD"])
        for name, svc in services.items() if "DEFECTSTREAM_CLICKHOUSE__USER" in (svc.get("environment") or {})
    }
    clients["grafana"] = ("reader", services["grafana"]["environment"]["CLICKHOUSE_READER_PASSWORD"])
    assert {"sink", "monitor", "migrate", "grafana"} <= set(clients)
    for service, (user, password) in clients.items():
        assert user in users, f"{service} logs in as {user}, which {mounted} does not define"
        u = users[user]
        assert not _loopback_only(u), f"{service}: {user} may only log in from loopback"
        assert u.find("networks").get("replace") == "replace"  # not merged with the image's defaults
        pw = u.find("password")
        assert pw is not None and not (pw.text or "").strip(), f"{user}: literal password in {mounted}"
        var = pw.get("from_env")
        assert var and REQUIRED_ENV.match(str(ch_env[var])), f"{user}: password not from a required variable"
        assert REQUIRED_ENV.match(password).group(1) == var, f"{service} and ClickHouse disagree on {user}'s password"


def test_the_local_stack_keeps_its_loopback_users():
    users = _users(ROOT / "ops" / "clickhouse" / "users.xml")
    assert set(users) == {"default", "writer", "reader"}
    assert all(_loopback_only(u) for u in users.values())


def _metrics_port(svc: dict, name: str, default: int) -> int:
    return int((svc.get("environment") or {}).get(f"DEFECTSTREAM_{name}__METRICS_PORT", default))


def test_prometheus_scrapes_the_worker_and_the_sink_on_their_metrics_ports():
    from streams.settings import Settings

    services = _compose()["services"]
    prom = services["prometheus"]
    assert prom.get("restart") in ("unless-stopped", "always")
    assert not prom.get("ports")  # only Grafana reads it, inside the compose network
    (cfg_mount,) = [v for v in prom["volumes"] if v.startswith("./")]
    src, dst = cfg_mount.split(":")[:2]
    assert dst == "/etc/prometheus/prometheus.yml" and f"--config.file={dst}" in prom["command"]
    cfg = yaml.safe_load((ROOT / src).read_text())
    targets = {}
    for job in cfg["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                targets[host] = sd["port"]
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                targets[host] = int(port)
    s = Settings()
    assert targets.get("worker") == _metrics_port(services["worker"], "WORKER", s.worker.metrics_port)
    assert targets.get("sink") == _metrics_port(services["sink"], "SINK", s.sink.metrics_port)
    assert s.worker.metrics_port and s.sink.metrics_port  # 0 would turn the endpoints off
    # The endpoints bind loopback by default; inside the containers Prometheus scrapes, every address.
    assert s.worker.metrics_addr == s.sink.metrics_addr == "127.0.0.1"
    assert services["worker"]["environment"]["DEFECTSTREAM_WORKER__METRICS_ADDR"] == "0.0.0.0"
    assert services["sink"]["environment"]["DEFECTSTREAM_SINK__METRICS_ADDR"] == "0.0.0.0"
    scraped = {"worker", "sink"}
    for name, svc in services.items():
        if name not in scraped:
            assert not any(k.endswith("__METRICS_ADDR") for k in (svc.get("environment") or {})), name


def test_grafana_has_the_prometheus_datasource_and_starts_after_it():
    services = _compose()["services"]
    assert "prometheus" in services["grafana"]["depends_on"]
    doc = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yaml").read_text())
    (ds,) = doc["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["editable"] is False
    assert not ds.get("isDefault")  # the ClickHouse datasource stays the default of the SPC dashboard


# ----------------------------------------------------------------------- Kafka: SASL/SCRAM + ACLs (issue 17, #10)
KAFKA_ROLE_OF = {"worker": "worker", "sink": "sink", "monitor": "monitor", "simulator": "camera"}


def _broker_props() -> dict[str, str]:
    text = (ROOT / "ops/kafka/compose-broker.sh").read_text()
    body = re.search(r'cat > "\$PROPS" <<EOF\n(.*?)\nEOF', text, re.S).group(1)
    return dict(line.split("=", 1) for line in body.splitlines() if line and not line.startswith("#"))


def test_the_compose_broker_authenticates_and_authorises_every_client():
    props = _broker_props()
    listeners = props["listeners"].split(",")
    assert all(not x.startswith("PLAINTEXT") for x in listeners), listeners  # no unauthenticated listener
    proto = dict(x.split(":") for x in props["listener.security.protocol.map"].split(","))
    assert set(proto.values()) == {"SASL_PLAINTEXT"}  # the controller listener too
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false" and props["super.users"] == "User:admin"
    assert props["auto.create.topics.enable"] == "false"
    assert "${KAFKA_ADMIN_PASSWORD}" in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    script = (ROOT / "ops/kafka/compose-broker.sh").read_text()
    assert ': "${KAFKA_ADMIN_PASSWORD:?' in script and "--add-scram" in script  # no default admin password
    kafka = _compose()["services"]["kafka"]
    assert REQUIRED_ENV.match(kafka["environment"]["KAFKA_ADMIN_PASSWORD"])
    assert not kafka.get("ports")  # reached inside the compose network; publish 9092 only with these settings
    assert any(v.startswith("./ops/kafka/compose-broker.sh:") for v in kafka["volumes"])


def test_every_kafka_client_in_compose_logs_in_as_its_own_role_after_kafka_init():
    from streams.kafka.security import PASSWORD_ENV

    services = _compose()["services"]
    init = services["kafka-init"]
    assert init["command"] == ["kafka-init"] and init["depends_on"]["kafka"]["condition"] == "service_healthy"
    ienv = init["environment"]
    assert ienv["DEFECTSTREAM_KAFKA__SASL_USERNAME"] == "admin"
    assert REQUIRED_ENV.match(ienv["DEFECTSTREAM_KAFKA__SASL_PASSWORD"]).group(1) == "KAFKA_ADMIN_PASSWORD"
    for role, var in PASSWORD_ENV.items():
        assert REQUIRED_ENV.match(ienv[var]).group(1) == var, role  # kafka-init gets every role's password
    for name, role in KAFKA_ROLE_OF.items():
        svc = services[name]
        env = svc["environment"]
        assert env["DEFECTSTREAM_KAFKA__SECURITY_PROTOCOL"] == "SASL_PLAINTEXT", name
        assert env["DEFECTSTREAM_KAFKA__SASL_MECHANISM"] == "SCRAM-SHA-512", name
        assert env["DEFECTSTREAM_KAFKA__SASL_USERNAME"] == role, name
        assert REQUIRED_ENV.match(env["DEFECTSTREAM_KAFKA__SASL_PASSWORD"]).group(1) == PASSWORD_ENV[role], name
        assert svc["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully", name
    for name, svc in services.items():  # nobody else reaches Kafka, and none as admin but kafka-init
        env = svc.get("environment") or {}
        if name not in KAFKA_ROLE_OF and name != "kafka-init" and "build" in svc:
            assert env.get("DEFECTSTREAM_KAFKA__SECURITY_PROTOCOL") == "PLAINTEXT" and "DEFECTSTREAM_KAFKA__SASL_USERNAME" not in env, name


def test_the_acl_plan_gives_each_role_only_its_own_topics():
    from streams.kafka.security import acl_plan
    from streams.settings import Settings

    s = Settings()
    t = s.kafka.topics
    plan = acl_plan(s)
    by = {}
    for g in plan:
        by.setdefault(g.principal, set()).add((g.resource, g.name, g.pattern, g.operation))
    assert by["User:camera"] == {("TOPIC", t.frames, "LITERAL", "WRITE"), ("TOPIC", t.frames, "LITERAL", "DESCRIBE")}
    writes = {p: {n for r, n, _pat, op in grants if r == "TOPIC" and op in ("WRITE", "ALL")} for p, grants in by.items()}
    assert writes["User:worker"] == {t.defects, t.parts, t.deadletter, t.review_frames, t.review_queue, f"{s.app_id}-"}
    assert writes["User:sink"] == {t.deadletter} and writes["User:monitor"] == {t.alerts}
    assert not any(t.cameras in w for w in writes.values())  # promotions: the admin only
    assert ("GROUP", s.app_id, "LITERAL", "READ") in by["User:worker"]
    assert ("GROUP", s.sink.group_id, "LITERAL", "READ") in by["User:sink"]
    assert all(g.principal != "User:admin" for g in plan)  # the super user needs none
