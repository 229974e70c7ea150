"""`defectstream stack up|down|status|logs|reset`: the local stack, run by the same code as `ops/stack`.

The logic lives in `ops/stack.py` (standard library only, so it works before the virtual
environment exists); this module loads that file by path and exposes it as a subcommand.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

STACK_SCRIPT = Path(__file__).resolve().parents[2] / "ops" / "stack.py"
_MODULE_NAME = "defectstream_ops_stack"


def stack_module() -> ModuleType:
    """`ops/stack.py` as a module (loaded once), for the CLI and for tests.

    Raises:
        RuntimeError: the file is not there (the package was installed without the repository).
    """
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    if not STACK_SCRIPT.is_file():
        raise RuntimeError(f"{STACK_SCRIPT} not found: the local stack needs a checkout of the repository")
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, STACK_SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE_NAME]
        raise
    return module


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `stack` with its actions; the handler returns the action's exit status."""
    parser = subparsers.add_parser(
        "stack",
        help="local Kafka + ClickHouse on loopback (up|down|status|logs|reset)",
        description="The local stack: Kafka (KRaft) and ClickHouse on loopback, data under .stack/. "
        "Same as ops/stack; ports and the stack dir come from DEFECTSTREAM_STACK_* variables.",
    )
    try:
        stack_module().add_arguments(parser)
    except RuntimeError as exc:
        message = str(exc)
        parser.set_defaults(func=lambda args: print(f"error: {message}", file=sys.stderr) or 1)
        return
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return stack_module().run(args)
