# PYTHON_ARGCOMPLETE_OK
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
    "streams.commands.web",
    "streams.commands.dataset",
    "streams.commands.kafka_init",
    "streams.commands.config",
]
GLOBAL_FLAGS = ("-v", "--verbose", "-q", "--quiet")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("defectstream")
    except Exception:  # noqa: BLE001 - a source checkout without the package installed
        return "unknown (not installed)"


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """-v/-q on the top parser and on every subcommand, so they work anywhere on the line."""
    default = 0 if top else argparse.SUPPRESS  # a subcommand's flag adds to, never resets, the top one's
    p.add_argument("-v", "--verbose", action="count", default=default, help="more logging (-vv for debug)")
    if "--quiet" not in p._option_string_actions:
        p.add_argument("-q", "--quiet", action="count", default=default, help="errors only")
    elif "-q" not in p._option_string_actions:  # train's --quiet (no progress bars) takes -q too
        p._option_string_actions["-q"] = p._option_string_actions["--quiet"]


def _subparsers(p: argparse.ArgumentParser):
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield name, sp
                yield from _subparsers(sp)


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
    from streams.commands.options import DefaultsHelpFormatter

    parser.add_argument("--version", action="version", version=f"defectstream {_version()}")
    _global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for _name, sp in _subparsers(parser):
        _global_options(sp, top=False)
        if sp.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            sp.formatter_class = DefaultsHelpFormatter  # every option's help shows its default
    try:  # shell completion when argcomplete is installed: eval "$(register-python-argcomplete defectstream)"
        import argcomplete

        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    return parser


def _demo_database_hint(args: argparse.Namespace) -> str | None:
    """For an unknown database: the line naming the demo's database and what to set, when there is one."""
    try:
        from sinks.sql import DriverExecutor
        from streams.commands.demo import missing_database_hint
        from streams.settings import Settings

        settings = Settings()
        ex = DriverExecutor.connect(settings.clickhouse, database="default")
        try:
            return missing_database_hint(ex, getattr(args, "database", None) or settings.clickhouse.database)
        finally:
            ex.close()
    except Exception:  # noqa: BLE001 - only a better message; the plain one stands when this fails
        return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", 0) or 0
    logging.basicConfig(
        level=logging.ERROR if quiet and not args.verbose else logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.verbose < 2:
        # the driver logs each failed connect with its traceback; the command reports the error itself
        logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from streams.commands.config import unknown_variables
    from streams.commands.options import UsageError

    if args.command != "config":
        for name in unknown_variables():
            print(f"warning: {name} is not a defectstream setting (ignored); see `defectstream config`",
                  file=sys.stderr)
    from models.core.checkpoints import CheckpointError
    from models.data.datasets import DatasetError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as e:  # input the user can fix: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, DatasetError) as e:  # a missing/invalid checkpoint or data set is a user error, not a crash
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        # invalid settings, an unreachable broker or ClickHouse: one line naming the setting
        from streams.preflight import explain

        msg = explain(e)
        if msg is None:
            raise
        if type(e).__module__.startswith("clickhouse_driver") and getattr(e, "code", None) == 81:
            msg = _demo_database_hint(args) or msg  # after `make demo`: say which database holds its data
        logging.getLogger("defectstream").debug("misconfiguration", exc_info=True)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
