"""`defectstream kafka-init`: create the topics, SCRAM users and ACLs of a deployment (`streams.kafka.security`)."""
from __future__ import annotations

import argparse
import json
import sys

from streams.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    from streams.kafka import security

    p = sub.add_parser("kafka-init", help="create the topics, SCRAM users and ACLs (run once as the Kafka admin)",
                       description=security.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mechanism", default="SCRAM-SHA-512", choices=["SCRAM-SHA-256", "SCRAM-SHA-512"], help="SASL SCRAM mechanism of the users")
    p.set_defaults(func=run_kafka_init)


def run_kafka_init(args: argparse.Namespace) -> int:
    from streams.kafka.security import apply_security, passwords_from_env

    try:
        passwords = passwords_from_env()
    except ValueError as exc:
        print(f"kafka-init: {exc}", file=sys.stderr)
        return 2
    from streams import preflight

    settings = Settings()
    preflight.check_kafka(settings.kafka)
    print(json.dumps(apply_security(settings, passwords, mechanism=args.mechanism)))
    return 0
