"""The `defectstream` command line: one entry point, a subcommand per capability.

Every command lives in a module of `streams/commands/` (training and evaluation: `train.py`)
that exposes `register(subparsers)`; that function adds its subparser(s) and sets `func` (the
handler, called with the parsed args, returning an exit code); the logic modules they call take
no argparse. Heavy imports (torch, faust, kafka) happen inside handlers so `defectstream --help`
stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that contribute subcommands, in the order they are listed in `--help`.
COMMAND_MODULES = [
    "streams.commands.stack",
    "streams.commands.smoke",
    "streams.commands.demo",
    "streams.commands.train",
    "streams.commands.explain",
    "streams.commands.worker",
    "streams.commands.simulate",
    "streams.commands.score",
    "streams.commands.cameras",
    "streams.commands.sink",
    "streams.commands.status",
    "streams.commands.report",
    "streams.commands.monitor",
    "streams.commands.replay",
    "streams.commands.compare",
    "streams.commands.models",
    "streams.commands.kafka_init",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectstream",
        description=(
            "Streaming visual inspection: cameras publish Avro frames to Kafka, Faust workers "
            "detect and track defects per part, confirmed defects and part verdicts land in "
            "ClickHouse for SPC. Settings come from DEFECTSTREAM_* environment variables "
            "(see README)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.verbose < 2:
        # the driver logs each failed connect with its traceback; the command reports the error itself
        logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from models.core.checkpoints import CheckpointError
    from models.data.datasets import DatasetError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CheckpointError, DatasetError) as e:  # a missing/invalid checkpoint or data set is a user error, not a crash
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # invalid settings, an unreachable broker or ClickHouse: one line naming the setting
        from streams.preflight import explain

        msg = explain(e)
        if msg is None:
            raise
        logging.getLogger("defectstream").debug("misconfiguration", exc_info=True)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
