"""`defectstream worker`: create missing topics, then run the Faust worker of streams.app."""
from __future__ import annotations

import argparse
import logging
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run the inspection worker (Faust): frames -> defects, parts, deadletter",
        description="Runs `faust -A streams.app worker` (web server only with DEFECTSTREAM_WORKER__WEB_ENABLED=true, "
                    "on DEFECTSTREAM_WORKER__WEB_PORT). Settings come from DEFECTSTREAM_* variables.",
    )
    p.add_argument("-l", "--loglevel", default="info", help="Faust log level (default: info)")
    p.add_argument("--app-id", help="override DEFECTSTREAM_APP_ID (consumer group, internal topic prefix)")
    p.add_argument("--skip-checks", action="store_true",
                   help="start without first checking that the broker answers and the model checkpoint exists")
    p.set_defaults(func=run_worker)


def run_worker(args: argparse.Namespace) -> int:
    if args.app_id:
        os.environ["DEFECTSTREAM_APP_ID"] = args.app_id
    from streams import preflight
    from streams.settings import Settings

    settings = Settings()  # invalid settings (e.g. an overlapping shift calendar) stop here with one line
    if not args.skip_checks:
        preflight.check_checkpoint(settings.model)
        preflight.check_kafka(settings.kafka)
    from streams.app import app  # creates missing topics when the worker initialises

    # Faust's worker installs its own log handler; drop the CLI's so lines are not printed twice.
    for h in list(logging.root.handlers):
        logging.root.removeHandler(h)
    w = app.wiring.settings.worker
    # the Faust CLI turns the web server on unless told otherwise (it overrides `web_enabled`)
    web = ["--with-web", "--web-port", str(w.web_port)] if w.web_enabled else ["--without-web"]
    sys.argv = ["defectstream-worker", "worker", "--loglevel", args.loglevel, *web]
    app.main()  # runs until stopped; raises SystemExit
    return 0
