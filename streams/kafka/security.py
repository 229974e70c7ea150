"""Kafka users and ACLs of a deployment: SCRAM users per role and what each may read and write.

The broker runs with SASL (SCRAM-SHA-512) on its client listener, the StandardAuthorizer and
``allow.everyone.if.no.acl.found=false``, so a principal can do only what `acl_plan` grants it;
the admin (the broker itself, `defectstream kafka-init`, operators' `cameras set` / `models
promote`) is the one super user. The roles:

* ``camera`` — write `frames` (nothing else: no promotions on `cameras`, no forged `defects` /
  `parts` rows);
* ``worker`` — read `frames` under its group (the app id) and `cameras` (group-less), write
  `defects`, `parts`, `deadletter`, and own its internal topics (`<app id>-*`: part timeouts,
  the tracking changelog, Faust's assignor topic);
* ``sink`` — read `defects`, `parts`, `alerts` under its group, write `deadletter`;
* ``monitor`` — write `alerts`.

`apply_security` (run once by the compose init service, idempotent) creates the topics, the
SCRAM users and these ACLs; the passwords come from the environment with no defaults.
"""
from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple

from streams.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("camera", "worker", "sink", "monitor")
PASSWORD_ENV = {role: f"KAFKA_{role.upper()}_PASSWORD" for role in ROLES}  # as docker-compose.yml passes them


class Grant(NamedTuple):
    """One ALLOW ACL: `principal` may do `operation` on the `resource` named `name` (`pattern`)."""

    principal: str  # "User:<name>"
    resource: str  # "TOPIC" | "GROUP"
    name: str
    pattern: str  # "LITERAL" | "PREFIXED"
    operation: str  # kafka ACLOperation name: READ, WRITE, DESCRIBE, CREATE, ALL, ...


def acl_plan(settings: Settings, users: dict[str, str] | None = None) -> list[Grant]:
    """The ACLs of every role (`users`: role -> user name, default the role's name), from the
    topic names, app id and sink group in `settings`."""
    users = {r: r for r in ROLES} | (users or {})
    t = settings.kafka.topics
    out: list[Grant] = []

    def topic(role: str, name: str, *ops: str, pattern: str = "LITERAL") -> None:
        out.extend(Grant(f"User:{users[role]}", "TOPIC", name, pattern, op) for op in ops)

    def group(role: str, name: str) -> None:
        out.extend(Grant(f"User:{users[role]}", "GROUP", name, "LITERAL", op) for op in ("READ", "DESCRIBE"))

    topic("camera", t.frames, "WRITE", "DESCRIBE")
    topic("worker", t.frames, "READ", "DESCRIBE")
    topic("worker", t.cameras, "READ", "DESCRIBE")
    for name in (t.defects, t.parts, t.deadletter, t.review_frames, t.review_queue):
        topic("worker", name, "WRITE", "DESCRIBE")
    topic("worker", t.alerts, "READ", "DESCRIBE")  # more review sampling while an SPC alert is open
    topic("worker", f"{settings.app_id}-", "ALL", pattern="PREFIXED")  # its own internal topics
    group("worker", settings.app_id)
    for name in (t.defects, t.parts, t.alerts, t.review_frames, t.review_queue):
        topic("sink", name, "READ", "DESCRIBE")
    topic("sink", t.deadletter, "WRITE", "DESCRIBE")
    group("sink", settings.sink.group_id)
    topic("monitor", t.alerts, "WRITE", "DESCRIBE")
    return out


def passwords_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """role -> password from `KAFKA_<ROLE>_PASSWORD`; raises ValueError naming every one missing (no defaults)."""
    env = os.environ if environ is None else environ
    missing = [v for v in PASSWORD_ENV.values() if not env.get(v)]
    if missing:
        raise ValueError(f"set {', '.join(missing)} (the Kafka passwords of the roles; no defaults)")
    return {role: env[var] for role, var in PASSWORD_ENV.items()}


def apply_security(settings: Settings, passwords: dict[str, str], users: dict[str, str] | None = None,
                   mechanism: str = "SCRAM-SHA-512") -> dict[str, Any]:
    """Create the topics, the SCRAM user of every role and the ACLs of `acl_plan`, as the admin
    `settings.kafka` logs in with. Idempotent (existing users get the given password, existing ACLs
    stay). Returns {"topics_created", "users", "acls"}; raises on any refusal."""
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
        UserScramCredentialUpsertion,
    )

    from streams.kafka import clients
    from streams.kafka.topics import ensure_topics

    users = {r: r for r in ROLES} | (users or {})
    created = ensure_topics(settings)
    admin = clients.admin(settings.kafka, client_id=f"{settings.app_id}-kafka-init")
    try:
        result = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(users[role], mechanism, passwords[role]) for role in ROLES])
        failed = {u: e for u, e in (result or {}).items() if e}
        if failed:
            raise RuntimeError(f"SCRAM users refused: {failed}")
        plan = acl_plan(settings, users)
        acls = [ACL(principal=g.principal, host="*", operation=ACLOperation[g.operation],
                    permission_type=ACLPermissionType.ALLOW,
                    resource_pattern=ResourcePattern(ResourceType[g.resource], g.name, ACLResourcePatternType[g.pattern]))
                for g in plan]
        res = admin.create_acls(acls)
        if res.get("failed"):
            raise RuntimeError(f"ACLs refused: {res['failed']}")
    finally:
        admin.close()
    log.info("kafka-init: %d topics created, SCRAM users %s, %d ACLs", len(created), sorted(users.values()), len(plan))
    return {"topics_created": created, "users": sorted(users.values()), "acls": len(plan)}
