"""`defectstream web`: the review and inspection view (streams.review.web), and `web hash-password`."""
from __future__ import annotations

import argparse
import sys

from streams.commands.options import DefaultsHelpFormatter, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="the web view for quality engineers: review queue, parts, defects, SPC, live, models",
                       description=__doc__, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--host", help="bind address (default: settings web.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: settings web.port, 8600)")
    p.add_argument("--database", help="ClickHouse database (default: settings clickhouse.database)")
    p.set_defaults(func=run_web)
    wsub = p.add_subparsers(dest="web_command", metavar="SUBCOMMAND")
    hp = wsub.add_parser("hash-password", help="print the scrypt hash of a password for DEFECTSTREAM_WEB__USERS",
                         formatter_class=DefaultsHelpFormatter)
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin (one line) instead of a prompt")
    hp.set_defaults(func=run_hash_password)


def run_hash_password(args: argparse.Namespace) -> int:
    from streams.review.passwords import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    if not password:
        raise UsageError("an empty password cannot be hashed")
    print(hash_password(password))
    return 0


def run_web(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from sinks.sql import DriverExecutor
    from streams.review.web.app import create_app
    from streams.settings import Settings

    settings = Settings()
    host, port = args.host or settings.web.host, args.port or settings.web.port
    if not settings.web.users:
        print("warning: no users configured (DEFECTSTREAM_WEB__USERS): nobody can log in; make a hash with "
              "`defectstream web hash-password`", file=sys.stderr)
    if settings.web.secret_key is None:
        logging.getLogger("defectstream.web").warning(
            "DEFECTSTREAM_WEB__SECRET_KEY is not set: a random key signs sessions, a restart logs everybody out")
    app = create_app(settings, lambda: DriverExecutor.connect(settings.clickhouse, database=args.database), warm_spc=True)
    print(f"defectstream web on http://{host}:{port}/", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0
