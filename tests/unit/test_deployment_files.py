"""The plant deployment (docker-compose.yml) parses and references files that exist."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_plant_services():
    services = _compose()["services"]
    for name in ("kafka", "clickhouse", "worker", "simulator", "grafana", "sink", "monitor"):
        assert name in services, name
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


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
